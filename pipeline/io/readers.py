"""Read task files: Self-Instruct JSONL (``instances`` list), plain JSONL or CSV of instruction/input/output (the
seed readers), and for ``pipeline filter`` and ``pipeline evolve`` also Alpaca JSONL or a JSON array of Alpaca
rows and the pipeline's own record JSONL (``read_records``).

Every problem is an ``InputError`` naming the file, the line and the field.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ..records import Record
from .files import parse_jsonl

MAX_LINE_BYTES = 1 << 20  # a line over 1 MiB is not a seed task
_RECORD_FIELDS = set(Record.__dataclass_fields__)


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


def _jsonl_objects(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of the JSONL file ``path``, whose text is ``text``."""
    return parse_jsonl(path, text.splitlines(), max_line_chars=MAX_LINE_BYTES)


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
        numbered = list(_jsonl_objects(path, _read_text(path)))
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


def _row_record(obj: dict, path: Path, line: int | None, index: int, prefix: str = "") -> list[Record]:
    """One JSON object as records: Self-Instruct (instances list), pipeline record (task_id) or Alpaca row."""
    if "instances" in obj:  # Self-Instruct seed schema: the seed reader's rules
        return _records_from_object(obj, path, line, index)
    rid = obj.get("id", f"{path.stem}_{index}")
    if not isinstance(rid, str) or not rid:
        raise InputError(str(path), "expected a non-empty string", line=line, field=prefix + "id")
    instruction = _str_field(obj, "instruction", path, line, prefix=prefix)
    inp = _str_field(obj, "input", path, line, required=False, prefix=prefix)
    out = _str_field(obj, "output", path, line, prefix=prefix)
    if inp.strip() == "<noinput>":  # Alpaca's marker for an empty input
        inp = ""
    task_id = obj.get("task_id") or rid
    if not isinstance(task_id, str):
        raise InputError(str(path), "expected a string", line=line, field=prefix + "task_id")
    is_cls = obj.get("is_classification")
    if is_cls is not None and not isinstance(is_cls, bool):
        raise InputError(str(path), "expected true or false", line=line, field=prefix + "is_classification")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    known: dict[str, Any] = {}
    for key in ("source", "teacher_model"):  # earlier nearest/rouge fields are recomputed, not carried
        if isinstance(obj.get(key), str):
            known[key] = obj[key]
    extra = {k: v for k, v in obj.items() if k not in _RECORD_FIELDS and k not in ("reason", "details", "stage")}
    return [Record(id=rid, instruction=instruction, input=inp, output=out, is_classification=is_cls,
                   task_id=task_id, meta={**meta, **extra}, **{"source": "input", **known})]


def read_records(path: str | Path) -> list[Record]:
    """Records of any task file: the seed formats, Alpaca JSONL or a JSON array of Alpaca rows, or the
    pipeline's own records (with ``task_id``, e.g. a run's ``bootstrap/kept.jsonl``). Duplicate ids are an error."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return load_seed_file(path)
    text = _read_text(path)
    records: list[Record] = []
    first_line: dict[str, int | None] = {}

    def add(recs: list[Record], line: int | None) -> None:
        for rec in recs:
            if rec.id in first_line:
                where = f" (first on line {first_line[rec.id]})" if first_line[rec.id] else ""
                raise InputError(str(path), f"duplicate id {rec.id!r}{where}", line=line, field="id")
            first_line[rec.id] = line
            records.append(rec)

    if text.lstrip().startswith("["):  # a JSON array of rows (Alpaca's alpaca_data.json)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(str(path), f"invalid JSON ({e.msg} at column {e.colno})", line=e.lineno) from None
        for k, obj in enumerate(rows):
            if not isinstance(obj, dict):
                raise InputError(str(path), f"expected a JSON object, got {type(obj).__name__}", field=f"[{k}]")
            add(_row_record(obj, path, None, k, prefix=f"[{k}]."), None)
    else:
        for k, (line, obj) in enumerate(_jsonl_objects(path, text)):
            add(_row_record(obj, path, line, k), line)
    if not records:
        raise InputError(str(path), "no records in file")
    return records
