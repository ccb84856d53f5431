"""Teachers: a backend per kind of model server (``make_backend``) behind the one request engine (``make_engine``)
that owns concurrency, retries, the cache and the budget for all of them."""
from __future__ import annotations

from ..config import TeacherConfig
from .base import Backend, ChatRequest, Completion, Usage
from .cache import Budget, RequestCache
from .engine import Engine

Teacher = Engine  # what stages are given: ``generate`` (sync) and ``complete`` (async) over every backend

__all__ = ["Backend", "ChatRequest", "Completion", "Engine", "Teacher", "Usage", "make_backend", "make_engine",
           "make_teacher"]


def make_backend(cfg: TeacherConfig) -> Backend:
    if cfg.backend == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(cfg)
    if cfg.backend == "openai":
        from .openai_api import OpenAIBackend

        return OpenAIBackend(cfg, pool_size=_ceiling(cfg))
    from .vllm_local import VLLMBackend

    return VLLMBackend(cfg)


def _ceiling(cfg: TeacherConfig) -> int:
    if cfg.concurrency == "auto":
        return cfg.max_concurrency
    return cfg.concurrency


def make_engine(cfg: TeacherConfig, cache: RequestCache | None = None, budget: Budget | None = None,
                backend: Backend | None = None) -> Engine:
    # Only a server can be probed for its width; vLLM in-process takes the whole window as one batch.
    auto = cfg.concurrency == "auto" and cfg.backend == "openai"
    return Engine(backend or make_backend(cfg), cache, budget, concurrency=_ceiling(cfg), auto=auto,
                  max_retries=cfg.max_retries, hedge=cfg.hedge)


def make_teacher(cfg: TeacherConfig) -> Engine:
    """A teacher with no cache or budget (``check-teacher``, tests)."""
    return make_engine(cfg)
