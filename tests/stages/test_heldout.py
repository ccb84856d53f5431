"""Held-out splits: by task and by lineage, never by row (property tests)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.records import Record
from pipeline.stages import heldout
from pipeline.train.tune import Example, split_examples

# A task: (task id number, instances, is_classification); records of one task share its id.
tasks_st = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 4), st.booleans()), min_size=1, max_size=40)


def _records(tasks) -> list[Record]:
    out, cls = [], {}
    for tid, instances, is_cls in tasks:
        cls.setdefault(tid, is_cls)  # one task id, one kind
        for k in range(instances):
            out.append(Record(id=f"t{tid}-{k}-{len(out)}", instruction=f"task {tid}", output="x",
                              task_id=f"t{tid}", is_classification=cls[tid]))
    return out


@settings(max_examples=200, deadline=None)
@given(tasks_st, st.floats(0.0, 0.9), st.integers(0, 5))
def test_no_task_on_both_sides(tasks, share, seed):
    recs = _records(tasks)
    held = heldout.split_tasks(recs, share, seed)
    train, out = heldout.partition(recs, held)
    assert not {r.task_id for r in train} & {r.task_id for r in out}
    assert len(train) + len(out) == len(recs)
    assert {r.task_id for r in out} == held
    for cls in (True, False):  # never a whole group held out, and some of every group of 2+ when share > 0
        ids = {r.task_id for r in recs if bool(r.is_classification) == cls}
        if len(ids) >= 2:
            assert ids - held
            if share > 0:
                assert ids & held
    assert heldout.split_tasks(list(reversed(recs)), share, seed) == held  # file order does not matter


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=1, max_size=60), st.floats(0.0, 0.9), st.integers(0, 5))
def test_tune_split_keeps_each_lineage_on_one_side(groups, fraction, seed):
    examples = [Example(f"d.jsonl:{i}", [{"role": "user", "content": "q"}], [{"role": "assistant", "content": "a"}],
                        group=f"root{g}") for i, g in enumerate(groups)]
    train, held = split_examples(examples, fraction, seed)
    assert not {e.group for e in train} & {e.group for e in held}
    assert train and len(train) + len(held) == len(examples)
    assert [e.id for e in train] == [e.id for e in examples if e.group in {t.group for t in train}]  # file order


def test_evolved_records_follow_their_root():
    parent = Record(id="s1", instruction="a", task_id="s1")
    child = Record(id="s1-r1", instruction="b", task_id="s1-r1", root_id="s1", source="evolve")
    assert heldout.lineage(parent) == heldout.lineage(child) == "s1"
