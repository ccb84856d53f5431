"""Errors the CLI turns into a one-line message and an exit code: 2 (bad input), 1 (teacher failure), 4 (run locked)."""
from __future__ import annotations

import re

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it (``https://user:key@host``) replaced by ``***``."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


class InputError(Exception):
    """Bad user input: a config, seed or data file. Always names the file, line and field."""

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = f"{self.field}: " if self.field else ""
        return f"{where}: {what}{self.message}"


class TeacherError(Exception):
    """The teacher could not answer after bounded retries (down, misconfigured, unreachable)."""


class RunLocked(Exception):
    """Another live process is working on this run directory."""
