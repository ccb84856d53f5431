"""Parse what the teacher writes. Teachers are messy: numbering styles vary, preambles and markdown appear, and
the last item may be cut by the length limit. Every parser returns what it could read; an empty result is a
counted parse failure for the caller, never an exception.
"""
from __future__ import annotations

import json
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


# --- structured answers (``pipeline.teachers.formats``): JSON first, the parsers above as the fallback ---------------

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*(?:```\s*)?$", re.DOTALL | re.IGNORECASE)
_DECODER = json.JSONDecoder()
_NUMBER_MARK = re.compile(r"^\s*(?:\d{1,3}\s*[.):]|[-*\u2022])\s+")


def _json_text(text: str) -> str | None:
    """The answer with a markdown code fence removed, if it starts like a JSON object; else None."""
    m = _FENCE.match(text)
    body = (m.group(1) if m else text).strip()
    return body if body.startswith("{") else None


def json_object(text: str) -> dict | None:
    """The answer as a JSON object (fenced or not), or None when it is not one."""
    body = _json_text(text)
    if body is None:
        return None
    try:
        value, _ = _DECODER.raw_decode(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def json_string_list(text: str, key: str, finish_reason: str = "stop") -> tuple[list[str], str | None] | None:
    """The strings of ``{"<key>": ["...", ...]}`` and the one the length limit cut (as ``split_numbered_list``),
    also from JSON the limit cut short: every string that closed is an item. None when the answer is not JSON
    of that shape (the caller falls back to the text parsers)."""
    body = _json_text(text)
    if body is None:
        return None
    whole = json_object(body)
    if whole is not None:
        value = whole.get(key)
        if not isinstance(value, list):
            return None
        return _clean_items([v for v in value if isinstance(v, str)]), None
    m = re.match(r'\{\s*"' + re.escape(key) + r'"\s*:\s*\[', body)
    if m is None:
        return None
    items: list[str] = []
    pos, cut = m.end(), None
    while True:
        pos = len(body) - len(body[pos:].lstrip(" \t\r\n,"))
        if pos >= len(body) or body[pos] != '"':
            break
        try:
            item, pos = _DECODER.raw_decode(body, pos)
        except ValueError:  # the string the limit cut: everything after its opening quote
            cut = body[pos + 1:] if finish_reason == "length" else None
            break
        items.append(item)
    cleaned = _clean_items(items)
    return cleaned, (_clean_items([cut])[0] if cut and _clean_items([cut]) else None)


def _clean_items(items: list[str]) -> list[str]:
    out = []
    for item in items:
        item = _clean(_NUMBER_MARK.sub("", item, count=1))
        if item:
            out.append(item)
    return out


def json_choice(text: str, key: str, choices: list[str]) -> str | None:
    """The value of ``{"<key>": "<one of choices>"}`` (case-insensitive), or None."""
    obj = json_object(text)
    value = obj.get(key) if obj is not None else None
    if not isinstance(value, str):
        return None
    for choice in choices:
        if value.strip().lower() == choice.lower():
            return choice
    return None
