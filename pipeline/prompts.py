"""Prompt templates live in ``prompts/`` as jinja2 files."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import jinja2

from .config import PROJECT_ROOT

PROMPTS_DIR = PROJECT_ROOT / "prompts"


@lru_cache(maxsize=None)
def _env(directory: str) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(directory), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=False, autoescape=False)


def render(name: str, directory: Path = PROMPTS_DIR, **variables) -> str:
    return _env(str(directory)).get_template(f"{name}.j2").render(**variables).strip()


_TURN = re.compile(r"^### (system|user|assistant)\s*$", re.MULTILINE)


def render_messages(name: str, directory: Path = PROMPTS_DIR, **variables) -> list[dict[str, str]]:
    """Render a template into chat messages. Lines ``### system``, ``### user`` and ``### assistant`` start a
    turn (few-shot examples are earlier turns); a template without them is one user message."""
    text = render(name, directory, **variables)
    parts = _TURN.split(text)
    if len(parts) == 1:
        return [{"role": "user", "content": text}]
    return [{"role": role, "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]
