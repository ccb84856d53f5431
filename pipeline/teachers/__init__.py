"""Teachers: ``make_teacher(cfg)`` picks the backend the config names."""
from __future__ import annotations

from ..config import TeacherConfig
from .base import ChatRequest, Completion, Teacher, Usage

__all__ = ["ChatRequest", "Completion", "Teacher", "Usage", "make_teacher"]


def make_teacher(cfg: TeacherConfig) -> Teacher:
    if cfg.backend == "llamacpp":
        from .llamacpp import LlamaCppTeacher

        return LlamaCppTeacher(cfg)
    if cfg.backend == "openai":
        from .openai_api import OpenAITeacher

        return OpenAITeacher(cfg)
    from .vllm_local import VLLMTeacher

    return VLLMTeacher(cfg)
