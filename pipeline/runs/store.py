"""The run directory: the one place that knows its layout, and the only writer of its bookkeeping.

Layout of ``<run>/``: ``manifest.json``; ``<stage>/kept.jsonl`` and ``<stage>/rejected.jsonl`` (the record stages:
bootstrap, evolve, filter); ``dataset/train.jsonl`` (Alpaca), ``dataset/messages.jsonl`` (chat) and
``dataset/README.md`` (the card); ``tune/`` and ``eval/``; ``report.html``; ``cache.sqlite`` (every paid
completion); ``batches/`` (``teacher.mode = "batch"``: the Batch API's ledger, the batch input files and the
downloaded results, kept by ``teachers.batch``); ``<stage>/.done`` once a stage has finished; ``.lock`` while a
process works on it. The folder
``pipeline filter --out DIR`` writes is a flat one: ``kept.jsonl``, ``rejected.jsonl``, ``stats.json``.

``run_session`` opens (or resumes) a run under its lock with the request cache and the budget in front of the
teacher; ``runs.stages`` runs the stages inside it; ``runs.read`` reads a run back for inspect and report.
Records are appended and flushed as they are accepted; the manifest and the markers are replaced atomically.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..config import PROJECT_ROOT, RunConfig, package_versions
from ..errors import InputError, RunLocked
from ..io.files import JsonlWriter, write_json_atomic, write_jsonl_atomic
from ..progress import Progress, no_progress
from ..teachers import Engine, make_backend, make_engine
from ..teachers.cache import Budget, BudgetExhausted, RequestCache, describe_spent

MANIFEST, DONE, LOCK, CACHE, BATCHES = "manifest.json", ".done", ".lock", "cache.sqlite", "batches"
RECORD_STAGES = ("bootstrap", "evolve", "filter")  # the stages that write kept.jsonl / rejected.jsonl
GENERATING_STAGES = ("bootstrap", "evolve")
DATASET_DIR = "dataset"
DATASET_FILES = {"alpaca": f"{DATASET_DIR}/train.jsonl", "messages": f"{DATASET_DIR}/messages.jsonl"}
CARD = f"{DATASET_DIR}/README.md"
REPORT = "report.html"
TUNE_DIR, EVAL_DIR = "tune", "eval"
FILTER_FILES = {"kept": "kept.jsonl", "rejected": "rejected.jsonl"}  # also the flat ``pipeline filter --out DIR``
FILTER_STATS = "stats.json"
_PROTECTED = ["pipeline", "prompts", "seed_tasks", "configs", "tests", "bench", ".git", ".ci"]


def stage_path(run_dir: Path, stage: str, kind: str) -> Path:
    """``<run>/<stage>/kept.jsonl`` or ``rejected.jsonl`` (``kind``: "kept" or "rejected")."""
    return run_dir / stage / FILTER_FILES[kind]


def is_done(run_dir: Path, stage: str) -> bool:
    return (run_dir / stage / DONE).exists()


def default_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def run_dir_for(cfg: RunConfig, out: Path | None) -> Path:
    """Where a run goes: ``--out``, else ``<output_dir>/<run_id>`` (default run id: the UTC time)."""
    return Path(out) if out else cfg.resolve_path(cfg.output_dir) / (cfg.run_id or default_run_id())


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
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / MANIFEST).exists():
        raise InputError(str(run_dir), "is a non-empty directory that holds no run (no manifest.json); "
                         "choose a new directory")


class RunLock:
    """An exclusive lock on a run directory, held by a live process. The OS drops it when the process dies, so a
    stale lock file from a killed run never blocks."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self._fh = None

    def acquire(self) -> bool:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class StageFiles:
    """``<run>/<stage>/kept.jsonl`` and ``rejected.jsonl``."""

    def __init__(self, run_dir: Path, stage: str):
        self.dir = run_dir / stage
        self.kept = JsonlWriter(stage_path(run_dir, stage, "kept"))
        self.rejected = JsonlWriter(stage_path(run_dir, stage, "rejected"))

    def write(self, kept: Iterable[dict], rejected: Iterable[dict]) -> None:
        self.kept.write_many(kept)
        self.rejected.write_many(rejected)

    def close(self) -> None:
        self.kept.close()
        self.rejected.close()


