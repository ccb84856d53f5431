"""Export: the kept records as the files training tools read as they are.

``train.jsonl`` is Alpaca format (instruction, input, output), read by ``datasets.load_dataset("json")``,
LLaMA-Factory (``formatting: alpaca``) and axolotl (``type: alpaca``); a conversation's row holds its last
exchange as instruction / output and the earlier ones as ``history`` ([[user, assistant], ...]), LLaMA-Factory's
multi-turn Alpaca form. ``messages.jsonl`` holds chat messages (every turn), read by trl's SFTTrainer and by
LLaMA-Factory/axolotl in their sharegpt/chat_template formats. ``preferences.jsonl`` holds preference pairs in
the conversational prompt / chosen / rejected form trl's DPOTrainer reads.
"""
from __future__ import annotations

from typing import Any

from ..records import Record, user_prompt

__all__ = ["user_prompt", "to_alpaca", "to_messages", "to_preference"]


def to_alpaca(rec: Record) -> dict[str, Any]:
    if not rec.turns:
        return {"instruction": rec.instruction, "input": rec.input, "output": rec.output}
    msgs = rec.messages()
    pairs = [[msgs[i]["content"], msgs[i + 1]["content"]] for i in range(0, len(msgs) - 1, 2)]
    return {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1], "history": pairs[:-1]}


def to_messages(rec: Record) -> dict[str, Any]:
    return {"messages": rec.messages()}


def to_preference(pair: dict[str, Any]) -> dict[str, Any]:
    """A preferences stage row as trl's DPO trainer reads it (plus its id, lineage and the judge's margin)."""
    return {"prompt": [{"role": "user", "content": pair["prompt"]}],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}],
            "id": pair["id"], "lineage": pair.get("lineage", ""), "margin": pair["margin"]}
