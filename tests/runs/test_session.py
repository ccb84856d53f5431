"""What a run session does before and around the teacher: the lock before any model is loaded, a teacher only
when a stage still needs one and released before training, a refused start that leaves nothing behind, resumes
that refuse to splice two runs."""
from __future__ import annotations

import json
import sys
import types

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.config import RunConfig
from pipeline.errors import InputError, RunLocked
from pipeline.io.files import JsonlWriter, ReplayMismatch
from pipeline.runs import stages as run_stages_mod
from pipeline.runs import store
from pipeline.runs.stages import run_stages
from pipeline.runs.store import RunLock


class FakeLLM:
    """Stands in for ``vllm.LLM``: records its construction and its release, answers "Yes" to everything."""

    events: list[str] = []

    def __init__(self, model, seed=None, **kw):
        FakeLLM.events.append("built")
        self.llm_engine = types.SimpleNamespace(shutdown=lambda: FakeLLM.events.append("released"))

    def chat(self, conversations, sampling_params=None, use_tqdm=False, **kw):
        out = types.SimpleNamespace(text="Yes", finish_reason="stop", token_ids=[1])
        return [types.SimpleNamespace(outputs=[out], prompt_token_ids=[1, 2]) for _ in conversations]


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.events = []
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = lambda **kw: kw
    sp = types.ModuleType("vllm.sampling_params")
    sp.StructuredOutputsParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return FakeLLM.events


def _cfg(tmp_path, **extra) -> RunConfig:
    seeds = tmp_path / "seeds.jsonl"
    if not seeds.exists():
        seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Write a poem about the number {i}.",
                                             "instances": [{"input": "", "output": "A poem."}]}) + "\n"
                                 for i in range(4)))
    data = {"seed_files": [str(seeds)], "teacher": {"backend": "vllm", "model": "fake/model"},
            "evolve": {"rounds": 1, "max_items": 2}, **extra}
    return RunConfig.model_validate(data)


def test_a_locked_run_is_refused_before_the_gpu_engine_is_built(tmp_path, fake_vllm):
    cfg, run = _cfg(tmp_path), tmp_path / "run"
    run_stages(cfg, run, stages=["filter"])  # a run exists
    lock = RunLock(run)
    assert lock.acquire()
    try:
        with pytest.raises(RunLocked):
            run_stages(cfg, run, stages=["evolve"])
    finally:
        lock.release()
    assert fake_vllm == []


def test_no_gpu_engine_when_the_teacher_stages_are_done(tmp_path, fake_vllm):
    cfg, run = _cfg(tmp_path), tmp_path / "run"
    run_stages(cfg, run, stages=["evolve"])
    assert fake_vllm == ["built", "released"]
    run_stages(cfg, run, stages=["evolve", "filter", "export"])  # evolve is done: only filter and export run
    assert fake_vllm == ["built", "released"]


def test_the_gpu_engine_is_released_before_tuning(tmp_path, fake_vllm, monkeypatch):
    seen = []
    monkeypatch.setattr(run_stages_mod, "run_tune_stage", lambda run, progress=None: seen.append(list(fake_vllm)))
    run_stages(_cfg(tmp_path), tmp_path / "run", stages=["evolve", "tune"])
    assert seen == [["built", "released"]] and fake_vllm == ["built", "released"]


def test_the_gpu_engine_is_released_before_eval(tmp_path, fake_vllm, monkeypatch):
    seen = []
    monkeypatch.setattr(run_stages_mod, "run_eval_stage", lambda run, progress=None: seen.append(list(fake_vllm)))
    run_stages(_cfg(tmp_path), tmp_path / "run", stages=["evolve", "eval"])
    assert seen == [["built", "released"]] and fake_vllm == ["built", "released"]


def test_a_cost_budget_without_a_price_is_refused_and_leaves_nothing(tmp_path, fake_vllm):
    cfg = _cfg(tmp_path, budget={"max_cost_usd": 5.0})
    with pytest.raises(InputError, match=r'no price: add \[prices\."fake/model"\]'):
        run_stages(cfg, tmp_path / "run", stages=["evolve"])
    assert not (tmp_path / "run").exists() and fake_vllm == []


def test_a_changed_seed_file_refuses_the_resume_and_force_restarts_the_stage(tmp_path, fake_vllm):
    cfg, run = _cfg(tmp_path), tmp_path / "run"
    run_stages(cfg, run, stages=["evolve"])
    (run / "evolve" / ".done").unlink()  # as if killed before the end
    before = (run / "evolve" / "rejected.jsonl").read_text()
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(seeds.read_text().replace("poem", "song"))
    with pytest.raises(InputError, match=r"changed since the run started: seed file .*seeds.jsonl"):
        run_stages(cfg, run, stages=["evolve"])
    run_stages(cfg, run, stages=["evolve"], force=True)
    assert (run / "attempts" / "2" / "evolve" / "rejected.jsonl").read_text() == before  # set aside, whole
    run_stages(cfg, tmp_path / "fresh", stages=["evolve"])  # the new seeds from nothing: what the stage must hold
    for name in ("kept.jsonl", "rejected.jsonl"):
        assert (run / "evolve" / name).read_text() == (tmp_path / "fresh" / "evolve" / name).read_text()