class Run:
    """An open run: its config, directory and manifest, held under the run's lock until ``close``."""

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
        manifest_path = run_dir / MANIFEST
        resuming = manifest_path.exists()
        if resuming:
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
        write_json_atomic(self.dir / MANIFEST, self.manifest)

    def is_done(self, stage: str) -> bool:
        return is_done(self.dir, stage)

    def mark_done(self, stage: str) -> None:
        write_json_atomic(self.dir / stage / DONE, {"finished_at": datetime.now(timezone.utc).isoformat()})

    def stage_files(self, stage: str) -> StageFiles:
        """The appending writers of ``<run>/<stage>/kept.jsonl`` and ``rejected.jsonl``."""
        return StageFiles(self.dir, stage)

    def kept_file(self, stage: str) -> Path:
        return stage_path(self.dir, stage, "kept")

    def generated_files(self) -> list[Path]:
        """The kept files of the generating stages, in order."""
        return [p for p in map(self.kept_file, GENERATING_STAGES) if p.exists()]

    def final_files(self) -> list[Path]:
        """The kept files the dataset is made of: the filter stage's output when it ran, else the generated
        records."""
        if "filter" in self.cfg.stages or self.is_done("filter"):
            return [self.kept_file("filter")]
        return self.generated_files()

    def dataset_writers(self) -> tuple[JsonlWriter, JsonlWriter]:
        """The appending writers of the exported dataset: Alpaca ``train.jsonl`` and chat ``messages.jsonl``."""
        return JsonlWriter(self.dir / DATASET_FILES["alpaca"]), JsonlWriter(self.dir / DATASET_FILES["messages"])

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


def _budget(cfg: RunConfig, model_name: str) -> Budget:
    """The run's budget, at the prices of the way the teacher is asked (``Price.rates``: the Batch API's in batch
    mode). A run that changed mode on a forced resume is costed at the current mode's prices."""
    price = cfg.prices.get(model_name) or cfg.prices.get(cfg.teacher.model)
    return Budget(max_requests=cfg.budget.max_requests, max_tokens=cfg.budget.max_tokens,
                  max_cost_usd=cfg.budget.max_cost_usd,
                  price=price.rates(cfg.teacher.mode) if price else None)


@contextmanager
def run_session(cfg: RunConfig, run_dir: Path, config_path: str | None = None, *, force: bool = False,
                need_teacher: bool = True, check: Callable[[dict], None] | None = None,
                progress: Progress = no_progress) -> Iterator[tuple[Run, Engine | None]]:
    """One session of work on a run directory: open (or resume) the run under its lock, put the request cache and
    the budget in front of the teacher, and on the way out, however the body ends, record the session's usage,
    what was spent and the status in the manifest, then release the teacher and the lock.

    ``check(manifest)`` runs on the manifest of a run being resumed, before anything is written; if it raises, the
    run directory is left as it was. ``progress`` hears the teacher's own waits (Batch API batches).
    A body that raises BudgetExhausted ends "budget_exhausted", KeyboardInterrupt "interrupted", anything else
    "failed" (with ``stopped_because``); the exception propagates to the CLI, which maps it to an exit code.
    """
    # The backend touches its state directory only once it sends, which is after the run is open and locked.
    backend = make_backend(cfg.teacher, run_dir / BATCHES, progress) if need_teacher else None
    try:
        run = Run.open(cfg, run_dir, config_path, force=force, check=check)
    except BaseException:
        if backend is not None:
            asyncio.run(backend.aclose())
        raise
    budget = _budget(cfg, backend.model_name if backend else "")
    cache = RequestCache(run.dir / CACHE)
    teacher = make_engine(cfg.teacher, cache, budget, backend) if backend is not None else None
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
        cache.close()
        run.close()


def write_filter_records(out: Path, kept: Iterable[dict[str, Any]], rejected: Iterable[dict[str, Any]]
                         ) -> tuple[int, int]:
    """``pipeline filter``'s result: ``DIR/kept.jsonl`` and ``DIR/rejected.jsonl``, each replaced whole (an
    earlier result in DIR is replaced, or left as it was). Returns the rows of each."""
    out.mkdir(parents=True, exist_ok=True)
    return (write_jsonl_atomic(out / FILTER_FILES["kept"], kept),
            write_jsonl_atomic(out / FILTER_FILES["rejected"], rejected))


def write_filter_stats(out: Path, stats: dict[str, Any]) -> None:
    write_json_atomic(out / FILTER_STATS, stats)
