"""The file mechanisms: the resumable append-only writer, whole files replaced atomically, the JSONL reader."""
import json

import pytest

from pipeline.errors import InputError
from pipeline.io.files import (JsonlWriter, count_lines, drop_torn_tail, read_jsonl, write_jsonl_atomic,
                               write_text_atomic)


def test_writer_drops_torn_line_and_skips_rows_already_written(tmp_path):
    p = tmp_path / "kept.jsonl"
    p.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "instr')
    assert drop_torn_tail(p) == 2
    assert p.read_text() == '{"id": 1}\n{"id": 2}\n'
    with JsonlWriter(p) as w:  # a replay produces rows 1..4 again
        w.write_many([{"id": 1}, {"id": 2}])
        w.write_many([{"id": 3}, {"id": 4}])
    assert [json.loads(line)["id"] for line in p.read_text().splitlines()] == [1, 2, 3, 4]


def test_atomic_writes_replace_whole_or_not_at_all(tmp_path):
    p = tmp_path / "out" / "kept.jsonl"
    assert write_jsonl_atomic(p, [{"id": 1}, {"id": "é"}]) == 2
    assert p.read_text(encoding="utf-8") == '{"id": 1}\n{"id": "é"}\n' and oct(p.stat().st_mode)[-3:] == "644"

    def rows():
        yield {"id": 3}
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(p, rows())
    assert [r["id"] for r in read_jsonl(p)] == [1, "é"]  # the old file, whole
    assert sorted(x.name for x in p.parent.iterdir()) == ["kept.jsonl"]  # no temporary left behind
    write_text_atomic(p, "")
    assert p.read_text() == ""


def test_the_jsonl_reader(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}')
    assert [r["a"] for r in read_jsonl(p)] == [1, 2, 3]
    assert [r["a"] for r in read_jsonl(p, complete_only=True)] == [1, 2]  # a last line without its newline
    assert count_lines(p) == 2
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')  # torn by a kill
    assert [r["a"] for r in read_jsonl(p, complete_only=True)] == [1, 2]
    with pytest.raises(InputError, match=r"rows.jsonl:3: invalid JSON"):
        list(read_jsonl(p))
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"rows.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(p))
    p.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(InputError, match=r"rows.jsonl:2: invalid JSON"):
        list(read_jsonl(p))
    p.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(InputError, match="not valid UTF-8"):
        list(read_jsonl(p))
