"""vLLM in-process (optional extra ``gpu``): batched generation on a local CUDA GPU."""
from __future__ import annotations

from ..config import TeacherConfig
from ..errors import InputError, TeacherError
from .base import ChatRequest, Completion, OnResult, Usage


class VLLMTeacher:
    backend = "vllm"

    def __init__(self, cfg: TeacherConfig):
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
        self.usage = Usage()
        self._llm = LLM(model=cfg.model, seed=cfg.seed, **cfg.vllm_engine_args)

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[Completion]:
        from vllm import SamplingParams

        # vLLM batches everything it is given; requests with identical decoding share one call.
        params = [
            SamplingParams(temperature=r.decoding.temperature, top_p=r.decoding.top_p or 1.0,
                           max_tokens=r.decoding.max_tokens, presence_penalty=r.decoding.presence_penalty,
                           frequency_penalty=r.decoding.frequency_penalty, stop=r.decoding.stop or None,
                           seed=r.sampling_seed())
            for r in requests
        ]
        outputs = self._llm.chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
        result = []
        for i, out in enumerate(outputs):
            gen = out.outputs[0]
            c = Completion(text=gen.text, finish_reason=gen.finish_reason or "stop",
                           prompt_tokens=len(out.prompt_token_ids or []), completion_tokens=len(gen.token_ids))
            self.usage.add(c)
            result.append(c)
            if on_result:
                on_result(i, c)
        return result

    def close(self) -> None:
        pass
