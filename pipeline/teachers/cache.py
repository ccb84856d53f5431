"""The request cache and the spending budget, which the engine (``engine.py``) puts in front of every backend.

Every completed request is stored in SQLite (``<run>/cache.sqlite``) as it completes, keyed by a hash of backend,
model, messages (the rendered template), decoding parameters and sample key. A resumed run therefore never sends a
request that already succeeded: its stages replay from the start and the cache answers. Because the cache holds
every paid completion of the run, it is also where the budget is counted.

Answers are committed in groups (group commit): one fsync per ``max_pending`` answers or ``max_delay_s`` seconds,
instead of one per answer, which at hundreds of answers a second would stall the engine's loop on the disk. The run
calls ``flush()`` before it writes any record built from cached answers, so the files never hold a record whose
answers a crash could lose; what a kill can lose is at most ``max_delay_s`` of answers not yet used by any written
record, which a resume sends again.
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .base import Completion


class BudgetExhausted(Exception):
    """The run reached a configured budget; it stops cleanly and can be resumed with a larger one."""


@dataclass
class Spent:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    billed_failures: int = 0  # of the requests: tries that failed after the server may have done (and billed) the work


class RequestCache:
    def __init__(self, path: Path, max_pending: int = 256, max_delay_s: float = 0.25):
        path.parent.mkdir(parents=True, exist_ok=True)
        # Transactions by hand (isolation_level=None): put() opens one, flush() commits it. The engine's thread
        # writes, the run's thread reads totals.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                         "finish_reason TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER)")
        # Tries that failed after the server may have done the work (a timeout, a body cut short or garbled): a
        # paid API bills them, so the budget counts them, at their prompt's size and the most they could generate.
        self._db.execute("CREATE TABLE IF NOT EXISTS billed_failures (key TEXT NOT NULL, kind TEXT NOT NULL, "
                         "prompt_tokens INTEGER, completion_tokens INTEGER)")
        self.max_pending, self.max_delay_s = max_pending, max_delay_s
        self.pending = 0  # answers stored but not yet committed
        self._oldest = 0.0
        self.commits = 0

    def get(self, key: str) -> Completion | None:
        row = self._db.execute("SELECT text, finish_reason, prompt_tokens, completion_tokens FROM completions "
                               "WHERE key = ?", (key,)).fetchone()
        return None if row is None else Completion(*row)

    def put(self, key: str, c: Completion) -> None:
        self._write("INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?)",
                    (key, c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens))

    def put_billed_failure(self, key: str, kind: str, prompt_tokens: int, completion_tokens: int) -> None:
        self._write("INSERT INTO billed_failures VALUES (?, ?, ?, ?)", (key, kind, prompt_tokens, completion_tokens))

    def _write(self, sql: str, params: tuple) -> None:
        if not self.pending:
            self._db.execute("BEGIN")
            self._oldest = time.monotonic()
        self._db.execute(sql, params)
        self.pending += 1
        if self.pending >= self.max_pending or time.monotonic() - self._oldest >= self.max_delay_s:
            self.flush()

    def flush(self) -> None:
        """Commit (and fsync) every answer stored so far."""
        if self.pending:
            self._db.execute("COMMIT")
            self.pending = 0
            self.commits += 1

    def spent(self) -> Spent:
        """Everything the run paid for: the answers, and the failed tries a server may have billed."""
        totals = [self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
                                   f"COALESCE(SUM(completion_tokens), 0) FROM {table}").fetchone()
                  for table in ("completions", "billed_failures")]
        (n, p, c), (fn, fp, fc) = totals
        return Spent(n + fn, p + fp, c + fc, fn)

    def close(self) -> None:
        self.flush()
        self._db.close()


@dataclass
class Budget:
    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    # USD per million tokens (input, output); None = this model has no known price.
    price: tuple[float, float] | None = None

    def cost(self, spent: Spent) -> float | None:
        if self.price is None:
            return None
        return (spent.prompt_tokens * self.price[0] + spent.completion_tokens * self.price[1]) / 1e6

    def requests_left(self, spent: Spent) -> int | None:
        return None if self.max_requests is None else max(self.max_requests - spent.requests, 0)

    def exceeded(self, spent: Spent) -> str | None:
        if self.max_requests is not None and spent.requests >= self.max_requests:
            return f"request budget reached ({spent.requests} >= {self.max_requests})"
        tokens = spent.prompt_tokens + spent.completion_tokens
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return f"token budget reached ({tokens} >= {self.max_tokens})"
        cost = self.cost(spent)
        if self.max_cost_usd is not None and cost is not None and cost >= self.max_cost_usd:
            return f"cost budget reached (${cost:.4f} >= ${self.max_cost_usd})"
        return None


def describe_spent(spent: Spent, budget: Budget) -> dict:
    cost = budget.cost(spent)
    return {"requests": spent.requests, "billed_failures": spent.billed_failures,
            "prompt_tokens": spent.prompt_tokens,
            "completion_tokens": spent.completion_tokens,
            "cost_usd": round(cost, 6) if cost is not None else "unknown (no price for this model)"}

