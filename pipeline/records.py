"""The records that flow between stages, the rejection that wraps a record with its reason, and the benchmark
items records are checked against."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def user_prompt(instruction: str, input_: str) -> str:
    """The user's message of an instruction and its input (the input after a blank line, when there is one)."""
    return f"{instruction}\n\n{input_}" if input_.strip() else instruction


@dataclass
class Record:
    """One instruction with one instance: a row of the final dataset, with its provenance."""

    id: str
    instruction: str
    input: str = ""
    output: str = ""
    is_classification: bool | None = None
    source: str = "seed"  # seed | bootstrap | evolve | template
    task_id: str = ""  # records generated for one instruction share a task id
    nearest_id: str | None = None
    nearest_instruction: str | None = None
    rouge_l: float | None = None
    teacher_model: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Lineage of an evolved record (Evol-Instruct): the record it was rewritten from, the input task at the root of
    # its chain, the round that made it and the operation used. None for records of other stages.
    parent_id: str | None = None
    root_id: str | None = None
    round: int | None = None
    operation: str | None = None
    # Judge scores (stage "judge"): {"quality": 0-5, "complexity": 1-5}, None where the answer could not be read.
    scores: dict[str, float | None] = field(default_factory=dict)
    # A conversation (stage "conversation"): the messages that follow the first exchange (instruction + input ->
    # output), alternating {"role": "user"} and {"role": "assistant"}. Empty for a single-turn record.
    turns: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (shallow: ``meta`` is copied one level, which is all it holds before
        it is written; ``dataclasses.asdict`` deep-copies and was a tenth of the engine thread's CPU). ``turns``
        only when there are any, so single-turn rows read as they always did."""
        d = {name: getattr(self, name) for name in _FIELDS}
        d["meta"] = dict(self.meta)
        d["scores"] = dict(self.scores)
        if self.turns:
            d["turns"] = [dict(m) for m in self.turns]
        else:
            del d["turns"]
        return d

    def messages(self) -> list[dict[str, str]]:
        """The record as chat messages: the first exchange, then its further turns."""
        return [{"role": "user", "content": user_prompt(self.instruction, self.input)}, {"role": "assistant", "content": self.output},
                *(dict(m) for m in self.turns)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        rec = cls(**known)
        extra = {k: v for k, v in d.items() if k not in cls.__dataclass_fields__ and k not in ("reason", "details")}
        rec.meta = {**rec.meta, **extra}
        return rec


_FIELDS = tuple(f.name for f in fields(Record))


@dataclass
class Rejection:
    record: Record
    reason: str  # a short stable code, e.g. "rouge_duplicate", "too_short"
    details: dict[str, Any] = field(default_factory=dict)
    stage: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.record.to_dict(), "reason": self.reason, "details": self.details, "stage": self.stage}


@dataclass(frozen=True)
class BenchmarkItem:
    """One item of an evaluation benchmark (decontamination): the benchmark's name, the item's id and its text."""

    benchmark: str
    item_id: str
    text: str
