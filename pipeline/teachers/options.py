"""Per-model request options: which structured-output mechanism a backend uses, which field carries the token
limit, whether sampling parameters are sent, and the config's extra body fields. Kept apart from the backends so
every way of sending a request (one at a time, or a batch file) builds the same body."""
from __future__ import annotations

import re
from typing import Any

from ..config import TeacherConfig
from .base import ChatRequest
from .formats import max_tokens_for

# OpenAI's reasoning models: o1, o3, o3-mini, o4-mini, o1-pro, gpt-5, gpt-5-mini, gpt-5-nano and their dated names,
# also behind a provider prefix ("openai/o3-mini"). The gpt-5 "-chat" models are ordinary chat models.
_REASONING = re.compile(r"^(?:o\d+(?:$|-)|gpt-5(?:$|[.-]))", re.IGNORECASE)


def is_reasoning_model(model: str) -> bool:
    name = model.rsplit("/", 1)[-1]
    return bool(_REASONING.match(name)) and "-chat" not in name.lower()


def token_limit_param(cfg: TeacherConfig) -> str:
    if cfg.token_limit_param != "auto":
        return cfg.token_limit_param
    return "max_completion_tokens" if is_reasoning_model(cfg.model) else "max_tokens"


def sends_sampling_params(cfg: TeacherConfig) -> bool:
    if cfg.sampling_params != "auto":
        return bool(cfg.sampling_params)
    return not is_reasoning_model(cfg.model)


def structured_mode(cfg: TeacherConfig) -> str:
    """What a backend does with a request's format: "json_schema", "grammar" or "off" ("auto" resolved)."""
    if cfg.structured == "off":
        return "off"
    if cfg.structured != "auto":
        return cfg.structured
    return "grammar" if cfg.backend == "llamacpp" else "json_schema"


def openai_body(cfg: TeacherConfig, req: ChatRequest, structured: str) -> dict[str, Any]:
    """The JSON body of a chat completion request to an OpenAI-compatible server (online, or a line of a batch
    file), with ``cfg.extra_body`` merged in.
    ``structured`` is the backend's mode now ("off" once a server has refused a schema)."""
    d = req.decoding
    body: dict[str, Any] = {"model": cfg.model, "messages": req.messages}
    if sends_sampling_params(cfg):
        body.update(temperature=d.temperature, top_p=d.top_p, presence_penalty=d.presence_penalty,
                    frequency_penalty=d.frequency_penalty)
    fmt = req.format if structured != "off" else None
    body[token_limit_param(cfg)] = max_tokens_for(d.max_tokens, fmt)
    body["seed"] = req.sampling_seed()
    if d.stop:
        body["stop"] = d.stop
    if fmt is not None and structured == "json_schema":
        body["response_format"] = fmt.response_format()
    elif fmt is not None and structured == "grammar":
        body["grammar"] = fmt.gbnf  # llama.cpp servers (llama-server, llama_cpp.server) read a GBNF here
    body.update(cfg.extra_body)  # sent verbatim, as the SDK's extra_body would be
    return body
