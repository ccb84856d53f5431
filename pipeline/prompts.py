"""Prompt templates live in ``prompts/`` as jinja2 files."""
from __future__ import annotations

import hashlib
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


_TURN = re.compile(r"^### (system|user|assistant)[ \t]*$", re.MULTILINE)


@lru_cache(maxsize=None)
def _turns(directory: str, name: str) -> tuple[list[tuple[str, jinja2.Template]], jinja2.Template | None]:
    """A template's turns, split in its *source*: ``([(role, template of the turn)], None)``, or ``([], template)``
    for a template without turn lines. Each turn's template is the text before the first turn line (comments and
    ``{% set %}`` lines) followed by the turn's own text."""
    env = _env(directory)
    source, _, _ = env.loader.get_source(env, f"{name}.j2")
    parts = _TURN.split(source)
    if len(parts) == 1:
        return [], env.get_template(f"{name}.j2")
    head = parts[0]
    return [(role, env.from_string(head + body)) for role, body in zip(parts[1::2], parts[2::2])], None


def render_messages(name: str, directory: Path = PROMPTS_DIR, **variables) -> list[dict[str, str]]:
    """Render a template into chat messages. Lines ``### system``, ``### user`` and ``### assistant`` in the
    template start a turn (few-shot examples are earlier turns); a template without them is one user message.
    The turns are found in the template, never in the rendered text: an instruction or input that holds a
    ``### user`` line stays text inside its turn and cannot forge one."""
    turns, whole = _turns(str(directory), name)
    if whole is not None:
        return [{"role": "user", "content": whole.render(**variables).strip()}]
    return [{"role": role, "content": t.render(**variables).strip()} for role, t in turns]


def template_hashes(directory: Path = PROMPTS_DIR, pattern: str = "*.j2") -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of every template ``pattern`` finds under ``directory``, by its path without
    the suffix (a prompt's name; ``<task>/<id>`` for the dataset templates, ``pattern="*/*.j2"``): part of a run's
    fingerprint, so a resume after a template changed is refused instead of splicing two trajectories."""
    directory = Path(directory)
    return {p.relative_to(directory).with_suffix("").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(directory.glob(pattern))}
