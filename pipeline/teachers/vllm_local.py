"""vLLM in-process (optional extra ``gpu``): batched generation on a local CUDA GPU.

The engine sends requests one by one; this backend gathers the requests that arrive while the GPU is busy and
gives them to ``vllm.LLM.chat`` as one batch (vLLM schedules a batch's sequences together), in a worker thread
so the engine keeps deciding and writing meanwhile. Not testable without a GPU: kept thin.
"""
from __future__ import annotations

import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor

from ..config import TeacherConfig
from ..errors import InputError, TeacherError
from .base import ChatRequest, Completion
from .formats import OutputFormat, max_tokens_for
from .options import structured_mode


class VLLMBackend:
    backend = "vllm"
    max_parallel = None

    def __init__(self, cfg: TeacherConfig, max_batch: int = 1024):
        if not cfg.model:
            raise InputError("config", "the vllm backend needs a model (HF id or local dir)", field="teacher.model")
        try:
            import torch
        except ImportError:
            torch = None
        if torch is None or not torch.cuda.is_available():
            raise TeacherError("the vllm backend needs a CUDA GPU, and none is visible here; use the llamacpp or "
                               "openai backend instead")
        try:
            from vllm import LLM
        except ImportError as e:
            raise TeacherError(f"the vllm backend needs vllm: pip install 'instruct-pipeline[gpu]' ({e})") from None
        self.model_name = cfg.model
        self.max_batch = max_batch
        self.structured = structured_mode(cfg)  # "json_schema" (default) or "grammar" (GBNF through xgrammar)
        # extra_body: chat_template_kwargs goes to LLM.chat, the rest (top_k, repetition_penalty, ...) to
        # SamplingParams, so a config written for a vLLM server means the same in-process.
        extra = dict(cfg.extra_body)
        self._chat_extra = {"chat_template_kwargs": extra.pop("chat_template_kwargs")} \
            if "chat_template_kwargs" in extra else {}
        self._sampling_extra = extra
        self._llm = LLM(model=cfg.model, seed=cfg.seed, **cfg.vllm_engine_args)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm")
        self._queue: list[tuple[ChatRequest, asyncio.Future]] = []
        self._running = False

    def _constraint(self, fmt: OutputFormat | None) -> dict:
        """SamplingParams arguments that constrain the answer to ``fmt``: vLLM >= 0.10.2 takes
        ``structured_outputs=StructuredOutputsParams(json=... | grammar=...)`` (the only form from 0.12 on), older
        versions ``guided_decoding=GuidedDecodingParams(...)``."""
        if fmt is None or self.structured == "off":
            return {}
        what = {"json": fmt.schema} if self.structured == "json_schema" else {"grammar": fmt.gbnf}
        try:
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError:
            try:
                from vllm.sampling_params import GuidedDecodingParams
            except ImportError:
                raise TeacherError("this vllm has neither StructuredOutputsParams nor GuidedDecodingParams; set "
                                   "teacher.structured = \"off\"") from None
            return {"guided_decoding": GuidedDecodingParams(**what)}
        return {"structured_outputs": StructuredOutputsParams(**what)}

    def _chat(self, requests: list[ChatRequest]) -> list[Completion]:
        from vllm import SamplingParams

        params = [
            SamplingParams(temperature=r.decoding.temperature, top_p=r.decoding.top_p or 1.0,
                           max_tokens=max_tokens_for(r.decoding.max_tokens,
                                                     r.format if self.structured != "off" else None),
                           presence_penalty=r.decoding.presence_penalty,
                           frequency_penalty=r.decoding.frequency_penalty, stop=r.decoding.stop or None,
                           seed=r.sampling_seed(), **self._sampling_extra, **self._constraint(r.format))
            for r in requests
        ]
        outputs = self._llm.chat([r.messages for r in requests], sampling_params=params, use_tqdm=False,
                                 **self._chat_extra)
        return [Completion(text=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason or "stop",
                           prompt_tokens=len(o.prompt_token_ids or []), completion_tokens=len(o.outputs[0].token_ids))
                for o in outputs]

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                try:
                    results = await loop.run_in_executor(self._worker, self._chat, [r for r, _ in batch])
                except Exception as e:  # noqa: BLE001 - the batch's callers each get the error
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), c in zip(batch, results):
                    if not fut.done():
                        fut.set_result(c)
        finally:
            self._running = False

    async def send(self, req: ChatRequest) -> Completion:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((req, fut))
        if not self._running:
            self._running = True
            await asyncio.sleep(0)  # let the requests submitted in this turn of the loop join the first batch
            asyncio.ensure_future(self._drain())
        return await fut

    async def aclose(self) -> None:
        """Stop the worker and free the engine's GPU memory, so that tuning can have it (``pipeline run`` closes
        the teacher before its tune and eval stages)."""
        self._worker.shutdown(wait=True)
        llm, self._llm = self._llm, None
        if llm is None:
            return
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):  # vLLM's V1 engine runs a core process: stop it
            shutdown()
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
