"""Read seed tasks: Self-Instruct JSONL (``instances`` list), plain JSONL or CSV of instruction/input/output.

Every problem is an ``InputError`` naming the file, the line and the field.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError
from .records import Record

MAX_LINE_BYTES = 1 << 20  # a line over 1 MiB is not a seed task


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(str(path), "file not found")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InputError(str(path), "starts with a UTF-8 byte-order mark (BOM); save it as plain UTF-8", line=1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(str(path), f"not valid UTF-8 (byte 0x{raw[e.start]:02x})", line=line) from None
    if not text.strip():
        raise InputError(str(path), "file is empty")
    return text


def _str_field(obj: dict, key: str, path: Path, line: int, required: bool = True, prefix: str = "") -> str:
    if key not in obj:
        if required:
            raise InputError(str(path), "missing field", line=line, field=prefix + key)
        return ""
    value = obj[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InputError(str(path), f"expected a string, got {type(value).__name__}", line=line, field=prefix + key)
    return value


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for every non-blank line of a JSONL file."""
    text = _read_text(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            raise InputError(str(path), f"line is longer than {MAX_LINE_BYTES} characters", line=number)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(str(path), f"invalid JSON ({e.msg} at column {e.colno})", line=number) from None
        if not isinstance(obj, dict):
            raise InputError(str(path), f"expected a JSON object, got {type(obj).__name__}", line=number)
        yield number, obj


def _records_from_object(obj: dict, path: Path, line: int, index: int) -> list[Record]:
    task_id = obj.get("id", f"{path.stem}_{index}")
    if not isinstance(task_id, str) or not task_id:
        raise InputError(str(path), "expected a non-empty string", line=line, field="id")
    instruction = _str_field(obj, "instruction", path, line)
    if not instruction.strip():
        raise InputError(str(path), "instruction is empty", line=line, field="instruction")
    is_cls = obj.get("is_classification")
    if is_cls is not None and not isinstance(is_cls, bool):
        raise InputError(str(path), "expected true or false", line=line, field="is_classification")
    if "instances" in obj:  # Self-Instruct schema
        instances = obj["instances"]
        if not isinstance(instances, list) or not instances:
            raise InputError(str(path), "expected a non-empty list", line=line, field="instances")
        pairs = []
        for k, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise InputError(str(path), "expected an object", line=line, field=f"instances[{k}]")
            pairs.append((_str_field(inst, "input", path, line, required=False, prefix=f"instances[{k}]."),
                          _str_field(inst, "output", path, line, prefix=f"instances[{k}].")))
    else:  # plain instruction / input / output
        pairs = [(_str_field(obj, "input", path, line, required=False), _str_field(obj, "output", path, line))]
    return [
        Record(id=task_id if len(pairs) == 1 else f"{task_id}.{k}", task_id=task_id, instruction=instruction.strip(),
               input=inp, output=out, is_classification=is_cls, source="seed")
        for k, (inp, out) in enumerate(pairs)
    ]


def _load_csv(path: Path) -> list[dict]:
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [f for f in ("instruction", "output") if f not in header]
    if missing:
        raise InputError(str(path), f"CSV header must have instruction, input, output; got {','.join(header)}",
                         line=1, field=missing[0])
    rows = []
    for row in reader:
        if None in row:
            raise InputError(str(path), "row has more cells than the header", line=reader.line_num)
        rows.append((reader.line_num, {k: v for k, v in row.items() if k in ("id", "instruction", "input", "output")}))
    return rows


def load_seed_file(path: str | Path) -> list[Record]:
    path = Path(path)
    if path.suffix.lower() == ".csv":
        numbered = _load_csv(path)
    else:
        numbered = list(iter_jsonl(path))
    records: list[Record] = []
    seen: dict[str, int] = {}
    for index, (line, obj) in enumerate(numbered):
        for rec in _records_from_object(obj, path, line, index):
            if rec.id in seen:
                raise InputError(str(path), f"duplicate id {rec.id!r} (first on line {seen[rec.id]})", line=line,
                                 field="id")
            seen[rec.id] = line
            records.append(rec)
    if not records:
        raise InputError(str(path), "no seed tasks in file")
    return records


def load_seeds(paths: list[str | Path]) -> list[Record]:
    records: list[Record] = []
    for p in paths:
        records.extend(load_seed_file(p))
    return records
