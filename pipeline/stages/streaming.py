"""How the teacher stages stream: every record's coroutine starts at once (the engine's concurrency limit and
priorities pace the requests) and the results are handed to the runner in input order, a batch at a time, so a
slow answer holds back the writing, never the teacher."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def emit_in_order(aws: list[Awaitable[T]], emit: Callable[[list[T]], None], batch: int = 64) -> None:
    """Run ``aws`` concurrently; ``emit`` gets their results in input order, ``batch`` at a time. If one fails or
    the caller is cancelled, the others are cancelled and awaited before the error goes on."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        for start in range(0, len(tasks), batch):
            emit(list(await asyncio.gather(*tasks[start:start + batch])))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
