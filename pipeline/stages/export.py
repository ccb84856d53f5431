"""Export: the kept records as the files training tools read as they are.

``train.jsonl`` is Alpaca format (instruction, input, output), read by ``datasets.load_dataset("json")``,
LLaMA-Factory (``formatting: alpaca``) and axolotl (``type: alpaca``). ``messages.jsonl`` holds chat messages,
read by trl's SFTTrainer and by LLaMA-Factory/axolotl in their sharegpt/chat_template formats.
"""
from __future__ import annotations

from typing import Any

from ..records import Record


def user_prompt(instruction: str, input_: str) -> str:
    return f"{instruction}\n\n{input_}" if input_.strip() else instruction


def to_alpaca(rec: Record) -> dict[str, Any]:
    return {"instruction": rec.instruction, "input": rec.input, "output": rec.output}


def to_messages(rec: Record) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user_prompt(rec.instruction, rec.input)},
                         {"role": "assistant", "content": rec.output}]}
