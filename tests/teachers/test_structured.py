"""Structured outputs and per-model request options: the exact JSON body an OpenAI-compatible server receives (a
capture server on 127.0.0.1), the embedded model under each format's grammar, and a real llama.cpp server."""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import Decoding, TeacherConfig
from pipeline.prompts import render, render_messages
from pipeline.stages.instances import parse_labels_answer, parse_yes_no_answer
from pipeline.stages.parsing import json_string_list, split_numbered_list
from pipeline.teachers import ChatRequest, formats, make_teacher
from pipeline.teachers.options import is_reasoning_model
from tests.fault_proxy import send_json

ASK = [{"role": "user", "content": "Name a colour."}]
DEC = Decoding(temperature=0.3, top_p=0.9, max_tokens=4, presence_penalty=0.5, frequency_penalty=0.25)


class _Capture(BaseHTTPRequestHandler):
    """Records every request body; answers 422 to a body with response_format when ``refuse_schema`` is set (as
    llama_cpp.server does), 400 to everything when ``refuse_all`` is set, else a fixed completion."""

    bodies: list[dict] = []
    refuse_schema = refuse_all = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        _Capture.bodies.append(body)
        if _Capture.refuse_all or (_Capture.refuse_schema and "response_format" in body):
            send_json(self, 422 if not _Capture.refuse_all else 400,
                      json.dumps({"error": {"message": "unsupported field"}}).encode())
            return
        send_json(self, 200, json.dumps({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Blue"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def capture():
    _Capture.bodies, _Capture.refuse_schema, _Capture.refuse_all = [], False, False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _send(base_url, model, requests, **cfg):
    t = make_teacher(TeacherConfig(backend="openai", model=model, base_url=base_url, api_key_env="",
                                   concurrency=1, max_retries=0, **cfg))
    try:
        out = t.generate(requests)
    finally:
        t.close()
    return t, out


def test_reasoning_model_gets_max_completion_tokens_and_no_sampling_parameters(capture):
    _send(capture, "o3-mini", [ChatRequest(ASK, DEC)])
    [body] = _Capture.bodies
    assert body["max_completion_tokens"] == 4 and "max_tokens" not in body
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        assert key not in body
    assert body["model"] == "o3-mini" and body["messages"] == ASK and "response_format" not in body


def test_chat_model_gets_max_tokens_and_sampling_parameters(capture):
    _send(capture, "gpt-4o-mini", [ChatRequest(ASK, DEC)])
    [body] = _Capture.bodies
    assert body["max_tokens"] == 4 and "max_completion_tokens" not in body
    assert (body["temperature"], body["top_p"], body["presence_penalty"], body["frequency_penalty"]) == \
        (0.3, 0.9, 0.5, 0.25)


def test_explicit_request_options_override_the_model_rule(capture):
    _send(capture, "my-local-model", [ChatRequest(ASK, DEC)], token_limit_param="max_completion_tokens",
          sampling_params=False)
    _send(capture, "o4-mini", [ChatRequest(ASK, DEC)], token_limit_param="max_tokens", sampling_params=True)
    first, second = _Capture.bodies
    assert first["max_completion_tokens"] == 4 and "temperature" not in first
    assert second["max_tokens"] == 4 and second["temperature"] == 0.3


@pytest.mark.parametrize("name,reasoning", [
    ("o1", True), ("o3-mini", True), ("o4-mini-2025-04-16", True), ("openai/o3", True), ("gpt-5", True),
    ("gpt-5-mini", True), ("gpt-5.1", True), ("gpt-5-chat-latest", False), ("gpt-4o", False),
    ("Qwen/Qwen2.5-7B-Instruct", False), ("olmo-7b", False), ("SmolLM2-135M-Instruct", False)])
def test_reasoning_model_names(name, reasoning):
    assert is_reasoning_model(name) is reasoning


def test_extra_body_is_sent_verbatim(capture):
    extra = {"top_k": 20, "repetition_penalty": 1.05, "chat_template_kwargs": {"enable_thinking": False}}
    _send(capture, "Qwen/Qwen3-8B", [ChatRequest(ASK, DEC)], extra_body=extra)
    [body] = _Capture.bodies
    for key, value in extra.items():
        assert body[key] == value


def test_json_schema_request_carries_response_format_and_room_for_the_json(capture):
    _send(capture, "gpt-4o-mini", [ChatRequest(ASK, DEC, format=formats.YES_NO), ChatRequest(ASK, DEC)],
          structured="json_schema")
    with_format, without = _Capture.bodies
    assert with_format["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "yes_no", "strict": True, "schema": {
            "type": "object", "properties": {"answer": {"type": "string", "enum": ["Yes", "No"]}},
            "required": ["answer"], "additionalProperties": False}}}
    assert with_format["max_tokens"] == formats.YES_NO.min_tokens > 4  # {"answer": "Yes"} needs more than 4
    assert "response_format" not in without and without["max_tokens"] == 4


def test_grammar_mode_sends_gbnf_and_off_sends_nothing(capture):
    req = ChatRequest(ASK, DEC, format=formats.instruction_list(3))
    _send(capture, "SmolLM2", [req], structured="grammar", extra_body={"top_k": 5})
    _send(capture, "SmolLM2", [req], structured="off")
    grammar, off = _Capture.bodies
    assert grammar["grammar"] == formats.instruction_list(3).gbnf and grammar["top_k"] == 5
    assert "response_format" not in grammar
    assert "grammar" not in off and "response_format" not in off and off["max_tokens"] == 4


def test_auto_turns_structured_off_when_the_server_refuses_the_schema(capture):
    _Capture.refuse_schema = True
    reqs = [ChatRequest(ASK, DEC, format=formats.YES_NO, sample_key=str(i)) for i in range(3)]
    t, out = _send(capture, "local", reqs)  # structured = "auto"
    assert [c.text for c in out] == ["Blue"] * 3 and all(c.finish_reason == "stop" for c in out)
    # The first request was refused with its schema and resent without; the others went without at once.
    assert ["response_format" in b for b in _Capture.bodies] == [True, False, False, False]
    assert t.backend.structured == "off" and t.structured == "json_schema"  # the stages' view stays fixed


def test_a_refusal_that_is_not_about_the_schema_stays_a_refusal(capture):
    _Capture.refuse_all = True
    t, [c] = _send(capture, "local", [ChatRequest(ASK, DEC, format=formats.YES_NO)])
    assert c.finish_reason == "refused" and t.backend.structured == "json_schema"


def test_format_is_part_of_the_cache_key_and_free_text_keys_are_unchanged():
    import hashlib

    plain = ChatRequest(ASK, DEC, sample_key="k")
    old = hashlib.sha256(json.dumps(["b", "m", ASK, DEC.model_dump(mode="json"), "k"], sort_keys=True,
                                    ensure_ascii=False).encode()).hexdigest()
    assert plain.key("b", "m") == old  # a run's cache from before structured outputs still answers
    keys = {ChatRequest(ASK, DEC, sample_key="k", format=f).key("b", "m")
            for f in (formats.YES_NO, formats.EQUAL, formats.instruction_list(3), formats.instruction_list(4))}
    assert len(keys) == 4 and old not in keys


# --- the embedded model under the grammars (real generations) --------------------------------------------------

TASKS = ["Write a thank-you note to a neighbour who watered your plants.",
         "Explain why the sky looks blue on a clear day.",
         "Convert 72 degrees Fahrenheit to Celsius and show the steps.",
         "Suggest a name for a bakery that sells only sourdough bread."]


@pytest.fixture(scope="module")
def embedded():
    t = make_teacher(TeacherConfig())  # structured = "auto": the format's GBNF
    yield t
    t.close()


def test_embedded_grammar_gives_a_numbered_list_of_at_most_n_items(embedded):
    reqs = [ChatRequest([{"role": "user", "content": render("bootstrap_instructions", tasks=TASKS, count=4)}],
                        Decoding(temperature=0.7, top_p=0.5, max_tokens=200, seed=seed),
                        format=formats.instruction_list(4)) for seed in (1, 2, 3)]
    for c in embedded.generate(reqs):
        lines = c.text.strip().split("\n")
        assert 1 <= len(lines) <= 4, c.text
        assert all(re.match(rf"{k}\. [A-Z]", line) for k, line in enumerate(lines, 1)), c.text
        items, cut = split_numbered_list(c.text, c.finish_reason)
        assert len(items) + (cut is not None) == len(lines)


def test_embedded_grammar_yes_no_labels_and_verdicts(embedded):
    yes_no = ChatRequest(render_messages("classify", instruction="Say whether the review is positive or negative."),
                         Decoding(temperature=0.0, top_p=1.0, max_tokens=4), format=formats.YES_NO)
    labels = ChatRequest(render_messages("list_labels", instruction="Which planet is described in the text?"),
                         Decoding(temperature=0.0, top_p=1.0, max_tokens=48), format=formats.LABELS)
    equal = ChatRequest(render_messages("evolve_equal", first="Write a poem.", second="Write a poem about rain."),
                        Decoding(temperature=0.0, top_p=1.0, max_tokens=8), format=formats.EQUAL)
    a, b, c = embedded.generate([yes_no, labels, equal])
    assert a.text in ("Yes", "No") and parse_yes_no_answer(a.text) is not None
    assert re.fullmatch(r"[^,\n]+(, [^,\n]+){1,9}", b.text) and len(parse_labels_answer(b.text)) >= 2, b.text
    assert c.text in ("Equal", "Not Equal")


def test_embedded_extra_body_passes_llama_cpp_arguments_and_rejects_others():
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="'temperature' is not an extra create_chat_completion argument"):
        make_teacher(TeacherConfig(extra_body={"temperature": 1.0}))
    t = make_teacher(TeacherConfig(extra_body={"top_k": 1, "repeat_penalty": 1.1}))
    try:
        [c] = t.generate([ChatRequest(ASK, Decoding(temperature=0.0, top_p=1.0, max_tokens=8))])
    finally:
        t.close()
    assert c.text


