import json

import pytest

from pipeline.errors import InputError
from pipeline.io.readers import load_seed_file
from tests.conftest import OUR_SEEDS, run_cli


def test_our_seed_tasks_meet_the_brief():
    records = load_seed_file(OUR_SEEDS)
    tasks = {}
    for r in records:
        tasks.setdefault(r.task_id, r)
    assert len(tasks) >= 150
    assert sum(1 for t in tasks.values() if t.is_classification) >= 25
    assert all(r.instruction and r.output for r in records)


def test_published_seed_file_reads_unchanged(published_seeds):
    records = load_seed_file(published_seeds)
    assert len({r.task_id for r in records}) == 175
    assert sum(1 for r in records if r.is_classification) == 26
    assert sum(1 for r in records if not r.input) == 50


def test_plain_jsonl_and_csv(tmp_path):
    j = tmp_path / "s.jsonl"
    j.write_text(json.dumps({"instruction": "Name a prime number above ten.", "input": "", "output": "11"}) + "\n"
                 + json.dumps({"instruction": "Reverse the word.", "input": "stop", "output": "pots"}) + "\n")
    recs = load_seed_file(j)
    assert [r.output for r in recs] == ["11", "pots"] and recs[1].input == "stop"
    c = tmp_path / "s.csv"
    c.write_text('instruction,input,output\n"Add the numbers, please.","2, 3",5\n')
    [rec] = load_seed_file(c)
    assert rec.instruction == "Add the numbers, please." and rec.input == "2, 3" and rec.output == "5"


@pytest.mark.parametrize("content,line,field", [
    (b'{"instruction": "A task here.", "output": "x"}\n{"instruction": \n', 2, None),
    (b'{"instruction": "A task here.", "output": "x"}\n{"output": "y"}\n', 2, "instruction"),
    (b'{"instruction": 5, "output": "x"}\n', 1, "instruction"),
    (b'{"id": "a", "instruction": "One task.", "output": "x"}\n{"id": "a", "instruction": "Two.", "output": "y"}\n', 2, "id"),
    (b'{"instruction": "A task.", "instances": [{"input": "", "output": 3}]}\n', 1, "instances[0].output"),
    (b'{"instruction": "A task.", "output": "ok"}\n\xff\xfe\n', 2, None),
    (b'\xef\xbb\xbf{"instruction": "A task.", "output": "ok"}\n', 1, None),
    (b"[1, 2]\n", 1, None),
])
def test_bad_seed_lines_name_file_line_field(tmp_path, content, line, field):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(InputError) as e:
        load_seed_file(p)
    assert e.value.path == str(p) and e.value.line == line and e.value.field == field


def test_empty_file_and_bad_csv_header(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    with pytest.raises(InputError, match="empty"):
        load_seed_file(p)
    c = tmp_path / "s.csv"
    c.write_text("prompt,answer\nx,y\n")
    with pytest.raises(InputError) as e:
        load_seed_file(c)
    assert e.value.line == 1 and e.value.field == "instruction"


def test_cli_bad_seed_file_exit_2_no_traceback(tmp_path):
    p = tmp_path / "seeds.jsonl"
    p.write_text('{"instruction": "Fine task here.", "output": "ok"}\n{"instruction": "No output here."}\n')
    out = tmp_path / "run"
    r = run_cli("run", "--set", f'seed_files=["{p}"]', "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"error: {p}:3: output: missing field".replace(":3:", ":2:")
    assert not out.exists()
