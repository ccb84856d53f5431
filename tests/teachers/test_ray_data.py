"""The Ray Data teacher backend (``[scale] engine = "ray"``) on the session's local Ray cluster (127.0.0.1 only):
the same answers as the local engine, requests dealt over the replicas, error statuses sorted as online, a failed
block retried by the engine."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import Decoding, ScaleConfig, TeacherConfig
from pipeline.errors import TeacherError
from pipeline.teachers import ChatRequest, formats, make_backend, make_engine
from pipeline.teachers.base import REFUSED
from pipeline.teachers.ray_data import RayDataBackend

DEC = Decoding(temperature=0.7, top_p=0.9, max_tokens=64)


def _requests(n: int) -> list[ChatRequest]:
    """Answers, and every third a generation request with a JSON schema: rows of different shapes in one wave."""
    out = []
    for i in range(n):
        if i % 3 == 2:
            out.append(ChatRequest(messages=[{"role": "user", "content": f"Come up with 3 new tasks, list {i}:"}],
                                   decoding=DEC, format=formats.instruction_list(3)))
        else:
            out.append(ChatRequest(messages=[{"role": "user", "content": f"Describe item number {i} briefly."}],
                                   decoding=DEC, sample_key=str(i)))
    return out


def _ray_engine(tcfg: TeacherConfig, **scale):
    return make_engine(tcfg, backend=make_backend(tcfg, scale=ScaleConfig(engine="ray", **scale)))


def test_ray_engine_gives_the_local_engines_answers_across_replicas(ray_cluster, sims):
    a, b = sims(), sims()
    tcfg = TeacherConfig(backend="openai", model="sim-teacher", base_url=a.url, api_key_env="")
    reqs = _requests(60)
    local = make_engine(tcfg)
    try:
        expected = local.generate(reqs)
    finally:
        local.close()
    engine = _ray_engine(tcfg, replicas=[a.url, b.url], concurrency_per_replica=8)
    try:
        got = engine.generate(reqs)
        info = engine.describe()["backend"]
    finally:
        engine.close()
    assert [(c.text, c.finish_reason) for c in got] == [(c.text, c.finish_reason) for c in expected]
    assert all(c.completion_tokens > 0 for c in got)
    # Round-robin over the two replicas; the local run asked the first one only.
    assert b.stats()["requests"] == 30 and a.stats()["requests"] == 60 + 30
    assert info["engine"] == "ray" and info["replicas"] == 2 and info["rows"] == 60 and info["rows_failed"] == 0
    # The rows with a JSON schema went through beside the plain ones (and were answered in the schema's shape).
    assert all(got[i].text.startswith('{"instructions": [') for i in range(2, 60, 3))


class _Faults(BaseHTTPRequestHandler):
    """A replica with a temper: "REFUSE" -> 400; "FLAKY" -> 500 the first time; "DOWN" -> 502 always; anything else -> an answer."""

    seen: dict[str, int] = {}

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        self.seen[text] = self.seen.get(text, 0) + 1
        if "REFUSE" in text:
            return self._send(400, {"error": {"message": "prompt too long", "type": "invalid_request_error"}})
        if "FLAKY" in text and self.seen[text] == 1:
            return self._send(500, {"error": {"message": "worker restarted"}})
        if "DOWN" in text:
            return self._send(502, {"error": {"message": "bad gateway"}})
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": f"ok: {text}"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

    def _send(self, code: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def faulty():
    _Faults.seen = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faults)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _ask(text: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], decoding=DEC)


def test_error_statuses_are_sorted_as_online(ray_cluster, faulty):
    tcfg = TeacherConfig(backend="openai", model="m", base_url=faulty, api_key_env="", max_retries=2)
    engine = _ray_engine(tcfg)
    try:
        ok, refused, flaky = engine.generate([_ask("hello"), _ask("REFUSE this"), _ask("FLAKY one")])
        usage = engine.usage
    finally:
        engine.close()
    assert ok.text == "ok: hello" and ok.prompt_tokens == 3
    assert refused.finish_reason == REFUSED and "HTTP 400: prompt too long" in refused.text
    assert flaky.text == "ok: FLAKY one" and _Faults.seen["FLAKY one"] == 2  # a 500 is sent again, in a new wave
    assert usage.retries_by_kind == {"http_500": 1}


def test_a_server_down_for_good_is_retried_by_the_engine_alone_then_a_clear_error(ray_cluster, faulty):
    # max_retries=1: the engine sends the 502 twice; Ray's stage retries nothing and fails no block, so the request
    # beside it in the same waves is answered.
    tcfg = TeacherConfig(backend="openai", model="m", base_url=faulty, api_key_env="", max_retries=1)
    engine = _ray_engine(tcfg)
    try:
        with pytest.raises(TeacherError, match="failed after 1 retries: http_502"):
            engine.generate([_ask("DOWN for good"), _ask("fine")])
        info = engine.describe()["backend"]
    finally:
        engine.close()
    assert _Faults.seen["DOWN for good"] == 2 and _Faults.seen["fine"] == 1
    assert info["rows_failed"] == 0


def test_a_dead_replica_is_a_connection_error_retried_then_one_line(ray_cluster):
    from tests.conftest import free_port

    tcfg = TeacherConfig(backend="openai", model="m", base_url=f"http://127.0.0.1:{free_port()}/v1",
                         api_key_env="", max_retries=1)
    engine = _ray_engine(tcfg)
    try:
        with pytest.raises(TeacherError, match="failed after 1 retries: connection"):
            engine.generate([_ask("anyone there?")])
    finally:
        engine.close()


def test_the_api_key_travels_as_a_header_and_never_in_the_description(ray_cluster, sims, monkeypatch):
    monkeypatch.setenv("PIPELINE_RAY_TEST_KEY", "sk-ray-secret-123")
    sim = sims()
    tcfg = TeacherConfig(backend="openai", model="sim-teacher", base_url=sim.url, api_key_env="PIPELINE_RAY_TEST_KEY")
    backend = make_backend(tcfg, scale=ScaleConfig(engine="ray"))
    assert isinstance(backend, RayDataBackend)
    engine = make_engine(tcfg, backend=backend)
    try:
        [c] = engine.generate([_ask("Describe a lighthouse.")])
        described = json.dumps(engine.describe())
    finally:
        engine.close()
    assert c.text and "sk-ray-secret-123" not in described
