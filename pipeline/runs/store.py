"""The run directory: the one place that knows its layout, and the only writer of its bookkeeping.

Layout of ``<run>/``: ``manifest.json``; ``<stage>/kept.jsonl`` and ``<stage>/rejected.jsonl`` (the record stages:
bootstrap, evolve, filter); ``dataset/train.jsonl`` (Alpaca), ``dataset/messages.jsonl`` (chat) and
``dataset/README.md`` (the card); ``tune/`` and ``eval/``; ``report.html``; ``cache.sqlite`` (every paid
completion); ``batches/`` (``teacher.mode = "batch"``: the Batch API's ledger, the batch input files and the
downloaded results, kept by ``teachers.batch``); ``<stage>/.done`` once a stage has finished; ``.lock`` while a
process works on it; ``attempts/<session>/`` what unfinished stages had written when a forced resume restarted
them. The folder
``pipeline filter --out DIR`` writes is a flat one: ``kept.jsonl``, ``rejected.jsonl``, ``stats.json``.

``run_session`` opens (or resumes) a run under its lock with the request cache and the budget in front of the
teacher; ``runs.stages`` runs the stages inside it; ``runs.read`` reads a run back for inspect and report.
Records are appended and flushed as they are accepted; the manifest and the markers are replaced atomically.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..config import PROJECT_ROOT, RunConfig, TeacherConfig, package_versions
from ..errors import InputError, RunLocked
from .. import __version__
from ..io.files import JsonlWriter, fsync_dir, read_jsonl, replacing_dir, write_json_atomic, write_jsonl_atomic
from ..prompts import template_hashes
from ..records import Record
from ..progress import Progress, no_progress
from ..teachers import Engine, make_backend, make_engine
from ..teachers.cache import Budget, BudgetExhausted, RequestCache, describe_spent

MANIFEST, DONE, LOCK, CACHE, BATCHES = "manifest.json", ".done", ".lock", "cache.sqlite", "batches"
# The stages that write kept.jsonl / rejected.jsonl (judge rejects nothing: it scores every record it keeps).
RECORD_STAGES = ("templatize", "bootstrap", "evolve", "filter", "judge", "select", "conversation", "preferences")
GENERATING_STAGES = ("templatize", "bootstrap", "evolve")
# The record stages whose kept records the next stage (and export) reads, the last of them in the run winning.
EXPORT_INPUT_STAGES = ("filter", "judge", "select", "conversation")
_ORDER = ("templatize", "bootstrap", "evolve", "filter", "judge", "select", "conversation", "preferences", "export")
DATASET_DIR = "dataset"
DATASET_FILES = {"alpaca": f"{DATASET_DIR}/train.jsonl", "messages": f"{DATASET_DIR}/messages.jsonl"}
PREFERENCES_FILE = f"{DATASET_DIR}/preferences.jsonl"  # prompt / chosen / rejected rows, for DPO
CARD = f"{DATASET_DIR}/README.md"
LINEAGE_FILE = f"{DATASET_DIR}/lineage.jsonl"
SPLIT_FILE, HELDOUT_TASKS = "split.json", "heldout/tasks.jsonl"  # the run's held-out human tasks
REPORT = "report.html"
TUNE_DIR, EVAL_DIR = "tune", "eval"
DPO_DIR = "tune_dpo"  # pipeline tune --method dpo: <run>/tune_dpo, or tune_dpo/ beside a preferences file
ATTEMPTS = "attempts"  # what unfinished stages had written before a forced resume restarted them
STAGE_DIRS = {"export": DATASET_DIR}  # the folder each stage writes, where it is not named after the stage
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


def run_inputs(cfg: RunConfig) -> dict[str, Any]:
    """What decides a run's output besides the code's own logic: the config's fingerprint, the content hash of
    every seed file, the hash of every prompt template and the package version. Resuming with any of them changed
    would splice two different trajectories into one run."""
    seeds = {}
    for p in cfg.seed_files:
        path = cfg.resolve_path(p)
        seeds[p] = _digest(path)
    inputs = {"config": cfg.fingerprint(), "seeds": seeds, "templates": template_hashes(), "version": __version__}
    files = [b.path for b in cfg.decontaminate.benchmarks if b.path]
    if files:  # only when there are any, so runs without benchmark files keep their fingerprint
        inputs["benchmarks"] = {p: _digest(cfg.resolve_path(p)) for p in files}
    if cfg.eval.heldout_files:
        inputs["heldout"] = {p: _digest(cfg.resolve_path(p)) for p in cfg.eval.heldout_files}
    if "templatize" in cfg.stages:  # the labelled datasets and their templates
        inputs["labelled"] = {d.path: _digest(cfg.resolve_path(d.path)) for d in cfg.templatize.datasets if d.path}
        inputs["label_templates"] = template_hashes(cfg.resolve_path(cfg.templatize.templates_dir), "*/*.j2")
    return inputs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


def inputs_fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def what_changed(manifest: dict, cfg: RunConfig, inputs: dict[str, Any]) -> list[str]:
    """The inputs that differ between a run's manifest and now, in words."""
    old = manifest.get("inputs")
    if not isinstance(old, dict):
        return ["the run was started by an earlier version of the pipeline, which did not record its inputs"]
    changed = []
    if old.get("config") != inputs["config"]:
        try:
            before = _flat(RunConfig.model_validate(manifest.get("config") or {}).fingerprint_data())
        except Exception:  # noqa: BLE001 (a config the present code cannot read at all)
            before = {}
        now = _flat(cfg.fingerprint_data())
        keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        changed.append("config " + (", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "") if keys else "settings"))
    for name, digest in inputs["seeds"].items():
        if (old.get("seeds") or {}).get(name) != digest:
            changed.append(f"seed file {name}")
    for name in sorted((old.get("seeds") or {}).keys() - inputs["seeds"].keys()):
        changed.append(f"seed file {name} (no longer listed)")
    b_old, b_new = old.get("benchmarks") or {}, inputs.get("benchmarks") or {}
    for name in sorted(k for k in b_old.keys() | b_new.keys() if b_old.get(k) != b_new.get(k)):
        changed.append(f"benchmark file {name}")
    for key, what in (("labelled", "labelled dataset"), ("label_templates", "dataset template")):
        l_old, l_new = old.get(key) or {}, inputs.get(key) or {}
        for name in sorted(k for k in l_old.keys() | l_new.keys() if l_old.get(k) != l_new.get(k)):
            changed.append(f"{what} {name}")
    t_old, t_new = old.get("templates") or {}, inputs["templates"]
    templates = sorted(k for k in t_old.keys() | t_new.keys() if t_old.get(k) != t_new.get(k))
    if templates:
        changed.append("prompt templates " + ", ".join(templates))
    if old.get("version") != inputs["version"]:
        changed.append(f"package version {old.get('version')} -> {inputs['version']}")
    return changed or ["the inputs' fingerprint"]


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
        self.resuming, self._created = False, False
        self.open_teacher: Callable[[], Engine] | None = None  # set by run_session

    @classmethod
    def open(cls, cfg: RunConfig, run_dir: Path, config_path: str | None = None, force: bool = False,
             check: Callable[[dict], None] | None = None) -> "Run":
        """Start a new run in ``run_dir``, or resume the run it holds. ``check(manifest)`` may refuse to resume (by
        raising) before anything is written."""
        check_output_dir(run_dir)
        inputs = run_inputs(cfg)
        fingerprint = inputs_fingerprint(inputs)
        manifest_path = run_dir / MANIFEST
        resuming = manifest_path.exists()
        if resuming:
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise InputError(str(manifest_path), f"unreadable manifest ({e}); cannot resume") from None
            changed = [] if manifest.get("fingerprint") == fingerprint else what_changed(manifest, cfg, inputs)
            if changed and not force:
                raise InputError(str(manifest_path), "cannot resume: changed since the run started: "
                                 + "; ".join(changed) + ". Resume with what it started with, or pass --force to "
                                 "restart its unfinished stages from their start", field="fingerprint")
            if check is not None:
                check(manifest)
            manifest["config"] = cfg.model_dump(mode="json")
            manifest["fingerprint"], manifest["inputs"] = fingerprint, inputs
        else:
            manifest = {
                "run_id": run_dir.name,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "config_path": config_path,
                "fingerprint": fingerprint,
                "inputs": inputs,
                "config": cfg.model_dump(mode="json"),
                "versions": package_versions(),
                "stages": {},
                "sessions": [],
            }
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        run = cls(cfg, run_dir, manifest)
        run.resuming, run._created = resuming, created
        if not run.lock.acquire():
            raise RunLocked(f"{run_dir} is in use by another live process (pid {run.lock.holder()}); "
                            "wait for it to finish")
        return run

    def begin(self, config_path: str | None = None) -> None:
        """Start this session in the manifest (the first write of a new run)."""
        self.manifest.setdefault("sessions", []).append({
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resumed": self.resuming,
            "config_path": config_path,
        })
        self.save_manifest(status="running")

    def abandon(self) -> None:
        """Give the run up before its session began (bad input found under the lock): release the lock, and
        remove the directory if this session created it, so a refused start leaves nothing behind."""
        self.lock.release()
        if self._created and {p.name for p in self.dir.iterdir()} <= {LOCK}:
            (self.dir / LOCK).unlink(missing_ok=True)
            self.dir.rmdir()

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

    def set_aside(self, stage: str) -> Path | None:
        """Move what an unfinished stage wrote so far to ``<run>/attempts/<session>/``, so that the stage starts
        again from nothing (``--force``: never append to a file another trajectory began). Returns where it went,
        None when the stage had written nothing."""
        src = self.dir / STAGE_DIRS.get(stage, stage)
        if not src.exists():
            return None
        dest = self.dir / ATTEMPTS / str(len(self.manifest["sessions"])) / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dest)
        fsync_dir(self.dir)
        return dest

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
        """The kept files the dataset is made of: the output of the last of select, judge and filter that is in
        the run, else the generated records."""
        return self.stage_input("export")

    def stage_input(self, stage: str) -> list[Path]:
        """The kept files a record stage reads: those of the last record stage before it that is in the run
        (select reads judge's, judge reads filter's, export reads conversation's, ...), else the generated
        records. Preferences is a side branch: its pairs go to their own file, never into the SFT dataset."""
        chain = [s for s in EXPORT_INPUT_STAGES if stage != "preferences" or s != "conversation"]
        before = [s for s in chain if _ORDER.index(s) < _ORDER.index(stage)]
        for s in reversed(before):
            if s in self.cfg.stages or self.is_done(s):
                return [self.kept_file(s)]
        return self.generated_files()

    def input_records(self, stage: str) -> list[Record]:
        """The records a record stage reads (``stage_input``), in file order."""
        return [Record.from_dict(row) for path in self.stage_input(stage) if path.exists() for row in read_jsonl(path)]

    def dataset_writers(self) -> tuple[JsonlWriter, JsonlWriter, JsonlWriter]:
        """The appending writers of the exported dataset: Alpaca ``train.jsonl``, chat ``messages.jsonl`` and
        ``lineage.jsonl`` (each row's record id and lineage, read by ``pipeline tune`` to split by lineage)."""
        return (JsonlWriter(self.dir / DATASET_FILES["alpaca"]), JsonlWriter(self.dir / DATASET_FILES["messages"]),
                JsonlWriter(self.dir / LINEAGE_FILE))

    def preference_writer(self) -> JsonlWriter:
        """The appending writer of ``dataset/preferences.jsonl`` (prompt / chosen / rejected rows, for DPO)."""
        return JsonlWriter(self.dir / PREFERENCES_FILE)

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


def price_for_budget(cfg: RunConfig) -> None:
    """A cost budget needs the price of every teacher model the run asks (the judge's too): without one it could
    never be enforced, so the run is refused before it starts."""
    if cfg.budget.max_cost_usd is None:
        return
    teachers = [cfg.teacher] + ([cfg.judge.teacher] if cfg.judge.teacher and "judge" in cfg.stages else [])
    for t in teachers:
        if t.model and not cfg.prices.get(t.model):
            raise InputError("config", f"budget.max_cost_usd is set but the teacher model {t.model!r} has no "
                             f'price: add [prices."{t.model}"] with input_per_mtok and output_per_mtok (USD per '
                             "million tokens), or remove the cost budget", field="prices")


def budget_for(cfg: RunConfig, model_name: str, tcfg: TeacherConfig | None = None) -> Budget:
    """The run's budget, at the prices of the way the teacher is asked (``Price.rates``: the Batch API's in batch
    mode). A run that changed mode on a forced resume is costed at the current mode's prices.

    With a ``[judge] teacher`` of another model, both engines count the run's whole spending (one cache) at the
    higher of the two models' prices per token: an upper bound, so a cost budget is never overrun (the cache does
    not record which model answered)."""
    tcfg = tcfg or cfg.teacher
    price = cfg.prices.get(model_name) or cfg.prices.get(tcfg.model)
    rates = price.rates(tcfg.mode) if price else None
    judge = cfg.judge.teacher
    if rates is not None and judge is not None and "judge" in cfg.stages:
        other = (judge if tcfg is cfg.teacher else cfg.teacher)
        other_price = cfg.prices.get(other.model)
        if other_price is None:
            rates = None
        else:
            o = other_price.rates(other.mode)
            rates = (max(rates[0], o[0]), max(rates[1], o[1]))
    return Budget(max_requests=cfg.budget.max_requests, max_tokens=cfg.budget.max_tokens,
                  max_cost_usd=cfg.budget.max_cost_usd, price=rates)


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
    # The lock first: a second nightly process is told "in use" before it loads a model or takes GPU memory.
    run = Run.open(cfg, run_dir, config_path, force=force, check=check)
    backend = None
    try:
        price_for_budget(cfg)
        # The backend touches its state directory only once it sends.
        backend = make_backend(cfg.teacher, run_dir / BATCHES, progress, cfg.scale) if need_teacher else None
        budget = budget_for(cfg, backend.model_name if backend else "")
        run.begin(config_path)
    except BaseException:
        if backend is not None:
            asyncio.run(backend.aclose())
        run.abandon()
        raise
    cache = RequestCache(run.dir / CACHE)
    teacher = make_engine(cfg.teacher, cache, budget, backend) if backend is not None else None
    extra: list[Engine] = []

    def open_teacher(tcfg: TeacherConfig | None = None) -> Engine:
        """Another engine on this session's cache and budget: the eval stage's judge, built after the generating
        teacher was released, or ``[judge] teacher``'s (``tcfg``)."""
        tcfg = tcfg or cfg.teacher
        price_for_budget(cfg)
        engine = make_engine(tcfg, cache, budget_for(cfg, tcfg.model, tcfg),
                             make_backend(tcfg, run.dir / BATCHES, progress, cfg.scale_for(tcfg)))
        extra.append(engine)
        return engine
    run.open_teacher = open_teacher
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
        engines = [e for e in (teacher, *extra) if e is not None]
        for e in engines:  # first: a stage still on the engine's loop records itself as it ends, not after this
            e.close()
        if engines:
            usage = engines[0].usage.as_dict()
            for e in engines[1:]:  # the judge's requests count with the teacher's
                for k, v in e.usage.as_dict().items():
                    if isinstance(v, (int, float)) and isinstance(usage.get(k), (int, float)):
                        usage[k] += v
            run.session["usage"] = usage
        run.manifest["spent"] = describe_spent(cache.spent(), budget)
        run.manifest["tokens"] = {"prompt": run.manifest["spent"]["prompt_tokens"],
                                  "completion": run.manifest["spent"]["completion_tokens"]}
        if status == "complete":
            run.manifest.pop("stopped_because", None)
        run.save_manifest(status=status)
        cache.close()
        run.close()


def write_filter_result(out: Path, kept: Iterable[dict[str, Any]], rejected: Iterable[dict[str, Any]],
                        stats: dict[str, Any]) -> tuple[int, int]:
    """``pipeline filter``'s result: ``DIR/kept.jsonl``, ``DIR/rejected.jsonl`` and ``DIR/stats.json``, written into
    a new folder that then replaces DIR as one unit (an earlier result in DIR is replaced whole, or left whole).
    Returns the rows of kept and rejected. A DIR holding anything else is refused."""
    ours = {*FILTER_FILES.values(), FILTER_STATS}
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if other:
            raise InputError(str(out), f"holds files that are not a filter result ({', '.join(other[:3])}); "
                             "use a new or empty directory", field="--out")
    with replacing_dir(out) as new:
        counts = (write_jsonl_atomic(new / FILTER_FILES["kept"], kept),
                  write_jsonl_atomic(new / FILTER_FILES["rejected"], rejected))
        write_json_atomic(new / FILTER_STATS, {**stats, "kept": counts[0], "rejected": counts[1]})
    return counts
