"""A run holds human tasks out before any generation step sees the seeds: split.json and heldout/tasks.jsonl are
written once, the teacher's prompts never contain a held-out task, and the exported dataset carries lineages."""
from __future__ import annotations

import json

import pytest

from pipeline.config import BootstrapConfig, EvalConfig, RunConfig, TeacherConfig
from pipeline.errors import InputError
from pipeline.io.readers import load_seed_file
from pipeline.runs import store
from pipeline.runs.stages import run_stages
from tests.conftest import OUR_SEEDS
from tests.stages.test_bootstrap import ScriptedBackend


class Recording(ScriptedBackend):
    def __init__(self):
        self.prompts: list[str] = []

    async def send(self, r):
        self.prompts.append("\n".join(m["content"] for m in r.messages))
        return await super().send(r)


def test_heldout_tasks_never_reach_the_teacher(tmp_path, monkeypatch):
    backend = Recording()
    monkeypatch.setattr(store, "make_backend", lambda *a, **k: backend)
    cfg = RunConfig(seed_files=[str(OUR_SEEDS)], teacher=TeacherConfig(backend="openai", model="scripted"),
                    bootstrap=BootstrapConfig(target_instructions=3, request_batch_size=2, max_generation_requests=6),
                    eval=EvalConfig(heldout_share=0.25, heldout_seed=3))
    run = tmp_path / "run"
    m = run_stages(cfg, run, stages=["bootstrap", "filter", "export"])
    split = json.loads((run / "split.json").read_text())
    seeds = load_seed_file(OUR_SEEDS)
    held = set(split["heldout_task_ids"])
    n_tasks = len({s.task_id for s in seeds})
    assert split["by"] == "task" and len(held) == pytest.approx(0.25 * n_tasks, abs=2) and held
    assert m["seeds"]["generation_tasks"] == n_tasks - len(held) and m["heldout"]["eval_tasks"] == len(held)
    tasks = [json.loads(line) for line in (run / "heldout" / "tasks.jsonl").read_text().splitlines()]
    assert {t["task_id"] for t in tasks} == held
    generation = [p for p in backend.prompts if "Here are some example tasks" in p]
    assert generation
    held_instructions = [s.instruction for s in seeds if s.task_id in held]
    seen_instructions = [s.instruction for s in seeds if s.task_id not in held]
    for p in generation:
        assert not any(h in p for h in held_instructions)
    assert any(s in p for p in generation for s in seen_instructions)  # the check above can fail
    rows = (run / "dataset" / "train.jsonl").read_text().splitlines()
    lineages = [json.loads(line) for line in (run / "dataset" / "lineage.jsonl").read_text().splitlines()]
    assert rows and len(lineages) == len(rows) and [x["row"] for x in lineages] == list(range(1, len(rows) + 1))

    before = (run / "split.json").read_bytes()
    (run / "export" / ".done").unlink(missing_ok=True)
    (run / "dataset" / ".done").unlink(missing_ok=True)
    run_stages(cfg, run, stages=["bootstrap", "filter", "export"])  # resumed: the split is read back, not redrawn
    assert (run / "split.json").read_bytes() == before

    # a stored split whose tasks are gone from the seeds is refused, naming the file
    data = json.loads(before)
    data["heldout_task_ids"] = ["no_such_task"]
    (run / "split.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"split.json.*not in the seed files"):
        run_stages(cfg, run, stages=["bootstrap", "filter", "export"])


def test_no_split_without_eval_or_share(tmp_path, monkeypatch):
    backend = Recording()
    monkeypatch.setattr(store, "make_backend", lambda *a, **k: backend)
    cfg = RunConfig(seed_files=[str(OUR_SEEDS)], teacher=TeacherConfig(backend="openai", model="scripted"),
                    bootstrap=BootstrapConfig(target_instructions=2, request_batch_size=2, max_generation_requests=2))
    assert cfg.heldout_share() == 0.0
    assert RunConfig(stages=["bootstrap", "export", "tune", "eval"]).heldout_share() == 0.1
    run_stages(cfg, tmp_path / "run", stages=["bootstrap"])
    assert not (tmp_path / "run" / "split.json").exists()
