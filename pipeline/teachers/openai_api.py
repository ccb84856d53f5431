"""Any OpenAI-compatible chat API: OpenAI itself, a vLLM server, a llama.cpp server.

Requests in a batch run concurrently (bounded by ``teacher.concurrency``). Transient failures (429, 5xx,
timeouts, connection errors, unreadable bodies) are retried by tenacity with exponential backoff and jitter,
waiting at least as long as a ``Retry-After`` header asks. The API key is read from the environment variable the
config names, and never stored anywhere else.
"""
from __future__ import annotations

import asyncio
import os

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from ..config import TeacherConfig
from ..errors import InputError, TeacherError
from .base import ChatRequest, Completion, OnResult, Usage

MAX_RETRY_AFTER_S = 120.0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                        openai.InternalServerError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    # A 200 whose body is not the JSON we expect (truncated, invalid) is worth another try.
    return isinstance(exc, (ValueError, KeyError, IndexError, TypeError, _MalformedResponse))


class _MalformedResponse(Exception):
    pass


def _kind(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    return "malformed_response"


def _retry_after(exc: BaseException | None) -> float:
    response = getattr(exc, "response", None)
    if response is None:
        return 0.0
    value = response.headers.get("retry-after")
    try:
        return min(float(value), MAX_RETRY_AFTER_S) if value is not None else 0.0
    except ValueError:
        return 0.0


class _WaitHonouringRetryAfter:
    """Exponential backoff with jitter, but never shorter than the server's Retry-After."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0):
        self._backoff = wait_exponential_jitter(multiplier=initial, max=maximum)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return max(self._backoff(state), _retry_after(exc))


class OpenAITeacher:
    backend = "openai"

    def __init__(self, cfg: TeacherConfig):
        if not cfg.model:
            raise InputError("config", "the openai backend needs a model name", field="teacher.model")
        api_key = "not-needed"
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env, "")
            if not api_key:
                raise InputError("environment", f"variable {cfg.api_key_env} is not set (it should hold the API "
                                 "key; set teacher.api_key_env = \"\" for a server that needs none)",
                                 field="teacher.api_key_env")
        self.cfg = cfg
        self._secret = api_key if cfg.api_key_env else None
        self.model_name = cfg.model
        self.usage = Usage()
        self._client_kwargs = dict(base_url=cfg.base_url or None, api_key=api_key, max_retries=0,
                                   timeout=cfg.timeout_s)

    async def _one(self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, req: ChatRequest, index: int,
                   on_result: OnResult | None) -> Completion:
        d = req.decoding
        kwargs = dict(model=self.cfg.model, messages=req.messages, temperature=d.temperature, top_p=d.top_p,
                      max_tokens=d.max_tokens, presence_penalty=d.presence_penalty,
                      frequency_penalty=d.frequency_penalty)
        if d.stop:
            kwargs["stop"] = d.stop
        kwargs["seed"] = req.sampling_seed()

        def count_retry(state: RetryCallState) -> None:
            kind = _kind(state.outcome.exception())
            self.usage.retries += 1
            self.usage.retries_by_kind[kind] = self.usage.retries_by_kind.get(kind, 0) + 1

        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self.cfg.max_retries + 1),
            wait=_WaitHonouringRetryAfter(),
            after=count_retry,
            reraise=True,
        )
        async with sem:
            try:
                async for attempt in retrying:
                    with attempt:
                        resp = await client.chat.completions.create(**kwargs)
                        if not getattr(resp, "choices", None):
                            raise _MalformedResponse("response has no choices")
                        choice = resp.choices[0]
                        text = choice.message.content or ""
            except Exception as e:  # noqa: BLE001 - every failure becomes one clear TeacherError
                msg = (f"teacher {self.cfg.model} at {self.cfg.base_url or 'api.openai.com'} failed "
                       f"after {self.cfg.max_retries} retries: {type(e).__name__}: {e}")
                if self._secret:  # servers sometimes echo the key back in their error text
                    msg = msg.replace(self._secret, "***")
                raise TeacherError(msg) from None
        usage = resp.usage
        c = Completion(
            text=text,
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )
        self.usage.add(c)
        if on_result:
            on_result(index, c)
        return c

    async def _batch(self, requests: list[ChatRequest], on_result: OnResult | None) -> list[Completion]:
        sem = asyncio.Semaphore(self.cfg.concurrency)
        async with openai.AsyncOpenAI(**self._client_kwargs) as client:
            tasks = [asyncio.ensure_future(self._one(client, sem, r, i, on_result)) for i, r in enumerate(requests)]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for t in tasks:  # one request failed for good: do not leave the others running
                    t.cancel()

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[Completion]:
        return asyncio.run(self._batch(requests, on_result))

    def close(self) -> None:
        pass
