"""Any OpenAI-compatible chat API: OpenAI itself, a vLLM server, a llama.cpp server, TGI.

The backend sends one request once, on one persistent connection pool for the run, and sorts every failure into
what the engine does with it: ``Transient`` (429, 408/409, 5xx, timeouts, connection errors, unreadable bodies:
retried, 429/503 also shrink the window), ``Refused`` (400, 413, 422: this request can never succeed) or
``TeacherError`` (401, 403, 404: nothing will succeed). The API key is read from the environment variable the
config names, and never stored anywhere else.
"""
from __future__ import annotations

import email.utils
import os
import time
from typing import Any

import openai

from ..config import TeacherConfig
from ..errors import InputError, TeacherError
from .base import ChatRequest, Completion, Refused, Transient

CONGESTION = (429, 503)


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """A Retry-After header in seconds, either form HTTP allows: a number, or an HTTP date."""
    if not value:
        return 0.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0
    return max(when - (time.time() if now is None else now), 0.0)


class OpenAIBackend:
    backend = "openai"
    max_parallel = None

    def __init__(self, cfg: TeacherConfig, pool_size: int):
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
        self._api_key, self._pool_size = api_key, pool_size
        self._client: openai.AsyncOpenAI | None = None

    def redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text  # servers echo keys in error text

    def client(self) -> openai.AsyncOpenAI:
        """One client (one connection pool) for the whole run, made inside the engine's event loop."""
        if self._client is None:
            import httpx

            limits = httpx.Limits(max_connections=self._pool_size, max_keepalive_connections=self._pool_size)
            self._client = openai.AsyncOpenAI(
                base_url=self.cfg.base_url or None, api_key=self._api_key, max_retries=0, timeout=self.cfg.timeout_s,
                http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=self.cfg.timeout_s))
        return self._client

    def sorted_error(self, e: Exception) -> Exception:
        """What the engine does with a failed API call: ``Transient``, ``Refused`` or ``TeacherError`` (the key
        redacted from the message); anything else is returned as it is (a bug: it propagates)."""
        if isinstance(e, openai.APITimeoutError):
            return Transient("timeout", self.redact(str(e)))
        if isinstance(e, openai.APIConnectionError):  # resets, refused connections, truncated bodies
            return Transient("connection", self.redact(str(e)))
        if isinstance(e, openai.APIStatusError):
            return self.status_error(e.status_code, e.message, e.response.headers.get("retry-after"))
        if isinstance(e, ValueError):  # a 200 whose body is not JSON (json.JSONDecodeError is a ValueError)
            return Transient("malformed_response", self.redact(str(e)))
        return e

    def status_error(self, code: int, message: str, retry_after: str | None = None) -> Exception:
        """An HTTP status other than 200, sorted: 429, 408/409, 5xx transient; 401/403/404 fatal; the rest (400,
        413, 422) refused."""
        msg = self.redact(f"HTTP {code}: {message}")
        if code in CONGESTION or code in (408, 409) or code >= 500:
            return Transient(f"http_{code}", msg, retry_after_seconds(retry_after), congestion=code in CONGESTION)
        if code in (401, 403, 404):
            return TeacherError(f"teacher {self.cfg.model} at {self.cfg.base_url or 'api.openai.com'}: {msg}")
        return Refused(msg)

    async def send(self, req: ChatRequest) -> Completion:
        try:
            resp = await self.client().chat.completions.create(**request_body(self.cfg, req))
        except Exception as e:  # noqa: BLE001 - sorted; a bug comes back unchanged and propagates
            raise self.sorted_error(e) from None
        return completion_from_body(resp)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def request_body(cfg: TeacherConfig, req: ChatRequest) -> dict[str, Any]:
    """The body of a chat completion request, online or as a line of a batch file."""
    d = req.decoding
    body: dict[str, Any] = dict(model=cfg.model, messages=req.messages, temperature=d.temperature, top_p=d.top_p,
                                max_tokens=d.max_tokens, presence_penalty=d.presence_penalty,
                                frequency_penalty=d.frequency_penalty, seed=req.sampling_seed())
    if d.stop:
        body["stop"] = d.stop
    return body


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def completion_from_body(body: Any) -> Completion:
    """A chat completion response (the client's object online, a dict in a batch's output file) as a
    ``Completion``; no choice or message is a malformed answer."""
    choices = _field(body, "choices")
    message = _field(choices[0], "message") if choices else None
    if message is None or isinstance(message, (str, int, float, list)):
        raise Transient("malformed_response", "the response has no choices")
    usage = _field(body, "usage")
    return Completion(text=_field(message, "content") or "",
                      finish_reason=_field(choices[0], "finish_reason") or "stop",
                      prompt_tokens=(_field(usage, "prompt_tokens") if usage is not None else 0) or 0,
                      completion_tokens=(_field(usage, "completion_tokens") if usage is not None else 0) or 0)
