"""Small named quality filters. Each returns ``None`` to keep, or a reason code (plus details) to reject.

Instruction filters look at one instruction; instance filters at one (input, output) pair; task filters at all
instances generated for one instruction, as Self-Instruct and Alpaca define them; ``ExactDuplicates`` across a
whole file.

Reason codes (stable, used in rejected.jsonl and stats):
  instruction: empty_instruction, too_short, too_long, blacklisted_word, write_a_program, leading_punctuation,
               leading_non_ascii
  instance:    empty_output, input_equals_output, ends_with_colon, refusal, ai_boilerplate, repeated_ngrams
  task:        conflicting_outputs, duplicate_instance, too_many_instances
  file:        exact_duplicate

One set of rules serves every stage: the bootstrap stage checks each new instance with ``check_instance(rec, cfg)``
and the filter chain re-checks everything with the same call, so whatever bootstrap keeps, the filter stage keeps.
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
# Characters of the scripts written without spaces (as in rouge.py's Unicode tokenizer): each counts as a word
# when FilterConfig.unicode_tokens is on.
_NO_SPACE_CHAR = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
                            "\uf900-\ufaff\U00020000-\U0002fa1f]")
_APOS = "['\u2019]"

# Refusals ...
_REFUSAL_PHRASES = re.compile(
    rf"\b(i{_APOS}m (sorry|afraid|unable|not able)|i am (sorry|afraid|unable|not able)|my apologies|"
    rf"i apologi[sz]e,? but|"
    rf"i (cannot|can{_APOS}t|can not|won{_APOS}t|will not|am not able to|{_APOS}m not able to) "
    rf"(help(?!\s+but\b)|assist|provide|fulfill|fulfil|comply|complete|answer|generate|create|write|do that|"
    rf"perform)|"
    rf"i do(n{_APOS}t| not) have (access|the ability|enough information)|"
    rf"unfortunately,? i (cannot|can{_APOS}t|am unable|{_APOS}m unable))\b",
    re.IGNORECASE,
)
# ... and AI boilerplate (a model talking about itself instead of answering).
_BOILERPLATE_PHRASES = re.compile(
    rf"\b(as an ai( language model| assistant| model| chatbot)?|as a (large )?language model|as a chatbot|"
    rf"as an artificial intelligence|i{_APOS}m (just |only )?an ai|i am (just |only )?an ai|"
    rf"i{_APOS}m a (large )?language model|i am a (large )?language model|"
    rf"i do(n{_APOS}t| not) have personal (opinions|feelings|experiences|beliefs|preferences)|"
    rf"(trained|developed|created) by openai)\b",
    re.IGNORECASE,
)
_NGRAM_WORD = re.compile(r"\w+")


def _blacklist_pattern(words: list[str]) -> re.Pattern | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b({alternatives})\b", re.IGNORECASE)


def count_words(text: str, unicode_tokens: bool = False) -> int:
    """Whitespace-separated words (Self-Instruct's rule). With ``unicode_tokens`` every character of a script
    written without spaces (Chinese, Japanese kana, Thai, ...) counts as one word, other text as before."""
    if not unicode_tokens:
        return len(_WORD.findall(text))
    n_chars = len(_NO_SPACE_CHAR.findall(text))
    if not n_chars:
        return len(_WORD.findall(text))
    return len(_WORD.findall(_NO_SPACE_CHAR.sub(" ", text))) + n_chars


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
        n = count_words(text, self.cfg.unicode_tokens)
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


# --- instance rules: each takes (input, output) stripped, and the config -----------------------------------------
def empty_output(inp: str, out: str, cfg: FilterConfig) -> Verdict:
    return ("empty_output", {}) if not out else None


def input_equals_output(inp: str, out: str, cfg: FilterConfig) -> Verdict:
    return ("input_equals_output", {}) if inp and inp == out else None


def ends_with_colon(inp: str, out: str, cfg: FilterConfig) -> Verdict:
    if inp.endswith(":") or out.endswith(":"):
        return "ends_with_colon", {"field": "input" if inp.endswith(":") else "output"}
    return None


def refusal(inp: str, out: str, cfg: FilterConfig) -> Verdict:
    if not cfg.reject_refusals:
        return None
    m = _REFUSAL_PHRASES.search(out)
    return ("refusal", {"phrase": m.group(0)}) if m else None


def ai_boilerplate(inp: str, out: str, cfg: FilterConfig) -> Verdict:
    if not cfg.reject_refusals:
        return None
    m = _BOILERPLATE_PHRASES.search(out)
    return ("ai_boilerplate", {"phrase": m.group(0)}) if m else None


def repeated_ngrams(inp: str, out: str, cfg: FilterConfig) -> Verdict:
    """Degenerate repetition: the most frequent word n-gram occurs at least ``repeat_ngram_min_count`` times AND
    at least ``repeat_ngram_min_fraction`` of the output's n-grams repeat an earlier one (a zero disables that
    condition; both zero disables the rule)."""
    min_count, min_frac, n = cfg.repeat_ngram_min_count, cfg.repeat_ngram_min_fraction, cfg.repeat_ngram_n
    if not min_count and not min_frac:
        return None
    words = _NGRAM_WORD.findall(out.lower())
    total = len(words) - n + 1
    if total < 2:
        return None
    grams = Counter(tuple(words[i: i + n]) for i in range(total))
    gram, top = grams.most_common(1)[0]
    fraction = (total - len(grams)) / total
    if (not min_count or top >= min_count) and (not min_frac or fraction >= min_frac):
        return "repeated_ngrams", {"ngram": " ".join(gram), "count": top, "repeated_fraction": round(fraction, 3),
                                   "n": n}
    return None


INSTANCE_RULES: list[tuple[str, Callable[[str, str, FilterConfig], Verdict]]] = [
    ("empty_output", empty_output),
    ("input_equals_output", input_equals_output),
    ("ends_with_colon", ends_with_colon),
    ("refusal", refusal),
    ("ai_boilerplate", ai_boilerplate),
    ("repeated_ngrams", repeated_ngrams),
]


def check_instance(rec: Record, cfg: FilterConfig) -> Verdict:
    """The instance rules (``INSTANCE_RULES``, in order) for one generated (input, output) pair."""
    inp, out = rec.input.strip(), rec.output.strip()
    for _, rule in INSTANCE_RULES:
        verdict = rule(inp, out, cfg)
        if verdict is not None:
            return verdict
    return None


def check_task_instances(instances: list[Record], max_instances: int, drop_task_on_conflict: bool = False
                         ) -> tuple[list[Record], list[tuple[Record, str, dict]]]:
    """Rules across the instances of one task: conflicting outputs, exact duplicates, at most N instances.

    One input with different outputs rejects the instances with that input; with ``drop_task_on_conflict``
    (Self-Instruct's rule, used by ``pipeline filter``) it rejects every instance of the task.
    """
    outputs_by_input: dict[str, set[str]] = {}
    for r in instances:
        outputs_by_input.setdefault(r.input.strip(), set()).add(r.output.strip())
    conflicts = [i for i, outs in outputs_by_input.items() if len(outs) > 1]
    kept: list[Record] = []
    rejected: list[tuple[Record, str, dict]] = []
    seen: Counter = Counter()
    for r in instances:
        key = (r.input.strip(), r.output.strip())
        if len(outputs_by_input[key[0]]) > 1:
            rejected.append((r, "conflicting_outputs", {"input": key[0][:200]}))
        elif drop_task_on_conflict and conflicts:
            rejected.append((r, "conflicting_outputs", {"input": conflicts[0][:200], "whole_task": True}))
        elif seen[key]:
            rejected.append((r, "duplicate_instance", {}))
        elif len(kept) >= max_instances:
            rejected.append((r, "too_many_instances", {"max_instances": max_instances}))
        else:
            kept.append(r)
        seen[key] += 1
    return kept, rejected


class ExactDuplicates:
    """Same instruction + input + output (after stripping) as an earlier record: ``check`` remembers each key."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, str, str], str] = {}

    def check(self, rec: Record) -> Verdict:
        key = (rec.instruction.strip(), rec.input.strip(), rec.output.strip())
        first = self._first.get(key)
        if first is not None:
            return "exact_duplicate", {"first_id": first}
        self._first[key] = rec.id
        return None
