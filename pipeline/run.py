"""Run the configured stages into a run directory. The CLI calls ``run_stages``; all writing happens here or in
``runio``.

Layout of ``<run>/``: ``manifest.json``; ``bootstrap/kept.jsonl`` and ``bootstrap/rejected.jsonl``;
``dataset/train.jsonl`` (Alpaca) and ``dataset/messages.jsonl`` (chat).
"""
from __future__ import annotations

import random
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import bootstrap
from .config import RunConfig
from .errors import InputError
from .export import to_alpaca, to_messages
from .records import Record
from .runio import JsonlWriter, StageFiles, package_versions, read_jsonl, write_json_atomic
from .seeds import load_seeds
from .teachers import Teacher, make_teacher

# progress(stage, done, total, fields) is called as work advances; the CLI draws it.
Progress = Callable[[str, int, int, dict], None]


def _no_progress(stage: str, done: int, total: int, fields: dict) -> None:
    pass


class Run:
    def __init__(self, cfg: RunConfig, run_dir: Path, config_path: str | None = None):
        self.cfg, self.dir, self.config_path = cfg, run_dir, config_path
        self.started = time.time()
        self.manifest: dict = {
            "run_id": run_dir.name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config_path": config_path,
            "config": cfg.model_dump(mode="json"),
            "versions": package_versions(),
            "stages": {},
        }

    @classmethod
    def create(cls, cfg: RunConfig, run_dir: Path, config_path: str | None = None) -> "Run":
        if (run_dir / "manifest.json").exists():
            raise InputError(str(run_dir), "already holds a run (manifest.json exists); choose another --out")
        if run_dir.exists() and not run_dir.is_dir():
            raise InputError(str(run_dir), "exists and is not a directory")
        run_dir.mkdir(parents=True, exist_ok=True)
        run = cls(cfg, run_dir, config_path)
        run.save_manifest(status="running")
        return run

    def save_manifest(self, status: str) -> None:
        self.manifest["status"] = status
        self.manifest["wall_s"] = round(time.time() - self.started, 2)
        write_json_atomic(self.dir / "manifest.json", self.manifest)

    def record_stage(self, name: str, kept: int, rejected: Counter, wall_s: float, **extra) -> None:
        self.manifest["stages"][name] = {
            "kept": kept,
            "rejected": sum(rejected.values()),
            "rejected_by_reason": dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
            "wall_s": round(wall_s, 2),
            **extra,
        }
        self.save_manifest(status="running")


def run_bootstrap(run: Run, teacher: Teacher, seeds: list[Record], progress: Progress = _no_progress) -> None:
    cfg = run.cfg
    t0 = time.time()
    state = bootstrap.BootstrapState.start(seeds, cfg.filter)
    rng = random.Random(cfg.bootstrap.seed)
    files = StageFiles(run.dir, bootstrap.STAGE)
    rejected: Counter = Counter()
    kept = 0
    target = cfg.bootstrap.target_instructions
    try:
        while not state.done(cfg.bootstrap):
            result = bootstrap.step(state, teacher, cfg.bootstrap, cfg.filter, rng)
            files.write((r.to_dict() for r in result.kept), (r.to_dict() for r in result.rejected))
            kept += len(result.kept)
            rejected.update(r.reason for r in result.rejected)
            progress(bootstrap.STAGE, min(state.tasks_kept, target), target,
                     {"instances": kept, "rejected": sum(rejected.values()), "requests": teacher.usage.requests})
    finally:
        files.close()
        run.record_stage(
            bootstrap.STAGE, kept, rejected, time.time() - t0,
            tasks_kept=state.tasks_kept,
            target_instructions=target,
            generation_requests=state.requests,
            stats=dict(state.stats),
            usage=teacher.usage.as_dict(),
            teacher_model=teacher.model_name,
        )


def run_export(run: Run, progress: Progress = _no_progress) -> None:
    t0 = time.time()
    source = run.dir / bootstrap.STAGE / "kept.jsonl"
    out = run.dir / "dataset"
    count = 0
    with JsonlWriter(out / "train.jsonl") as alpaca, JsonlWriter(out / "messages.jsonl") as chat:
        batch: list[Record] = []
        for row in read_jsonl(source) if source.exists() else []:
            batch.append(Record.from_dict(row))
            if len(batch) >= 512:
                alpaca.write_many(map(to_alpaca, batch))
                chat.write_many(map(to_messages, batch))
                count += len(batch)
                batch = []
        alpaca.write_many(map(to_alpaca, batch))
        chat.write_many(map(to_messages, batch))
        count += len(batch)
    progress("export", count, count, {})
    run.record_stage("export", count, Counter(), time.time() - t0,
                     files={"alpaca": "dataset/train.jsonl", "messages": "dataset/messages.jsonl"})


def run_stages(cfg: RunConfig, run_dir: Path, config_path: str | None = None, stages: list[str] | None = None,
               progress: Progress = _no_progress) -> dict:
    """Validate inputs, then run the stages in order. Returns the manifest."""
    stages = stages or list(cfg.stages)
    seeds = load_seeds([cfg.resolve_path(p) for p in cfg.seed_files])  # bad seeds fail before anything is written
    teacher = make_teacher(cfg.teacher) if "bootstrap" in stages else None
    run = Run.create(cfg, run_dir, config_path)
    run.manifest["seeds"] = {"files": cfg.seed_files, "tasks": len({s.task_id for s in seeds})}
    try:
        if "bootstrap" in stages:
            run_bootstrap(run, teacher, seeds, progress)
        if "export" in stages:
            run_export(run, progress)
    except BaseException:
        run.save_manifest(status="failed")
        raise
    finally:
        if teacher is not None:
            teacher.close()
    usage = teacher.usage.as_dict() if teacher else {}
    run.manifest["tokens"] = {"prompt": usage.get("prompt_tokens", 0), "completion": usage.get("completion_tokens", 0)}
    run.save_manifest(status="complete")
    return run.manifest
