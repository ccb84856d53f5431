"""Any OpenAI-compatible chat API: OpenAI itself, a vLLM server, a llama.cpp server, TGI.

The backend sends one request once, on one persistent connection pool for the run, and sorts every failure into
what the engine does with it: ``Transient`` (429, 408/409, 5xx, timeouts, connection errors, unreadable bodies:
retried, 429/503 also shrink the window), ``Refused`` (400, 413, 422: this request can never succeed) or
``TeacherError`` (401, 403, 404: nothing will succeed). The API key is read from the environment variable the
config names, and never stored anywhere else.

Chat requests go over aiohttp (one ``ClientSession`` per run) rather than the ``openai`` SDK's ``create()``: the
request is the documented ``/chat/completions`` JSON either way, but the SDK's parameter transform and its httpx
connection pool (which scans every connection for every request) cost about 3.7 ms of client CPU per request
against 0.23 ms for aiohttp, measured on this project's simulated server at 256 requests in flight
(``bench/http_client_bench.py``); one process must feed a node of GPUs. The SDK stays in use where
volume is low (the Batch API's files and batches).
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
from typing import Any

import aiohttp
import openai
import yarl

from ..config import TeacherConfig
from ..errors import InputError, TeacherError, redact
from .base import ChatRequest, Completion, Refused, Transient
from .options import openai_body, structured_mode

CONGESTION = (429, 503)
OPENAI_BASE_URL = "https://api.openai.com/v1"
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


def error_message(body: bytes) -> str:
    """The server's own words from an error body (OpenAI: {"error": {"message": ...}}), else the body's start."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500].decode("utf-8", "replace").strip()
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:500]
    return str(err)[:500]


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
        # Credentials inside the URL (a server behind HTTP basic auth) leave the URL: they become the basic-auth
        # header when no API key is configured, and appear nowhere else.
        base = yarl.URL(cfg.base_url or OPENAI_BASE_URL)
        self._auth = f"Bearer {api_key}"
        if base.user is not None:
            if not cfg.api_key_env:
                self._auth = aiohttp.BasicAuth(base.user, base.password or "").encode()
                self._secret = base.password or base.user
            base = base.with_user(None)
        self._base_url = str(base).rstrip("/")
        self._url = chat_url(self._base_url)
        self._where = redact(cfg.base_url) or "api.openai.com"
        self._session: aiohttp.ClientSession | None = None
        self._client: openai.AsyncOpenAI | None = None

    def redact(self, text: str) -> str:
        """Error text without the API key (servers echo keys) or credentials inside a URL."""
        return redact(text.replace(self._secret, "***") if self._secret else text)

    def _session_now(self) -> aiohttp.ClientSession:
        """One session (one connection pool) for the whole run, made inside the engine's event loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=self._pool_size),
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                headers={"Authorization": self._auth, "Content-Type": "application/json"})
        return self._session

    def client(self) -> openai.AsyncOpenAI:
        """The ``openai`` SDK client, for the low-volume endpoints (the Batch API's files and batches)."""
        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self._base_url if self.cfg.base_url else None, api_key=self._api_key,
                                              max_retries=0, timeout=self.cfg.timeout_s)
        return self._client

    def sorted_error(self, e: Exception) -> Exception:
        """What the engine does with a failed SDK call: ``Transient``, ``Refused`` or ``TeacherError`` (the key
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
            return TeacherError(f"teacher {self.cfg.model} at {self._where}: {msg}")
        return Refused(msg)

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
        try:
            async with self._session_now().post(self._url, data=json.dumps(openai_body(self.cfg, req, structured))) as resp:
                status, raw = resp.status, await resp.read()
                retry_after = resp.headers.get("retry-after")
        except asyncio.TimeoutError:
            raise Transient("timeout", f"no answer within {self.cfg.timeout_s:g} s") from None
        except aiohttp.ClientPayloadError as e:  # a body cut short
            raise Transient("truncated", self.redact(f"truncated response: {e}")) from None
        except aiohttp.ClientError as e:  # resets, refused connections, disconnects
            raise Transient("connection", self.redact(f"{type(e).__name__}: {e}")) from None
        return self.completion_from_answer(status, raw, retry_after)

    def completion_from_answer(self, status: int, raw: bytes, retry_after: str | None = None) -> Completion:
        """An HTTP answer (status, body, Retry-After) as a completion, or the error the engine sorts it into."""
        if status != 200:
            raise self.status_error(status, error_message(raw), retry_after)
        try:
            data = json.loads(raw)
        except ValueError:  # a 200 whose body is not JSON (cut short, garbled)
            raise Transient("malformed_response",
                            self.redact(f"unreadable completion body: {raw[:200]!r}")) from None
        return completion_from_body(data)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._client is not None:
            await self._client.close()
            self._client = None


def chat_url(base_url: str) -> str:
    """``<base>/chat/completions`` for an OpenAI-compatible base URL ("" = OpenAI's), without any credentials in
    it (they travel as a header)."""
    base = yarl.URL(base_url or OPENAI_BASE_URL)
    if base.user is not None:
        base = base.with_user(None)
    return str(base).rstrip("/") + "/chat/completions"


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def completion_from_body(body: Any) -> Completion:
    """A chat completion response (the JSON online, a dict in a batch's output file) as a ``Completion``; no
    choice or message is a malformed answer."""
    choices = _field(body, "choices")
    message = _field(choices[0], "message") if isinstance(choices, list) and choices else None
    if message is None or isinstance(message, (str, int, float, list)):
        raise Transient("malformed_response", "the response has no choices")
    usage = _field(body, "usage")
    return Completion(text=_field(message, "content") or "",
                      finish_reason=_field(choices[0], "finish_reason") or "stop",
                      prompt_tokens=(_field(usage, "prompt_tokens") if usage is not None else 0) or 0,
                      completion_tokens=(_field(usage, "completion_tokens") if usage is not None else 0) or 0)
