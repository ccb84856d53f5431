"""Structured outputs: the few answer shapes the stages ask a teacher for, each defined once, as a JSON schema (for
OpenAI, vLLM and any server that takes ``response_format``) and as a GBNF grammar (for llama.cpp, in-process or a
server).

The two do not describe the same text. The schema is JSON (``{"instructions": [...]}``), what strict structured
outputs need. The grammar is the shape the prompt already asks for (a numbered list, a bare Yes or No, labels
separated by commas): measured on the embedded 135M model, a JSON grammar pulls it away from what it knows how to
write (chatty non-tasks instead of tasks), while a grammar for its own list format only removes what the parser
could not read (preambles, missing numbers, trailing chatter, more items than asked). ``bench/structured_bench.py``
measures both.

A request may carry one (``ChatRequest.format``); each backend turns it into what its server understands (see
``TeacherConfig.structured``). Whatever comes back is parsed JSON-first and then by the tolerant text parsers
(``pipeline.stages.parsing``), so a backend that ignores the format, or an answer the length limit cut, still
yields what it can.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class OutputFormat:
    """One answer shape. ``schema``: a JSON schema whose root is an object (OpenAI's strict mode asks for that);
    ``gbnf``: a llama.cpp grammar for the prompt's own text shape; ``min_tokens``: the least ``max_tokens`` a
    request with this format is sent with (the JSON wrapper costs tokens: ``{"answer": "Yes"}`` does not fit in the
    4 tokens a bare Yes/No gets)."""

    name: str
    schema: dict[str, Any] = field(hash=False, compare=False)
    gbnf: str = field(compare=False)
    min_tokens: int = 1

    def key(self) -> str:
        """What the request cache key includes: the name and a hash of the schema and the grammar."""
        blob = json.dumps([self.name, self.schema, self.gbnf, self.min_tokens], sort_keys=True)
        return f"{self.name}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def response_format(self) -> dict[str, Any]:
        """OpenAI's ``response_format`` for this shape (also accepted by vLLM's and llama.cpp's native servers)."""
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema, "strict": True}}


def _object(key: str, value_schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: value_schema}, "required": [key], "additionalProperties": False}


def _choice(name: str, key: str, choices: list[str]) -> OutputFormat:
    """One of a few words: JSON ``{"<key>": "<choice>"}``; grammar: the bare word."""
    gbnf = "root ::= " + " | ".join(json.dumps(c) for c in choices) + "\n"
    return OutputFormat(name, _object(key, {"type": "string", "enum": list(choices)}), gbnf, min_tokens=24)


def _numbered_list_gbnf(n: int) -> str:
    """Lines "1. <item>" to at most "<n>. <item>", numbered in order, nothing before or after; an item starts with
    a capital letter and is one line. (Unbounded: a bound such as {0,299} makes llama.cpp sample a third slower,
    and max_tokens ends a looping line anyway.)"""
    rules = [f'root ::= "1. " item{" more2" if n > 1 else ""} "\\n"?']
    for k in range(2, n + 1):
        rules.append(f'more{k} ::= ("\\n" "{k}. " item{f" more{k + 1}" if k < n else ""})?')
    rules.append("item ::= [A-Z] [^\\x00-\\x1f]*")
    return "\n".join(rules) + "\n"


@lru_cache(maxsize=None)
def instruction_list(n: int) -> OutputFormat:
    """Up to ``n`` new task instructions (Self-Instruct generation): JSON ``{"instructions": ["...", ...]}``;
    grammar: the numbered list the prompt asks for."""
    schema = _object("instructions", {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": n})
    return OutputFormat(f"instructions_{n}", schema, _numbered_list_gbnf(n), min_tokens=32)


YES_NO = _choice("yes_no", "answer", ["Yes", "No"])  # is the task a classification task?
EQUAL = _choice("equal_verdict", "verdict", ["Equal", "Not Equal"])  # Evol-Instruct elimination
PAIRWISE = _choice("pairwise_verdict", "verdict", ["A", "B", "tie"])  # the eval judge
# Class labels of a classification task: JSON {"labels": [...]}; grammar: 2 to 10 labels of 1 to 4 words,
# separated by commas.
LABELS = OutputFormat(
    "labels",
    _object("labels", {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 10}),
    'root ::= label (", " label){1,9}\n'
    'label ::= word (" " word){0,3}\n'  # a label has at most 4 words (parse_labels drops longer ones)
    'word ::= [^ ,\\x00-\\x1f]+\n',
    min_tokens=48)


def max_tokens_for(max_tokens: int, fmt: OutputFormat | None) -> int:
    """The token limit a request is sent with: the decoding's, raised to the format's floor when it has one."""
    return max(max_tokens, fmt.min_tokens) if fmt is not None else max_tokens


@lru_cache(maxsize=None)
def judge_score(low: int, high: int) -> OutputFormat:
    """A judge's score on a ``low``-``high`` scale and a one-sentence reason (stage "judge"): JSON
    ``{"score": 4, "reason": "..."}``; grammar: the two lines the prompt asks for, ``Score: 4`` and ``Reason: ...``."""
    schema = {"type": "object",
              "properties": {"score": {"type": "integer", "minimum": low, "maximum": high},
                             "reason": {"type": "string"}},
              "required": ["score", "reason"], "additionalProperties": False}
    gbnf = (f'root ::= "Score: " [{low}-{high}] "\\n" "Reason: " [^\\n\\x00-\\x1f] [^\\n\\x00-\\x1f]*\n')
    return OutputFormat(f"judge_score_{low}_{high}", schema, gbnf, min_tokens=48)
