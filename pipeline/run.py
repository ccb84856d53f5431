"""Run the configured stages into a run directory, and resume one that stopped. The CLI calls ``run_stages``;
all writing happens here or in ``runio``.

Layout of ``<run>/``: ``manifest.json``; ``<stage>/kept.jsonl`` and ``<stage>/rejected.jsonl``;
``dataset/train.jsonl`` (Alpaca) and ``dataset/messages.jsonl`` (chat); ``cache.sqlite`` (every paid completion);
``<stage>/.done`` once a stage has finished; ``.lock`` while a process works on it.

Resuming: finished stages are skipped; the stage in progress replays from its start with the request cache
answering every request that already succeeded, and its writers skip the rows already on disk. Replay is exact
because every random choice is seeded and every sampled request carries its own seed.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from . import bootstrap
from .config import PROJECT_ROOT, RunConfig
from .errors import InputError
from .export import to_alpaca, to_messages
from .records import Record
from .runio import JsonlWriter, RunLock, StageFiles, package_versions, read_jsonl, write_json_atomic
from .seeds import load_seeds
from .teachers import Teacher, make_teacher
from .teachers.cache import Budget, BudgetExhausted, CachedTeacher, RequestCache, describe_spent

# progress(stage, done, total, fields) is called as work advances; the CLI draws it.
Progress = Callable[[str, int, int, dict], None]
STAGE_ORDER = ["bootstrap", "evolve", "filter", "export", "tune", "eval"]
TEACHER_STAGES = {"bootstrap", "evolve"}
_PROTECTED = ["pipeline", "prompts", "seed_tasks", "configs", "tests", "bench", ".git", ".ci"]


def _no_progress(stage: str, done: int, total: int, fields: dict) -> None:
    pass


class RunLocked(Exception):
    """Another live process is working on this run directory."""


def check_output_dir(run_dir: Path) -> None:
    """Refuse output paths that would mix a run with other files."""
    resolved = run_dir.resolve()
    for name in _PROTECTED:
        if resolved == (PROJECT_ROOT / name).resolve() or (PROJECT_ROOT / name).resolve() in resolved.parents:
            raise InputError(str(run_dir), f"is inside the project's {name}/ directory; write runs elsewhere "
                             "(default: outputs/)")
    if resolved == PROJECT_ROOT.resolve() or resolved == Path.home().resolve() or resolved == Path("/"):
        raise InputError(str(run_dir), "is not a place for a run directory; use a new directory")
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(str(run_dir), "exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "manifest.json").exists():
        raise InputError(str(run_dir), "is a non-empty directory that holds no run (no manifest.json); "
                         "choose a new directory")


class Run:
    def __init__(self, cfg: RunConfig, run_dir: Path, manifest: dict):
        self.cfg, self.dir, self.manifest = cfg, run_dir, manifest
        self.started = time.time()
        self.lock = RunLock(run_dir)

    @classmethod
    def open(cls, cfg: RunConfig, run_dir: Path, config_path: str | None = None, force: bool = False,
             check: Callable[[dict], None] | None = None) -> "Run":
        """Start a new run in ``run_dir``, or resume the run it holds. ``check(manifest)`` may refuse to resume (by
        raising) before anything is written."""
        check_output_dir(run_dir)
        manifest_path = run_dir / "manifest.json"
        resuming = manifest_path.exists()
        if resuming:
            import json

            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise InputError(str(manifest_path), f"unreadable manifest ({e}); cannot resume") from None
            old = manifest.get("fingerprint")
            if old != cfg.fingerprint() and not force:
                raise InputError(str(manifest_path), f"the config differs from the one this run started with "
                                 f"(fingerprint {old} != {cfg.fingerprint()}); resume with the same config, "
                                 "or pass --force", field="fingerprint")
            if check is not None:
                check(manifest)
            manifest["config"] = cfg.model_dump(mode="json")
            manifest["fingerprint"] = cfg.fingerprint()
        else:
            manifest = {
                "run_id": run_dir.name,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "config_path": config_path,
                "fingerprint": cfg.fingerprint(),
                "config": cfg.model_dump(mode="json"),
                "versions": package_versions(),
                "stages": {},
                "sessions": [],
            }
        run_dir.mkdir(parents=True, exist_ok=True)
        run = cls(cfg, run_dir, manifest)
        if not run.lock.acquire():
            raise RunLocked(f"{run_dir} is in use by another live process (pid {run.lock.holder()}); "
                            "wait for it to finish")
        manifest.setdefault("sessions", []).append({
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resumed": resuming,
            "config_path": config_path,
        })
        run.save_manifest(status="running")
        return run

    @property
    def session(self) -> dict:
        return self.manifest["sessions"][-1]

    def save_manifest(self, status: str) -> None:
        self.manifest["status"] = status
        self.session["status"] = status
        self.session["wall_s"] = round(time.time() - self.started, 2)
        self.manifest["wall_s"] = round(sum(s.get("wall_s", 0) for s in self.manifest["sessions"]), 2)
        write_json_atomic(self.dir / "manifest.json", self.manifest)

    def is_done(self, stage: str) -> bool:
        return (self.dir / stage / ".done").exists()

    def mark_done(self, stage: str) -> None:
        write_json_atomic(self.dir / stage / ".done", {"finished_at": datetime.now(timezone.utc).isoformat()})

    def record_stage(self, name: str, kept: int, rejected: Counter, wall_s: float, **extra) -> None:
        self.manifest["stages"][name] = {
            "kept": kept,
            "rejected": sum(rejected.values()),
            "rejected_by_reason": dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
            "wall_s": round(wall_s, 2),
            **extra,
        }
        self.save_manifest(status="running")

    def close(self) -> None:
        self.lock.release()


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
                     {"instances": kept, "rejected": sum(rejected.values()), "requests": teacher.usage.requests,
                      "cached": teacher.usage.cache_hits})
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


def generated_files(run: Run) -> list[Path]:
    """The kept files of the generating stages, in order."""
    return [p for p in (run.dir / "bootstrap" / "kept.jsonl", run.dir / "evolve" / "kept.jsonl") if p.exists()]


def final_records(run: Run) -> list[Path]:
    """The kept files the dataset is made of: the filter stage's output when it ran, else the generated records."""
    if "filter" in run.cfg.stages or run.is_done("filter"):
        return [run.dir / "filter" / "kept.jsonl"]
    return generated_files(run)