BENCH_Q = "Name the three longest rivers that flow through more than four European capital cities, longest first."


@pytest.mark.parametrize("change,named", [
    ("template", "prompt templates evolve_deepen"),
    ("version", "package version"),
    ("benchmark", "benchmark file"),
])
def test_a_changed_template_version_or_benchmark_file_refuses_the_resume(tmp_path, fake_vllm, monkeypatch, change,
                                                                           named):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"q": BENCH_Q}) + "\n")
    benchmarks = {"decontaminate": {"benchmarks": [{"path": str(bench), "fields": ["q"]}]}}
    cfg = _cfg(tmp_path, **(benchmarks if change == "benchmark" else {}))
    run = tmp_path / "run"
    run_stages(cfg, run, stages=["filter"])
    if change == "template":  # as if prompts/evolve_deepen.j2 had been edited since
        real = store.template_hashes
        monkeypatch.setattr(store, "template_hashes", lambda: {**real(), "evolve_deepen": "0" * 16})
    elif change == "version":
        monkeypatch.setattr(store, "__version__", store.__version__ + ".post1")
    else:
        bench.write_text(json.dumps({"q": BENCH_Q.replace("three", "two")}) + "\n")
    manifest = (run / "manifest.json").read_bytes()
    with pytest.raises(InputError, match=f"cannot resume: changed since the run started: {named}"):
        run_stages(cfg, run, stages=["filter"])
    assert (run / "manifest.json").read_bytes() == manifest  # refused before anything was written
    run_stages(cfg, run, stages=["filter"], force=True)
    assert json.loads((run / "manifest.json").read_text())["inputs"] == store.run_inputs(cfg)


def test_the_cli_refuses_a_changed_resume_in_one_line_with_exit_2(tmp_path, monkeypatch):
    args = ["run", "--out", str(tmp_path / "run"), "--set", 'stages=["filter"]', "--no-report"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    real = store.template_hashes
    monkeypatch.setattr(store, "template_hashes", lambda: {**real(), "bootstrap_instructions": "0" * 16})
    r = CliRunner().invoke(app, args)
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0] == (f"error: {tmp_path / 'run' / 'manifest.json'}: fingerprint: cannot resume: changed since the "
                        "run started: prompt templates bootstrap_instructions. Resume with what it started with, or "
                        "pass --force to restart its unfinished stages from their start"), r.output
    r = CliRunner().invoke(app, [*args, "--force"])
    assert r.exit_code == 0, r.output


def test_a_resumed_stage_whose_replay_differs_from_its_file_exits_2_and_appends_nothing(tmp_path, fake_vllm):
    args = ["run", "--out", str(tmp_path / "run"), "--teacher", "vllm", "--model", "fake/model", "--no-report",
            "--set", 'stages=["evolve"]', "--set", "evolve.rounds=1", "--set", "evolve.max_items=2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    stage = tmp_path / "run" / "evolve"
    (stage / ".done").unlink()  # as if killed before the end
    rows = (stage / "rejected.jsonl").read_text().splitlines()
    assert len(rows) >= 2
    row = json.loads(rows[1])
    row["instruction"] += " (written by another run)"
    rows[1] = json.dumps(row)
    (stage / "rejected.jsonl").write_text("".join(line + "\n" for line in rows))
    before = {p.name: p.read_bytes() for p in stage.iterdir()}
    r = CliRunner().invoke(app, args)
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert r.exit_code == 2, r.output
    assert lines[-1] == (f"error: {stage / 'rejected.jsonl'}: row 2 as replayed differs from the row on disk; the "
                         "run's inputs or code changed since it was written; pass --force to restart the stage from "
                         "its start"), r.output
    assert {p.name: p.read_bytes() for p in stage.iterdir()} == before  # nothing appended after the foreign row


def test_a_replay_that_differs_from_the_file_is_refused_before_appending(tmp_path):
    path = tmp_path / "kept.jsonl"
    with JsonlWriter(path) as w:
        w.write_many([{"a": 1}, {"a": 2}])
    w = JsonlWriter(path)
    w.write_many([{"a": 1}])
    with pytest.raises(ReplayMismatch, match="row 2"):
        w.write_many([{"a": 3}, {"a": 4}])
    w.close()
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
