"""The one interface every teacher implements: a batch of chat requests in, completions out."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..config import Decoding


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    decoding: Decoding
    # Distinguishes otherwise identical requests that must get their own sample (e.g. the 2nd input for a task).
    sample_key: str = ""

    def key(self, backend: str, model: str) -> str:
        """Stable hash of everything that determines the answer: the request cache key."""
        payload = json.dumps([backend, model, self.messages, self.decoding.model_dump(mode="json"), self.sample_key],
                             sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def sampling_seed(self) -> int:
        """A per-request seed (when the config sets none), so sampled answers do not depend on request order."""
        if self.decoding.seed is not None:
            return self.decoding.seed
        return int(self.key("", "")[:8], 16) & 0x7FFFFFFF


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop", "length", ... as the backend reports it
    prompt_tokens: int = 0
    completion_tokens: int = 0


# Called with (index in the batch, completion) as soon as each request completes.
OnResult = Callable[[int, "Completion"], None]


@dataclass
class Usage:
    """Running totals for one stage (or one run)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
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
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "retries_by_kind": dict(self.retries_by_kind),
        }


class Teacher(Protocol):
    """A language model that answers chat requests.

    ``generate`` returns one Completion per request, in order, and calls ``on_result`` as each one completes (so
    a cache can keep it even if the process dies before the batch ends). It raises ``TeacherError`` when a
    request still fails after the backend's bounded retries.
    """

    backend: str
    model_name: str
    usage: Usage

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[Completion]: ...

    def close(self) -> None: ...
