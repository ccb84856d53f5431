"""Table of malformed inputs: each gives one line naming the file, line and field, exit code 2, no traceback, and
writes nothing (or leaves earlier output untouched)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run_cli

GOOD = json.dumps({"instruction": "Name a colour of the rainbow.", "input": "", "output": "Red"})


def _seed(tmp_path, name: str, data: bytes) -> list[str]:
    p = tmp_path / name
    p.write_bytes(data)
    return ["--set", f'seed_files=["{p}"]']


def _config(tmp_path, text: str) -> list[str]:
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    return ["--config", str(p)]


CASES = {
    # name: (builder(tmp_path) -> extra args, expected substring of the one error line)
    "invalid json line": (lambda t: _seed(t, "s.jsonl", f"{GOOD}\n{{oops\n".encode()), "s.jsonl:2: invalid JSON"),
    "missing instruction": (lambda t: _seed(t, "s.jsonl", f'{GOOD}\n{{"output": "x"}}\n'.encode()),
                            "s.jsonl:2: instruction: missing field"),
    "missing output": (lambda t: _seed(t, "s.jsonl", b'{"instruction": "Say hi to me."}\n'),
                       "s.jsonl:1: output: missing field"),
    "instruction not a string": (lambda t: _seed(t, "s.jsonl", b'{"instruction": ["a"], "output": "x"}\n'),
                                 "s.jsonl:1: instruction: expected a string, got list"),
    "empty instruction": (lambda t: _seed(t, "s.jsonl", b'{"instruction": "  ", "output": "x"}\n'),
                          "s.jsonl:1: instruction: instruction is empty"),
    "is_classification wrong type": (
        lambda t: _seed(t, "s.jsonl", b'{"instruction": "Say hi.", "output": "x", "is_classification": "yes"}\n'),
        "s.jsonl:1: is_classification: expected true or false"),
    "instances not a list": (lambda t: _seed(t, "s.jsonl", b'{"instruction": "Say hi.", "instances": {}}\n'),
                             "s.jsonl:1: instances: expected a non-empty list"),
    "instance output wrong type": (
        lambda t: _seed(t, "s.jsonl", b'{"instruction": "Say hi.", "instances": [{"input": "", "output": 1}]}\n'),
        "s.jsonl:1: instances[0].output: expected a string, got int"),
    "empty file": (lambda t: _seed(t, "s.jsonl", b""), "s.jsonl: file is empty"),
    "not utf-8": (lambda t: _seed(t, "s.jsonl", f"{GOOD}\n".encode() + b'{"instruction": "caf\xe9"}\n'),
                  "s.jsonl:2: not valid UTF-8"),
    "byte order mark": (lambda t: _seed(t, "s.jsonl", b"\xef\xbb\xbf" + GOOD.encode() + b"\n"),
                        "s.jsonl:1: starts with a UTF-8 byte-order mark"),
    "huge line": (lambda t: _seed(t, "s.jsonl", (GOOD + "\n" + '{"instruction": "' + "a" * 1_100_000 + '"}\n').encode()),
                  "s.jsonl:2: line is longer than"),
    "duplicate ids": (lambda t: _seed(t, "s.jsonl", b'{"id": "t1", "instruction": "Say hi.", "output": "x"}\n'
                                                     b'{"id": "t1", "instruction": "Say bye.", "output": "y"}\n'),
                      "s.jsonl:2: id: duplicate id 't1'"),
    "json array not object": (lambda t: _seed(t, "s.jsonl", b'["Say hi.", "x"]\n'),
                              "s.jsonl:1: expected a JSON object, got list"),
    "csv wrong header": (lambda t: _seed(t, "s.csv", b"prompt,answer\nSay hi.,x\n"), "s.csv:1: instruction: CSV header"),
    "csv extra cells": (lambda t: _seed(t, "s.csv", b"instruction,input,output\nSay hi.,,x,surplus\n"),
                        "s.csv:2: row has more cells than the header"),
    "seed file missing": (lambda t: ["--set", f'seed_files=["{t}/nope.jsonl"]'], "nope.jsonl: file not found"),
    "config unknown key": (lambda t: _config(t, "[teacher]\nbakend = \"openai\"\n"),
                           "cfg.toml:2: teacher.bakend: unknown key"),
    "config wrong type": (lambda t: _config(t, "[bootstrap]\nrequest_batch_size = 2.5\n"),
                          "cfg.toml:2: bootstrap.request_batch_size: Input should be a valid integer"),
    "config bad enum": (lambda t: _config(t, "[teacher]\nbackend = \"gpt\"\n"), "cfg.toml:2: teacher.backend:"),
    "config invalid toml": (lambda t: _config(t, "[teacher\nbackend = 1\n"), "cfg.toml:1: invalid TOML"),
    "config missing": (lambda t: ["--config", f"{t}/none.toml"], "none.toml: config file not found"),
    "config out of range": (lambda t: _config(t, "[filter]\nrouge_threshold = 1.5\n"),
                            "cfg.toml:2: filter.rouge_threshold: Input should be less than or equal to 1"),
    "missing api key variable": (
        lambda t: ["--config", str(ROOT / "configs" / "openai.toml"), "--set",
                   'teacher.api_key_env="PIPELINE_NO_SUCH_KEY"'],
        "teacher.api_key_env: variable PIPELINE_NO_SUCH_KEY is not set"),
    "gguf path missing": (lambda t: ["--model", f"{t}/missing.gguf"], "teacher.model: GGUF not found"),
    "bad --set syntax": (lambda t: ["--set", "bootstrap.target_instructions"], "expected KEY=VALUE"),
    "benchmark without the named field": (
        lambda t: _benchmark(t, b'{"prompt": "What is two plus two?"}\n', 'fields = ["question"]'),
        "bench.jsonl:1: question: the benchmark has no such field"),
    "benchmark file missing": (lambda t: _config(t, '[decontaminate]\nbenchmarks = [{path = "%s/none.jsonl", '
                                                   'fields = ["q"]}]\n' % t),
                               "none.jsonl: decontaminate.benchmarks.0.path: benchmark file not found"),
}


def _benchmark(tmp_path, data: bytes, fields: str) -> list[str]:
    (tmp_path / "bench.jsonl").write_bytes(data)
    return _config(tmp_path, f'[decontaminate]\nbenchmarks = [{{path = "{tmp_path}/bench.jsonl", {fields}}}]\n')


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(tmp_path, name):
    build, expected = CASES[name]
    out = tmp_path / "run"
    r = run_cli("run", "--out", str(out), *build(tmp_path))
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists()


@pytest.mark.parametrize("where", ["pipeline", "seed_tasks", "home", "non-run directory"])
def test_output_path_outside_the_allowed_place(tmp_path, where):
    if where == "non-run directory":
        target = tmp_path / "photos"
        target.mkdir()
        (target / "keep.txt").write_text("precious")
    else:
        target = {"pipeline": ROOT / "pipeline" / "run1", "seed_tasks": ROOT / "seed_tasks" / "run1",
                  "home": __import__("pathlib").Path.home()}[where]
    r = run_cli("run", "--out", str(target))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(target) in r.stderr
    if where == "non-run directory":
        assert [p.name for p in target.iterdir()] == ["keep.txt"]
    else:
        assert not (ROOT / "pipeline" / "run1").exists() and not (ROOT / "seed_tasks" / "run1").exists()


def test_bad_input_leaves_an_earlier_run_untouched(tmp_path):
    """A resume attempt with a broken seed file fails before touching the existing run."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"status": "complete", "fingerprint": "x", "sessions": []}')
    (run / "bootstrap").mkdir()
    (run / "bootstrap" / "kept.jsonl").write_text(GOOD + "\n")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = run_cli("run", "--out", str(run), *_seed(tmp_path, "s.jsonl", b"{bad\n"))
    assert r.returncode == 2 and "s.jsonl:1: invalid JSON" in r.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
