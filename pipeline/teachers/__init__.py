"""Teachers: a backend per kind of model server (``make_backend``) behind the one request engine (``make_engine``)
that owns concurrency, retries, the cache and the budget for all of them."""
from __future__ import annotations

from pathlib import Path

from ..config import ScaleConfig, TeacherConfig
from ..errors import InputError
from ..progress import Progress, no_progress
from .base import Backend, ChatRequest, Completion, Usage
from .cache import Budget, RequestCache
from .engine import Engine

BATCH_MODE_CEILING = 1 << 30
Teacher = Engine  # what stages are given: ``generate`` (sync) and ``complete`` (async) over every backend

__all__ = ["Backend", "ChatRequest", "Completion", "Engine", "Teacher", "Usage", "make_backend", "make_engine",
           "make_teacher"]


def make_backend(cfg: TeacherConfig, state_dir: Path | None = None, progress: Progress = no_progress,
                 scale: ScaleConfig | None = None) -> Backend:
    """The backend ``cfg`` names. ``state_dir``: where a backend that keeps state across sessions keeps it (the
    Batch API's ledger and files, ``teacher.mode = "batch"``, which needs one; the logs of replicas the Ray engine
    starts beside it); ``progress`` hears its waits. ``scale.engine = "ray"``: the requests go through Ray Data
    (``ray_data.py``)."""
    if scale is not None and scale.engine == "ray":
        from .ray_data import RayDataBackend

        return RayDataBackend(cfg, scale, state_dir)
    if cfg.mode == "batch":
        if state_dir is None:
            raise InputError("config", 'teacher.mode = "batch" runs inside a run directory (pipeline run, '
                             'bootstrap or evolve); use mode = "online" here', field="teacher.mode")
        from .batch import BatchBackend

        return BatchBackend(cfg, state_dir, progress)
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
    backend = backend or make_backend(cfg)
    collects = getattr(backend, "collects", False)  # it gathers requests into batches or waves of its own
    # Only a server can be probed for its width; vLLM in-process takes the whole window as one batch.
    auto = cfg.concurrency == "auto" and cfg.backend == "openai" and not collects
    # The Batch API and Ray waves: no window at all; everything the stages can ask at once goes into one batch.
    ceiling = BATCH_MODE_CEILING if collects else _ceiling(cfg)
    return Engine(backend, cache, budget, concurrency=ceiling, auto=auto,
                  max_retries=cfg.max_retries, hedge=0.0 if collects else cfg.hedge)


def make_teacher(cfg: TeacherConfig) -> Engine:
    """A teacher with no cache or budget (``check-teacher``, tests)."""
    return make_engine(cfg)