def test_embedded_json_schema_mode_gives_json():
    t = make_teacher(TeacherConfig(structured="json_schema"))  # llama.cpp's own schema-to-grammar
    try:
        req = ChatRequest([{"role": "user", "content": render("bootstrap_instructions", tasks=TASKS, count=3,
                                                              json=True)}],
                          Decoding(temperature=0.7, top_p=0.5, max_tokens=160, seed=1), format=formats.instruction_list(3))
        [c] = t.generate([req, ])
        yn = t.generate([ChatRequest(render_messages("classify", instruction="Is this email spam or not spam?"),
                                     Decoding(temperature=0.0, top_p=1.0, max_tokens=4), format=formats.YES_NO)])[0]
    finally:
        t.close()
    parsed = json_string_list(c.text, "instructions", c.finish_reason)
    assert parsed is not None and 1 <= len(parsed[0]) + (parsed[1] is not None) <= 3, c.text
    assert json.loads(yn.text)["answer"] in ("Yes", "No")


# --- a real llama.cpp server (llama-cpp-python's) ----------------------------------------------------------------

def test_llama_server_grammar_mode_and_auto_fallback(llama_server):
    req = ChatRequest([{"role": "user", "content": render("bootstrap_instructions", tasks=TASKS, count=3)}],
                      Decoding(temperature=0.7, top_p=0.5, max_tokens=160, seed=3), format=formats.instruction_list(3))
    t, [c] = _send(llama_server, "SmolLM2-135M-Instruct", [req], structured="grammar")
    lines = c.text.strip().split("\n")
    assert 1 <= len(lines) <= 3 and all(re.match(rf"{k}\. [A-Z]", s) for k, s in enumerate(lines, 1)), c.text
    # "auto" sends a JSON schema; llama_cpp.server refuses response_format type json_schema (422): resent without.
    t, [c] = _send(llama_server, "SmolLM2-135M-Instruct", [req])
    assert c.finish_reason in ("stop", "length") and c.text and t.backend.structured == "off"


