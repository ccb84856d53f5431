"""The one interface every teacher implements: a batch of chat requests in, completions out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..config import Decoding


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    decoding: Decoding


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop", "length", ... as the backend reports it
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Usage:
    """Running totals for one stage (or one run)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    retries_by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, c: Completion) -> None:
        self.requests += 1
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "retries": self.retries,
            "retries_by_kind": dict(self.retries_by_kind),
        }


class Teacher(Protocol):
    """A language model that answers chat requests.

    ``generate`` returns one Completion per request, in order. It raises ``TeacherError`` when a request still
    fails after the backend's bounded retries.
    """

    model_name: str
    usage: Usage

    def generate(self, requests: list[ChatRequest]) -> list[Completion]: ...

    def close(self) -> None: ...
