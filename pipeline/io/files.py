"""Every way the pipeline writes and reads its files: append-only JSONL, whole files replaced atomically, and the
one JSONL reader.

Appended records are flushed to disk (fsync) after every batch and never rewritten whole; a whole file (a manifest,
a report, a finished result) is written under a temporary name, fsynced and renamed over the old one, so readers
see the old file or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from ..errors import InputError


def _line(row: Any) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


# --- appending --------------------------------------------------------------------------------------------------
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


class ReplayMismatch(Exception):
    """A resumed stage produced a row that differs from the one already on disk at that place: appending after it
    would splice two different runs into one file."""

    def __init__(self, path: Path, row: int):
        self.path, self.row = path, row
        super().__init__(f"{path}: row {row} as replayed differs from the row on disk; the run's inputs or code "
                         "changed since it was written")


def _digest(line: str) -> bytes:
    return hashlib.blake2b(line.encode("utf-8"), digest_size=16).digest()


class JsonlWriter:
    """Appends JSON lines; ``write_many`` makes a batch durable before it returns.

    Resumable: a torn last line is dropped on open, and the first rows written are compared with the ones the
    file already holds (a resumed stage replays from its start and produces them again): equal, they are not
    written twice; different, ``ReplayMismatch`` is raised before anything is appended, since the file would
    otherwise hold the start of one run and the rest of another.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.skip = drop_torn_tail(path)
        self._on_disk: list[bytes] = []
        if self.skip:
            with open(path, encoding="utf-8") as fh:
                self._on_disk = [_digest(line) for line in fh]
        self._fh = open(path, "a", encoding="utf-8")
        self.count = 0  # rows of this stage, including those already on disk

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        lines = []
        for r in rows:
            self.count += 1
            line = _line(r)
            if self.count > self.skip:
                lines.append(line)
            elif _digest(line) != self._on_disk[self.count - 1]:
                raise ReplayMismatch(self.path, self.count)
        if not lines:
            return
        self._on_disk = []  # past the replay
        self._fh.write("".join(lines))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append_jsonl(path: Path, rows: Iterable[Any], durable: bool = False) -> None:
    """Append rows to a log that grows while it is read (``tail -f``); no replay. ``durable``: fsync before
    returning (a journal whose every line must survive a kill once it is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(map(_line, rows)))
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


# --- replacing whole files --------------------------------------------------------------------------------------
@contextmanager
def _replacing(path: Path, binary: bool = False) -> Iterator[IO]:
    """A file to write (text, or bytes with ``binary``) that replaces ``path`` whole when the block ends without an
    error, and is removed when it ends with one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power cut
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: a file system or kernel without it
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def replacing_dir(path: Path) -> Iterator[Path]:
    """A new directory to fill that replaces ``path`` as one unit when the block ends without an error (readers
    see every old file or every new one, never a mix), and is removed when it ends with one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new"))
    try:
        yield new
        for f in new.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(new)
        os.chmod(new, 0o755)
        if path.is_dir() and _exchange(new, path):
            shutil.rmtree(new)  # now the old contents
        else:
            if path.is_dir():  # no atomic exchange here: the old folder steps aside for a moment
                old = new.with_suffix(".old")
                os.rename(path, old)
                os.rename(new, path)
                shutil.rmtree(old)
            else:
                os.rename(new, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file under a temporary name, fsync it and rename it over ``path``: readers see the old file
    or the new one, never half of one."""
    with _replacing(path) as fh:
        fh.write(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``write_text_atomic`` for bytes."""
    with _replacing(path, binary=True) as fh:
        fh.write(data)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[Any]) -> int:
    """A whole JSONL file, replaced atomically like ``write_text_atomic``. Returns the rows written."""
    count = 0
    with _replacing(path) as fh:
        for row in rows:
            fh.write(_line(row))
            count += 1
    return count


# --- reading ----------------------------------------------------------------------------------------------------
def parse_jsonl(path: Path, lines: Iterable[str], *, complete_only: bool = False,
                max_line_chars: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of ``path``, whose text is ``lines``. A line that is not a
    JSON object (or longer than ``max_line_chars``) is an InputError naming the file and the line.
    ``complete_only`` skips a last line without its newline (torn by a kill, or still being written), which a
    resumed run drops (``drop_torn_tail``): readers of a run that may be live or killed use it."""
    for number, line in enumerate(lines, start=1):
        if complete_only and not line.endswith("\n"):
            continue
        if not line.strip():
            continue
        if max_line_chars is not None and len(line) > max_line_chars:
            raise InputError(str(path), f"line is longer than {max_line_chars} characters", line=number)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(str(path), f"invalid JSON ({e.msg} at column {e.colno})", line=number) from None
        if not isinstance(obj, dict):
            raise InputError(str(path), f"expected a JSON object, got {type(obj).__name__}", line=number)
        yield number, obj


def iter_jsonl(path: Path, complete_only: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``parse_jsonl`` over a file, read line by line; a file that is not UTF-8 is an InputError."""
    try:
        with open(path, encoding="utf-8") as fh:
            yield from parse_jsonl(path, fh, complete_only=complete_only)
    except UnicodeDecodeError as e:
        raise InputError(str(path), f"not valid UTF-8 ({e.reason})") from None


def read_jsonl(path: Path, complete_only: bool = False) -> Iterator[dict[str, Any]]:
    """The objects of a JSONL file (``iter_jsonl`` without the line numbers)."""
    for _, obj in iter_jsonl(path, complete_only):
        yield obj


def count_lines(path: Path) -> int:
    """Records in a JSONL file: complete, non-empty lines (0 when the file does not exist). A last line without its
    newline is a record still being written, or torn by a kill; resuming drops it, so it is not counted."""
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.endswith(b"\n") and line.strip())
