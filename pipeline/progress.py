"""How long work reports its progress: ``progress(stage, done, total, fields)``, called as work advances; the CLI
draws it as bars, everything else passes ``no_progress``."""
from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, int, dict], None]


def no_progress(stage: str, done: int, total: int, fields: dict) -> None:
    pass