def run_filter(run: Run, seeds: list[Record], progress: Progress = _no_progress) -> None:
    """The final filter chain over everything generated (bootstrap and evolve, all rounds), against the seeds."""
    from .filtering import filter_records

    t0 = time.time()
    records = [Record.from_dict(row) for path in generated_files(run) for row in read_jsonl(path)]
    result = filter_records(records, run.cfg.filter, reference=seeds,
                            progress=lambda phase, done, total: progress("filter", done, total, {"phase": phase}))
    files = StageFiles(run.dir, "filter")
    try:
        files.write((r.to_dict() for r in result.kept), (r.to_dict() for r in result.rejected))
    finally:
        files.close()
    run.record_stage("filter", len(result.kept), Counter(r.reason for r in result.rejected), time.time() - t0,
                     input=len(records), stats=result.stats)


def run_export(run: Run, progress: Progress = _no_progress) -> None:
    t0 = time.time()
    out = run.dir / "dataset"
    with JsonlWriter(out / "train.jsonl") as alpaca, JsonlWriter(out / "messages.jsonl") as chat:
        for source in final_records(run):
            batch: list[Record] = []
            for row in read_jsonl(source) if source.exists() else []:
                batch.append(Record.from_dict(row))
                if len(batch) >= 512:
                    alpaca.write_many(map(to_alpaca, batch))
                    chat.write_many(map(to_messages, batch))
                    batch = []
            alpaca.write_many(map(to_alpaca, batch))
            chat.write_many(map(to_messages, batch))
        count = alpaca.count
    progress("export", count, count, {})
    run.record_stage("export", count, Counter(), time.time() - t0,
                     files={"alpaca": "dataset/train.jsonl", "messages": "dataset/messages.jsonl"})
    from .card import write_card

    try:  # rewritten with the final figures at the end of `pipeline run`; a card problem never fails the export
        write_card(run.dir)
    except Exception:  # noqa: BLE001
        pass


