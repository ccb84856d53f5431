"""The embedded default teacher: a GGUF run in-process by llama-cpp-python (no network, no GPU)."""
from __future__ import annotations

import asyncio
import inspect
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import TeacherConfig
from ..errors import InputError, TeacherError
from .base import ChatRequest, Completion, Refused
from .embedded import embedded_model_path, ensure_runs
from .formats import OutputFormat, max_tokens_for
from .options import structured_mode


# create_chat_completion arguments this backend sets itself (not from teacher.extra_body).
_SET_HERE = {"self", "messages", "temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty",
             "stop", "seed", "grammar", "response_format"}


# A model file below this size gets one generation thread (see ``generation_threads``).
SMALL_MODEL_BYTES = 1 << 30


def generation_threads(path: Path) -> int:
    """Threads for generating tokens when ``teacher.n_threads`` is 0: one for a small model, every core for a
    large one. A token of a small model is many tiny operations, and waking sleeping threads (OpenMP waits
    passively here, see ``embedded.py``) for each costs more than the work it shares: SmolLM2-135M generated
    49-69 tokens/s with one thread and 27 with two on a 2-core machine; a bootstrap of 29 requests took 134 s
    against 216 s. Reading the prompt (one large batch) still uses every core."""
    return 1 if path.stat().st_size < SMALL_MODEL_BYTES else (os.cpu_count() or 1)


class LlamaCppBackend:
    backend = "llamacpp"
    max_parallel = 1

    def __init__(self, cfg: TeacherConfig):
        try:
            from llama_cpp import Llama
        except ImportError as e:  # pragma: no cover - it is a core dependency
            raise TeacherError(f"llama-cpp-python is not importable: {e}") from None
        path = Path(cfg.model).expanduser() if cfg.model else embedded_model_path()
        if not path.is_file():
            raise InputError("config", f"GGUF not found: {path}", field="teacher.model")
        self.model_name = path.name.removesuffix(".gguf")
        self.structured = structured_mode(cfg)  # "grammar" (our GBNF), "json_schema" (llama.cpp's) or "off"
        self._grammars: dict[str, object] = {}
        self._extra = dict(cfg.extra_body)  # e.g. top_k, min_p, repeat_penalty
        unknown = sorted(set(self._extra) - (set(inspect.signature(Llama.create_chat_completion).parameters)
                                             - _SET_HERE)) if self._extra else []
        if unknown:
            raise InputError("config", f"{unknown[0]!r} is not an extra create_chat_completion argument (the "
                             "decoding settings and the format set the others)", field="teacher.extra_body")
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")
        # A llama.cpp compiled for another CPU dies by SIGILL in-process, which no handler can turn into a message:
        # one generation in a child process first (remembered per build, CPU and model) fails with a clear line.
        ensure_runs(path)
        self._llm = Llama(
            model_path=str(path),
            n_ctx=cfg.n_ctx,
            n_threads=cfg.n_threads or generation_threads(path),
            n_threads_batch=cfg.n_threads or os.cpu_count() or 1,
            seed=cfg.seed,
            verbose=False,
        )

    def describe(self) -> dict:
        return {"n_threads": self._llm.n_threads, "n_threads_batch": self._llm.n_threads_batch}

    def _grammar(self, fmt: OutputFormat | None):
        """The llama.cpp grammar for a request's format: our GBNF ("grammar"), or llama.cpp's conversion of the
        JSON schema ("json_schema"); None for free text."""
        if fmt is None or self.structured == "off":
            return None
        if fmt.key() not in self._grammars:
            from llama_cpp import LlamaGrammar

            self._grammars[fmt.key()] = (LlamaGrammar.from_json_schema(json.dumps(fmt.schema), verbose=False)
                                         if self.structured == "json_schema"
                                         else LlamaGrammar.from_string(fmt.gbnf, verbose=False))
        return self._grammars[fmt.key()]

    def _complete(self, req: ChatRequest) -> Completion:
        d = req.decoding
        grammar = self._grammar(req.format)
        try:
            resp = self._llm.create_chat_completion(
                messages=req.messages,
                temperature=d.temperature,
                top_p=d.top_p,
                max_tokens=max_tokens_for(d.max_tokens, req.format if grammar is not None else None),
                presence_penalty=d.presence_penalty,
                frequency_penalty=d.frequency_penalty,
                stop=d.stop or None,
                seed=req.sampling_seed(),
                grammar=grammar,
                **self._extra,
            )
        except ValueError as e:  # e.g. the prompt does not fit the context window: this request never will
            raise Refused(f"llama.cpp rejected the request: {e}") from None
        choice = resp["choices"][0]
        usage = resp.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
        )

    async def send(self, req: ChatRequest) -> Completion:
        # The model answers one request at a time (max_parallel = 1), in a worker thread so the engine's loop
        # stays free to decide and write while it computes.
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._complete, req)

    async def aclose(self) -> None:
        self._worker.shutdown(wait=True)
        if hasattr(self._llm, "close"):
            self._llm.close()
