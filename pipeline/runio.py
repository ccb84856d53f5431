"""All file I/O of a run lives here: the run directory, append-only JSONL writers, the manifest.

Records are appended as they are accepted and flushed to disk (fsync) after every batch; nothing is rewritten
whole. The manifest is replaced atomically (write a temporary file, then rename).
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import InputError

PACKAGES = ["instruct-pipeline", "llama-cpp-python", "openai", "rouge-score", "rapidfuzz", "datasketch", "pydantic",
            "transformers", "peft", "trl", "torch", "vllm"]


def default_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def drop_torn_tail(path: Path) -> int:
    """Cut a last line that was only partly written (no newline) when a process died. Returns the complete lines."""
    if not path.exists():
        return 0
    with open(path, "rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    return data[:end].count(b"\n")


class JsonlWriter:
    """Appends JSON lines; ``write_many`` makes a batch durable before it returns.

    Resumable: a torn last line is dropped on open, and the first ``skip`` rows written are the ones the file
    already holds (a resumed stage replays from its start and produces them again), so they are not written twice.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.skip = drop_torn_tail(path)
        self._fh = open(path, "a", encoding="utf-8")
        self.count = 0  # rows of this stage, including those already on disk

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        lines = []
        for r in rows:
            self.count += 1
            if self.count > self.skip:
                lines.append(json.dumps(r, ensure_ascii=False) + "\n")
        if not lines:
            return
        self._fh.write("".join(lines))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunLock:
    """An exclusive lock on a run directory, held by a live process. The OS drops it when the process dies, so a
    stale lock file from a killed run never blocks."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
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


def read_jsonl(path: Path, complete_only: bool = False) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL file; a line that is not JSON is an InputError naming the file and line.
    ``complete_only`` skips a last line without its newline (torn by a kill, or still being written), which a
    resumed run drops (``drop_torn_tail``): readers of a run that may be live or killed use it."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if complete_only and not line.endswith("\n"):
                continue
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(str(path), f"invalid JSON ({e.msg})", line=number) from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file under a temporary name, fsync it and rename it over ``path``: readers see the old file
    or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


class StageFiles:
    """``<run>/<stage>/kept.jsonl`` and ``rejected.jsonl``."""

    def __init__(self, run_dir: Path, stage: str):
        self.dir = run_dir / stage
        self.kept = JsonlWriter(self.dir / "kept.jsonl")
        self.rejected = JsonlWriter(self.dir / "rejected.jsonl")

    def write(self, kept: Iterable[dict], rejected: Iterable[dict]) -> None:
        self.kept.write_many(kept)
        self.rejected.write_many(rejected)

    def close(self) -> None:
        self.kept.close()
        self.rejected.close()