def _budget(cfg: RunConfig, model_name: str) -> Budget:
    price = cfg.prices.get(model_name) or cfg.prices.get(cfg.teacher.model)
    return Budget(max_requests=cfg.budget.max_requests, max_tokens=cfg.budget.max_tokens,
                  max_cost_usd=cfg.budget.max_cost_usd,
                  price=(price.input_per_mtok, price.output_per_mtok) if price else None)


@contextmanager
def run_session(cfg: RunConfig, run_dir: Path, config_path: str | None = None, *, force: bool = False,
                need_teacher: bool = True, check: Callable[[dict], None] | None = None
                ) -> Iterator[tuple[Run, CachedTeacher | None]]:
    """One session of work on a run directory: open (or resume) the run under its lock, put the request cache and
    the budget in front of the teacher, and on the way out, however the body ends, record the session's usage,
    what was spent and the status in the manifest, then release the teacher and the lock.

    ``check(manifest)`` runs on the manifest of a run being resumed, before anything is written; if it raises, the
    run directory is left as it was.
    A body that raises BudgetExhausted ends "budget_exhausted", KeyboardInterrupt "interrupted", anything else
    "failed" (with ``stopped_because``); the exception propagates to the CLI, which maps it to an exit code.
    """
    inner = make_teacher(cfg.teacher) if need_teacher else None
    try:
        run = Run.open(cfg, run_dir, config_path, force=force, check=check)
    except BaseException:
        if inner is not None:
            inner.close()
        raise
    budget = _budget(cfg, inner.model_name if inner else "")
    cache = RequestCache(run.dir / "cache.sqlite")
    teacher = CachedTeacher(inner, cache, budget) if inner is not None else None
    status = "failed"
    try:
        yield run, teacher
        status = "complete"
    except BudgetExhausted as e:
        status = "budget_exhausted"
        run.manifest["stopped_because"] = str(e)
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as e:
        run.manifest["stopped_because"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        if teacher is not None:
            run.session["usage"] = teacher.usage.as_dict()
        run.manifest["spent"] = describe_spent(cache.spent(), budget)
        run.manifest["tokens"] = {"prompt": run.manifest["spent"]["prompt_tokens"],
                                  "completion": run.manifest["spent"]["completion_tokens"]}
        if status == "complete":
            run.manifest.pop("stopped_because", None)
        run.save_manifest(status=status)
        if teacher is not None:
            teacher.close()
        else:
            cache.close()
        run.close()


def run_stages(cfg: RunConfig, run_dir: Path, config_path: str | None = None, stages: list[str] | None = None,
               progress: Progress = _no_progress, force: bool = False) -> dict:
    """Validate every input, then run (or resume) the stages in order. Returns the manifest.

    Raises InputError before anything is written when an input is bad; BudgetExhausted, TeacherError or
    KeyboardInterrupt leave the run resumable, with its manifest saying why it stopped.
    """
    wanted = stages or list(cfg.stages)
    stages = [s for s in STAGE_ORDER if s in wanted]
    seeds = load_seeds([cfg.resolve_path(p) for p in cfg.seed_files])
    with run_session(cfg, run_dir, config_path, force=force,
                     need_teacher=bool(TEACHER_STAGES & set(stages))) as (run, teacher):
        run.manifest["seeds"] = {"files": cfg.seed_files, "tasks": len({s.task_id for s in seeds}),
                                 "paths": [str(cfg.resolve_path(p).resolve()) for p in cfg.seed_files]}
        for stage in stages:
            if run.is_done(stage):
                continue
            if stage == "bootstrap":
                run_bootstrap(run, teacher, seeds, progress)
            elif stage == "evolve":
                from .evolve_run import evolve_inputs, run_evolve

                run_evolve(run, teacher, evolve_inputs(run, seeds), progress)
            elif stage == "filter":
                run_filter(run, seeds, progress)
            elif stage == "export":
                run_export(run, progress)
            elif stage == "tune":
                from .tune import run_tune_stage

                run_tune_stage(run, cfg, progress)
            elif stage == "eval":
                from .evaluate import run_eval_stage

                run_eval_stage(run, cfg, progress)
            run.mark_done(stage)
    return run.manifest
