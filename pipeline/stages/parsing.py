"""Parse what the teacher writes. Teachers are messy: numbering styles vary, preambles and markdown appear, and
the last item may be cut by the length limit. Every parser returns what it could read; an empty result is a
counted parse failure for the caller, never an exception.
"""
from __future__ import annotations

import re

# "12. x", "12) x", "12 - x", "12: x", "Task 12: x", "**12.** x", "- x", "* x", "• x"
_ITEM = re.compile(
    r"^\s*(?:[*_]{1,2})?(?:(?:task|instruction)\s*)?(?:#\s*)?(\d{1,3})\s*(?:[.):\-]|\s-)(?:[*_]{1,2})?\s+(.*)$"
    r"|^\s*[-*\u2022]\s+(.*)$",
    re.IGNORECASE,
)
_PREFIX = re.compile(r"^(?:\*\*)?(?:task|instruction|new task)\s*(?:\d+)?\s*[:.-]\s*(?:\*\*)?\s*", re.IGNORECASE)


def _unquote(item: str) -> str:
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'`":
        return item[1:-1].strip()
    return item


def _clean(item: str) -> str:
    item = _unquote(item.strip().strip("*_").strip())
    item = _unquote(_PREFIX.sub("", item))
    return re.sub(r"\s+", " ", item)


def split_numbered_list(text: str, finish_reason: str = "stop") -> tuple[list[str], str | None]:
    """Items of a numbered or bulleted list, and the item the length limit cut (None when the response ended by
    itself). Lines before the first item are a preamble and dropped; a line without a marker continues the item
    above it. When the response was cut by the length limit (``finish_reason == "length"``), its last item is
    incomplete: it is not among the items, it is the cut one."""
    items: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _ITEM.match(line)
        if m:
            items.append(m.group(2) if m.group(2) is not None else m.group(3))
        elif items:
            items[-1] += " " + line.strip()
    cut = items.pop() if finish_reason == "length" and items else None
    cleaned = [_clean(i) for i in items]
    return [i for i in cleaned if i], (None if cut is None else _clean(cut))


def parse_numbered_list(text: str, finish_reason: str = "stop") -> list[str]:
    """The complete items of a numbered or bulleted list (``split_numbered_list`` without the cut one)."""
    return split_numbered_list(text, finish_reason)[0]


def parse_yes_no(text: str) -> bool | None:
    m = re.search(r"\b(yes|no)\b", text, re.IGNORECASE)
    return None if m is None else m.group(1).lower() == "yes"
