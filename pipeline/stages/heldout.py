"""Held-out human tasks: which seed tasks no generation step may see, so evaluation measures generalisation to
tasks that are new to the tuned model, with references written by people.

The split is by task id (every instance of a task on one side), stratified by classification (the held-out share
of classification tasks matches the whole), seeded, and independent of file order: tasks are sorted by id before
the seeded shuffle. It is computed once per run and stored (``<run>/split.json``); a resumed run reads it back.
"""
from __future__ import annotations

import random
from typing import Iterable

from ..records import Record


def split_tasks(seeds: Iterable[Record], share: float, seed: int) -> set[str]:
    """The task ids to hold out: ``round(share * n)`` of each of the classification and other tasks (at least
    one task of a group when the share is above zero and the group has two or more; never a whole group)."""
    groups: dict[bool, set[str]] = {True: set(), False: set()}
    for r in seeds:
        groups[bool(r.is_classification)].add(r.task_id or r.id)
    held: set[str] = set()
    if share <= 0:
        return held
    rng = random.Random(seed)
    for cls in (False, True):
        ids = sorted(groups[cls])
        if len(ids) < 2:
            continue
        k = min(max(1, round(share * len(ids))), len(ids) - 1)
        rng.shuffle(ids)
        held.update(ids[:k])
    return held


def partition(records: Iterable[Record], held: set[str]) -> tuple[list[Record], list[Record]]:
    """(records of tasks not held out, records of held-out tasks), each in input order."""
    train, out = [], []
    for r in records:
        (out if (r.task_id or r.id) in held else train).append(r)
    return train, out


def lineage(r: Record) -> str:
    """The task at the root of a record's family: an evolved record's input task, else its own task."""
    return r.root_id or r.task_id or r.id
