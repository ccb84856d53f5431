"""Rows of a table file (JSONL, CSV or parquet, by its suffix) as ``(line or row number, dict)``: the one reader of
the benchmark files (``io.benchmarks``) and the labelled datasets (``io.labelled``). A bad file is an InputError
naming the file and the line."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from .files import parse_jsonl

SUFFIXES = (".jsonl", ".csv", ".parquet")


def table_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, row) for every row of a JSONL, CSV or parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow's errors for a file that is not parquet vary by version
            raise InputError(str(path), f"not a readable parquet file ({type(e).__name__}: {e})") from None
        return ((k, row) for k, row in enumerate(table.to_pylist(), start=1))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(str(path), f"not valid UTF-8 (byte {e.start})") from None
    if suffix == ".jsonl":
        return parse_jsonl(path, text.splitlines())
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise InputError(str(path), "the CSV file has no header row", line=1)
    # DictReader counts physical lines: a quoted field may span several, so the row's last line is reported.
    return ((reader.line_num, row) for row in reader)
