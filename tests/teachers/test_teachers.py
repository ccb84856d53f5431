import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import Decoding, TeacherConfig
from pipeline.errors import InputError, TeacherError
from pipeline.teachers import ChatRequest, make_teacher
from tests.conftest import run_cli
from tests.fault_proxy import send_json

GREEDY = Decoding(temperature=0.0, top_p=1.0, max_tokens=24)
ASK = ChatRequest([{"role": "user", "content": "What is the capital of France? Answer in one word."}], GREEDY)


def test_embedded_teacher_answers_and_counts_tokens():
    t = make_teacher(TeacherConfig())
    [c] = t.generate([ASK])
    assert "paris" in c.text.lower()
    assert c.prompt_tokens > 5 and 0 < c.completion_tokens <= 24
    assert t.usage.requests == 1 and t.usage.completion_tokens == c.completion_tokens
    [c2] = t.generate([ChatRequest(ASK.messages, Decoding(temperature=0.0, top_p=1.0, max_tokens=2))])
    assert c2.finish_reason == "length"


def test_openai_backend_against_real_llama_server(llama_server):
    t = make_teacher(TeacherConfig(backend="openai", model="SmolLM2-135M-Instruct", base_url=llama_server,
                                   api_key_env="", concurrency=4))
    out = t.generate([ChatRequest(ASK.messages, GREEDY, sample_key=str(i)) for i in range(3)])  # 3 distinct
    assert len(out) == 3 and all("paris" in c.text.lower() for c in out)
    assert t.usage.requests == 3 and t.usage.prompt_tokens > 0 and t.usage.completion_tokens > 0


def test_check_teacher_command_against_server(llama_server):
    r = run_cli("check-teacher", "--config", "configs/llamacpp_server.toml", "--base-url", llama_server)
    assert r.returncode == 0, r.stderr
    assert "answered in" in r.stderr and r.stdout.strip()


class _Flaky(BaseHTTPRequestHandler):
    """Answers 429 with Retry-After, then 503, then a valid chat completion."""

    calls: list[float] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        _Flaky.calls.append(time.time())
        n = len(_Flaky.calls)
        if n == 1:
            self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
        elif n == 2:
            self._send(503, {"error": {"message": "busy"}})
        else:
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}})

    def _send(self, code, body, headers=None):
        send_json(self, code, json.dumps(body).encode(), headers)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    _Flaky.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_retries_429_and_503_honouring_retry_after(flaky_server):
    t = make_teacher(TeacherConfig(backend="openai", model="m", base_url=flaky_server, api_key_env="",
                                   max_retries=3))
    [c] = t.generate([ASK])
    assert c.text == "Paris" and c.prompt_tokens == 7
    assert len(_Flaky.calls) == 3
    assert _Flaky.calls[1] - _Flaky.calls[0] >= 0.95  # waited for Retry-After: 1
    assert t.usage.retries == 2 and t.usage.retries_by_kind == {"http_429": 1, "http_503": 1}


def test_bounded_retries_then_clear_error(flaky_server):
    t = make_teacher(TeacherConfig(backend="openai", model="m", base_url=flaky_server, api_key_env="",
                                   max_retries=0))
    with pytest.raises(TeacherError, match="failed after 0 retries: http_429"):
        t.generate([ASK])


def test_missing_api_key_variable(monkeypatch):
    monkeypatch.delenv("PIPELINE_TEST_KEY", raising=False)
    with pytest.raises(InputError, match="PIPELINE_TEST_KEY is not set"):
        make_teacher(TeacherConfig(backend="openai", model="m", api_key_env="PIPELINE_TEST_KEY"))


def test_vllm_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TeacherError, match="needs a CUDA GPU"):
        make_teacher(TeacherConfig(backend="vllm", model="some/model"))
