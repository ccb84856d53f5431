"""Small named quality filters. Each returns ``None`` to keep, or a reason code (plus details) to reject.

Instruction filters look at one instruction; instance filters at one (input, output) pair; task filters at all
instances generated for one instruction, as Self-Instruct and Alpaca define them.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable

from ..config import FilterConfig
from ..records import Record

Verdict = tuple[str, dict] | None  # None = keep; (reason, details) = reject

_WORD = re.compile(r"\S+")
_REFUSAL = re.compile(
    r"\b(as an ai( language model)?|i('m| am) (sorry|unable|not able)|i cannot (help|assist|provide)|"
    r"i can't (help|assist|provide)|my apologies|i do not have (access|the ability))\b",
    re.IGNORECASE,
)


def _blacklist_pattern(words: list[str]) -> re.Pattern | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b({alternatives})\b", re.IGNORECASE)


class InstructionFilters:
    """The instruction rules of Self-Instruct (with Alpaca's extra blacklist words), in a fixed order."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self._blacklist = _blacklist_pattern(cfg.blacklist)
        self.rules: list[tuple[str, Callable[[str], Verdict]]] = [
            ("empty_instruction", self.empty),
            ("word_count", self.word_count),
            ("blacklisted_word", self.blacklisted),
            ("write_a_program", self.write_a_program),
            ("leading_punctuation", self.leading_punctuation),
            ("leading_non_ascii", self.leading_non_ascii),
        ]

    def check(self, instruction: str) -> Verdict:
        for _, rule in self.rules:
            verdict = rule(instruction)
            if verdict is not None:
                return verdict
        return None

    def empty(self, text: str) -> Verdict:
        return ("empty_instruction", {}) if not text.strip() else None

    def word_count(self, text: str) -> Verdict:
        n = len(_WORD.findall(text))
        if n < self.cfg.min_words:
            return "too_short", {"words": n, "min_words": self.cfg.min_words}
        if n > self.cfg.max_words:
            return "too_long", {"words": n, "max_words": self.cfg.max_words}
        return None

    def blacklisted(self, text: str) -> Verdict:
        m = self._blacklist.search(text) if self._blacklist else None
        return ("blacklisted_word", {"word": m.group(0).lower()}) if m else None

    def write_a_program(self, text: str) -> Verdict:
        return ("write_a_program", {}) if text.strip().lower().startswith("write a program") else None

    def leading_punctuation(self, text: str) -> Verdict:
        s = text.strip()
        return ("leading_punctuation", {"char": s[0]}) if s and s[0] in string.punctuation else None

    def leading_non_ascii(self, text: str) -> Verdict:
        s = text.strip()
        if self.cfg.reject_non_ascii_start and s and not s[0].isascii():
            return "leading_non_ascii", {"char": s[0]}
        return None


def check_instance(rec: Record) -> Verdict:
    """Rules for one generated (input, output) pair."""
    inp, out = rec.input.strip(), rec.output.strip()
    if not out:
        return "empty_output", {}
    if inp and inp == out:
        return "input_equals_output", {}
    if inp.endswith(":") or out.endswith(":"):
        return "ends_with_colon", {"field": "input" if inp.endswith(":") else "output"}
    m = _REFUSAL.search(out)
    if m:
        return "refusal", {"phrase": m.group(0)}
    return None


def check_task_instances(instances: list[Record], max_instances: int) -> tuple[list[Record], list[tuple[Record, str, dict]]]:
    """Rules across the instances of one task: conflicting outputs, exact duplicates, at most N instances."""
    outputs_by_input: dict[str, set[str]] = {}
    for r in instances:
        outputs_by_input.setdefault(r.input.strip(), set()).add(r.output.strip())
    kept: list[Record] = []
    rejected: list[tuple[Record, str, dict]] = []
    seen: Counter = Counter()
    for r in instances:
        key = (r.input.strip(), r.output.strip())
        if len(outputs_by_input[key[0]]) > 1:
            rejected.append((r, "conflicting_outputs", {"input": key[0][:200]}))
        elif seen[key]:
            rejected.append((r, "duplicate_instance", {}))
        elif len(kept) >= max_instances:
            rejected.append((r, "too_many_instances", {"max_instances": max_instances}))
        else:
            kept.append(r)
        seen[key] += 1
    return kept, rejected
