"""Run configuration: one TOML file, validated by pydantic.

Every section is a strict model with ``extra="forbid"``: an unknown key or a value of the wrong type is an
``InputError`` naming the file, the line and the dotted key. ``pipeline run`` with no config uses the defaults
below, which are the embedded demo (SmolLM2-135M-Instruct through llama-cpp-python).
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Decoding(_Section):
    """Sampling parameters sent with every request of one kind."""

    temperature: float = 0.7
    top_p: float = 0.5
    max_tokens: int = Field(512, gt=0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = []
    seed: int | None = None


class TeacherConfig(_Section):
    backend: Literal["llamacpp", "openai", "vllm"] = "llamacpp"
    # llamacpp: path to a GGUF ("" = the embedded SmolLM2-135M-Instruct); openai: model name; vllm: HF id or dir.
    model: str = ""
    base_url: str = ""
    # Name of the environment variable that holds the API key ("" = send no key, e.g. a local server).
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    # llama.cpp in-process settings.
    n_ctx: int = Field(4096, ge=256)
    n_threads: int = Field(0, ge=0)  # 0 = all cores
    seed: int = 0
    # vLLM in-process settings, passed to vllm.LLM(...).
    vllm_engine_args: dict[str, Any] = {}


class BootstrapConfig(_Section):
    """Self-Instruct: grow new tasks from seed tasks."""

    target_instructions: int = Field(50, ge=1)
    num_prompt_instructions: int = Field(8, ge=1)
    num_machine_in_prompt: int = Field(2, ge=0)
    new_per_request: int = Field(10, ge=1)  # new instructions asked for in each generation request
    request_batch_size: int = Field(4, ge=1)
    # Safety cap on instruction-generation requests: a weak teacher must not loop forever.
    max_generation_requests: int = Field(400, ge=1)
    max_instances_per_task: int = Field(5, ge=1)
    instances_per_task: int = Field(1, ge=1)  # for non-classification tasks; classification: one per label
    # "teacher": ask the teacher Yes/No (Self-Instruct). "rules": lexical cues and a label set in the instruction
    # (for weak teachers such as the embedded 135M model, which answers Yes to everything).
    classification: Literal["teacher", "rules"] = "rules"
    seed: int = 42
    generation: Decoding = Decoding(temperature=0.7, top_p=0.5, max_tokens=384, presence_penalty=2.0)
    classification_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=4)
    labels_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=48)
    input_decoding: Decoding = Decoding(temperature=0.7, top_p=0.9, max_tokens=160)
    answer_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=320)


class FilterConfig(_Section):
    """Instruction and instance filters (Self-Instruct and Alpaca rules)."""

    rouge_threshold: float = Field(0.7, ge=0.0, le=1.0)
    use_stemmer: bool = False
    unicode_tokens: bool = False  # keep non-Latin scripts (differs from rouge-score; off by default)
    min_words: int = 4  # instructions with fewer words are rejected (Self-Instruct: <= 3 is too short)
    max_words: int = 150
    blacklist: list[str] = [
        "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
        "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
    ]
    reject_non_ascii_start: bool = True
    max_instances_per_task: int = Field(5, ge=1)


class RunConfig(_Section):
    run_id: str = ""  # "" = UTC timestamp
    output_dir: str = "outputs"
    seed_files: list[str] = ["seed_tasks/seed_tasks.jsonl"]
    stages: list[Literal["bootstrap", "export"]] = ["bootstrap", "export"]
    teacher: TeacherConfig = TeacherConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    filter: FilterConfig = FilterConfig()

    def resolve_path(self, p: str) -> Path:
        """Relative paths in a config are relative to the project root, so the demo runs from anywhere."""
        path = Path(p).expanduser()
        if path.is_absolute() or path.exists():
            return path
        return PROJECT_ROOT / path


def _key_line(text: str, loc: tuple) -> int | None:
    """Best-effort line number of a dotted key in TOML text (tomllib keeps no positions)."""
    keys = [str(k) for k in loc if not isinstance(k, int)]
    if not keys:
        return None
    table: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"^\[+\s*([^\]]+?)\s*\]+", line)
        if header:
            table = [part.strip().strip('"') for part in header.group(1).split(".")]
            if table == keys:
                return number
            continue
        m = re.match(r'^("?)([A-Za-z0-9_.\-]+)\1\s*=', line)
        if m:
            full = table + m.group(2).split(".")
            if keys[: len(full)] == full:  # the key itself, or an inline table holding it
                return number
    return None


def _parse_value(raw: str) -> Any:
    """A --set value is read as TOML (numbers, booleans, lists, quoted strings), else taken as a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_override(data: dict, dotted: str, raw_value: str) -> None:
    node = data
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise InputError("--set", f"{'.'.join(parents)} is not a table", field=dotted)
    node[last] = _parse_value(raw_value)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> RunConfig:
    """Read a TOML config (or the demo defaults), apply CLI overrides, validate.

    ``overrides`` maps dotted keys to already-typed values (from named CLI flags); ``sets`` holds raw
    ``key=value`` strings from ``--set``.
    """
    text, source = "", "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise InputError(source, "config file not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(source, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"line (\d+)", str(e))
            raise InputError(source, f"invalid TOML: {e}", line=int(m.group(1)) if m else None) from None
    for item in sets or []:
        if "=" not in item:
            raise InputError("--set", f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        apply_override(data, key.strip(), value.strip())
    for key, value in (overrides or {}).items():
        if value is not None:
            node = data
            *parents, last = key.split(".")
            for k in parents:
                node = node.setdefault(k, {})
            node[last] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        dotted = ".".join(str(k) for k in loc)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] != "extra_forbidden" and "input" in err:
            msg += f" (got {err['input']!r})"
        raise InputError(source, msg, line=_key_line(text, loc) if text else None, field=dotted) from None