# --- the bootstrap stage against the simulated vLLM server, structured outputs on -------------------------------

@pytest.fixture
def sim_server():
    import subprocess
    import sys

    from tests.conftest import OUR_SEEDS, ROOT

    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "sim_teacher.py"), "--latency-model", "zero",
                             "--seed-file", str(OUR_SEEDS)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_bootstrap_against_a_schema_server_reads_every_answer_as_json(sim_server):
    from pipeline.config import BootstrapConfig, FilterConfig
    from pipeline.io.readers import load_seed_file
    from pipeline.stages import bootstrap
    from pipeline.teachers import make_engine
    from tests.conftest import OUR_SEEDS

    engine = make_engine(TeacherConfig(backend="openai", model="sim", base_url=sim_server, api_key_env="",
                                       concurrency=8))
    fcfg = FilterConfig()
    state = bootstrap.BootstrapState.start(load_seed_file(OUR_SEEDS), fcfg)
    kept = []
    try:
        engine.run(bootstrap.run(state, engine, BootstrapConfig(target_instructions=12, classification="teacher"),
                                 fcfg, lambda r: kept.extend(r.kept)))
    finally:
        engine.close()
    assert engine.structured == "json_schema" and state.tasks_kept == 12
    assert state.stats["parsed_as_json"] == state.stats["responses"] > 0 and state.stats["parsed_as_text"] == 0
    assert state.stats["classification_parsed_as_json"] >= 12
