"""What every teacher backend implements (send one chat request, once) and what a request and its answer are.
Retries, concurrency, the cache and the budget are the engine's (``engine.py``), the same for every backend."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..config import Decoding
from .formats import OutputFormat


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    decoding: Decoding
    # Distinguishes otherwise identical requests that must get their own sample (e.g. the 2nd input for a task).
    sample_key: str = ""
    # The answer's shape (``formats.py``) where the backend can constrain it; None = free text. The stages set it
    # only when the engine's backend does structured outputs (``Engine.structured``).
    format: OutputFormat | None = None

    def key(self, backend: str, model: str) -> str:
        """Stable hash of everything that determines the answer: the request cache key. A structured request's
        format is part of it (a free-text request's key is what it always was)."""
        parts = [backend, model, self.messages, self.decoding.model_dump(mode="json"), self.sample_key]
        if self.format is not None:
            parts.append(self.format.key())
        payload = json.dumps(parts, sort_keys=True, ensure_ascii=False)
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


REFUSED = "refused"  # finish_reason of a request the teacher can never answer (the text is the server's message)
MAX_RETRY_AFTER_S = 120.0


class Transient(Exception):
    """A failure worth another try: 429, 5xx, timeout, connection reset, an unreadable body. ``congestion``: the
    server says it is overloaded (429, 503), so the engine should send less at once."""

    def __init__(self, kind: str, message: str, retry_after: float = 0.0, congestion: bool = False):
        super().__init__(message)
        self.kind, self.retry_after, self.congestion = kind, min(retry_after, MAX_RETRY_AFTER_S), congestion


class Refused(Exception):
    """The teacher says this request can never succeed (HTTP 400 and the like): the message is the server's."""


class Backend(Protocol):
    """Sends one request, once. Raises ``Transient`` (the engine retries), ``Refused`` (never retried; the record
    is rejected as ``teacher_refused``) or ``TeacherError`` (nothing can succeed: a bad key, no such model).
    Anything else is a bug in our code and propagates."""

    backend: str
    model_name: str
    max_parallel: int | None  # a hard cap of the backend itself (llama.cpp in-process answers one at a time)

    async def send(self, req: ChatRequest) -> Completion: ...

    async def aclose(self) -> None: ...
