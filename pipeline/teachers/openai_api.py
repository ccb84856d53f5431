"""Any OpenAI-compatible chat API: OpenAI itself, a vLLM server, a llama.cpp server, TGI.

The backend sends one request once, on one persistent connection pool for the run, and sorts every failure into
what the engine does with it: ``Transient`` (429, 408/409, 5xx, timeouts, connection errors, unreadable bodies:
retried, 429/503 also shrink the window), ``Refused`` (400, 413, 422: this request can never succeed) or
``TeacherError`` (401, 403, 404: nothing will succeed). The API key is read from the environment variable the
config names, and never stored anywhere else.
"""
from __future__ import annotations

import email.utils
import logging
import os
import time

import openai

from ..config import TeacherConfig
from ..errors import InputError, TeacherError
from .base import ChatRequest, Completion, Refused, Transient
from .options import openai_body, structured_mode

CONGESTION = (429, 503)
log = logging.getLogger(__name__)


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
        self.structured = structured_mode(cfg)  # "json_schema", "grammar" or "off"
        self._auto_structured = cfg.structured == "auto"
        self._api_key, self._pool_size = api_key, pool_size
        self._client: openai.AsyncOpenAI | None = None

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text  # servers echo keys in error text

    def _client_now(self) -> openai.AsyncOpenAI:
        """One client (one connection pool) for the whole run, made inside the engine's event loop."""
        if self._client is None:
            import httpx

            limits = httpx.Limits(max_connections=self._pool_size, max_keepalive_connections=self._pool_size)
            self._client = openai.AsyncOpenAI(
                base_url=self.cfg.base_url or None, api_key=self._api_key, max_retries=0, timeout=self.cfg.timeout_s,
                http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=self.cfg.timeout_s))
        return self._client

    async def send(self, req: ChatRequest) -> Completion:
        mode = self.structured
        try:
            return await self._send(req, mode)
        except (Refused, Transient) as e:
            # "auto": a server that does not take a JSON schema gets the request again without it; if that
            # succeeds, the run stops asking (the tolerant parsers read the answers). Servers say so with a 400 or
            # 422, or (llama_cpp.server) a 500 whose message names response_format; other transient failures are
            # not about the schema. Refused again: the schema was not the reason, and nothing changes.
            if not (self._auto_structured and mode == "json_schema" and req.format is not None):
                raise
            if isinstance(e, Transient) and "response_format" not in str(e):
                raise
            c = await self._send(req, "off")
            if self.structured == "off":
                return c
            self.structured = "off"
            log.warning("teacher %s refused a JSON-schema response_format; structured outputs are off for this "
                        "run (set teacher.structured = \"grammar\" for a llama.cpp server)", self.cfg.model)
            return c

    async def _send(self, req: ChatRequest, structured: str) -> Completion:
        kwargs = openai_body(self.cfg, req, structured)
        try:
            resp = await self._client_now().chat.completions.create(**kwargs)
        except openai.APITimeoutError as e:
            raise Transient("timeout", self._redact(str(e))) from None
        except openai.APIConnectionError as e:  # resets, refused connections, truncated bodies
            raise Transient("connection", self._redact(str(e))) from None
        except openai.APIStatusError as e:
            code, msg = e.status_code, self._redact(f"HTTP {e.status_code}: {e.message}")
            if code in CONGESTION or code in (408, 409) or code >= 500:
                raise Transient(f"http_{code}", msg, retry_after_seconds(e.response.headers.get("retry-after")),
                                congestion=code in CONGESTION) from None
            if code in (401, 403, 404):
                raise TeacherError(f"teacher {self.cfg.model} at {self.cfg.base_url or 'api.openai.com'}: {msg}") \
                    from None
            raise Refused(msg) from None
        except ValueError as e:  # a 200 whose body is not JSON (json.JSONDecodeError is a ValueError)
            raise Transient("malformed_response", self._redact(str(e))) from None
        choices = getattr(resp, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise Transient("malformed_response", "the response has no choices")
        choice, usage = choices[0], getattr(resp, "usage", None)
        return Completion(text=choice.message.content or "", finish_reason=choice.finish_reason or "stop",
                          prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
