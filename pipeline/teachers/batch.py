"""The OpenAI Batch API as a teacher backend (``teacher.mode = "batch"``): half the price, answers within 24 hours.

To the engine this is one more backend: ``send(request)`` returns the request's completion. Underneath, requests are
collected and sent as batches: ``send`` queues the request and waits; once no new request has come for
``teacher.batch_flush_idle_s`` (every stage is blocked waiting on an answer) or the queue holds
``teacher.batch_max_requests`` (the API takes at most 50,000), the queue is sealed into one batch: a JSONL file of
``{"custom_id": <request cache key>, "method": "POST", "url": "/v1/chat/completions", "body": ...}`` lines (the
body is the online backend's, ``options.openai_body``), uploaded (``files.create(purpose="batch")``), made a
batch (``batches.create``, 24 h window, the intent id in its metadata), polled every ``teacher.batch_poll_s``
until it ends, and its output and error files are downloaded into the run. Each line then answers its request:
a 200 body is a completion (the engine caches it and counts it against the budget, as online); a 400-like status
is refused (the record is rejected as ``teacher_refused``); a line that did not run (the batch expired, was
cancelled or failed) raises ``Transient``, so the engine's retries send it again in a later batch (counted as a
retry of kind ``batch_expired``, ...). The engine's concurrency limit is lifted in this mode (``make_engine``), so a
whole round goes into one batch.

Rounds. A stage cannot ask what depends on an answer it does not have, so a run advances one batch turnaround per
step of dependency, and each batch holds all that the stages can ask at that moment:
  - bootstrap: the first batch holds the first window (``bootstrap.request_batch_size``) of generation requests;
    each later batch holds whatever the stage can send once the previous batch's answers are decided: the next
    generation requests and the instance requests (classification, labels, inputs, answers) of the newly
    accepted tasks. A target that needs N generation windows, each followed by its tasks' instance chain
    (up to three requests deep), takes about N + 3 turnarounds; a larger ``request_batch_size`` means fewer,
    larger batches (each window of prompts shows the machine instructions of the windows before it).
  - evolve: each step of each round is one batch (the rewrites, then the Equal judgements when ``judge_equal``,
    then the answers), holding that step for every lineage still evolving.
So a run of N rounds of dependency takes about N batch turnarounds (minutes to 24 h each): use batch mode for
big nightly runs where cost matters more than latency, online mode to iterate.

The ledger. ``<dir>/ledger.jsonl`` (in the run directory, ``runs/store`` names it) is appended and fsynced
BEFORE each external step: ``intent`` (the intent id and its local input file, written first), ``uploaded``
(file id), ``created`` (batch id), ``finished`` (status, the local copies of the output and error files). A run
killed at any point and resumed never submits a request twice:
  - a request answered in the cache is never sent (the engine);
  - a request whose answer is in a finished batch's local files is answered from them;
  - a request in a recorded batch that has not finished waits for THAT batch (it is polled again);
  - an intent uploaded but with no batch recorded: ``batches.list`` is searched for a batch with the intent id in
    its metadata (the process may have died between creating it and recording its id) and adopted if found,
    else the batch is created from the recorded file (nothing is uploaded again);
  - an intent never uploaded is dropped; its requests are asked again by the replayed stages (an upload costs
    nothing, a batch would).
A create call that fails transiently is retried only after the same search, so a lost answer never makes two
batches.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..config import TeacherConfig
from ..errors import TeacherError
from ..io.files import append_jsonl, drop_torn_tail, read_jsonl, write_bytes_atomic, write_jsonl_atomic
from ..progress import Progress, no_progress
from .base import ChatRequest, Completion, Refused, Transient
from .openai_api import OpenAIBackend, completion_from_body
from .options import openai_body

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
LEDGER = "ledger.jsonl"
INTENT_KEY = "pipeline_intent"  # metadata key of our batches: finds a batch whose id was never recorded
TERMINAL = ("completed", "failed", "expired", "cancelled")
# Error codes of lines that never ran: sent again in a later batch. Any other error line is a refusal.
NOT_RUN = ("batch_expired", "batch_cancelled", "batch_failed")
SEARCH_SLACK_S = 3600.0  # batches.list is newest first: stop this long before the intent was written


@dataclass
class _Batch:
    intent: str
    cids: list[str]
    at: float  # when the intent was written (bounds the search of batches.list)
    waiters: dict[str, list[asyncio.Future]] = field(default_factory=dict)
    file_id: str | None = None
    batch_id: str | None = None
    maybe_created: bool = False  # a create call may have reached the API: search before creating


class Ledger:
    """``ledger.jsonl``: one line per step of each intent, fsynced before the step it announces is taken."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.path = directory / LEDGER

    def record(self, event: str, intent: str, **fields: Any) -> None:
        append_jsonl(self.path, [{"event": event, "intent": intent, **fields}], durable=True)

    def load(self) -> dict[str, dict[str, Any]]:
        """The state of every intent, in the order they were written (a line torn by a kill is dropped)."""
        intents: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return intents
        drop_torn_tail(self.path)
        for row in read_jsonl(self.path):
            st = intents.setdefault(row["intent"], {})
            st.update({k: v for k, v in row.items() if k != "event"})
            st[row["event"]] = True
        return intents


class BatchBackend:
    backend = "openai"  # the cache key of a request is the same online or in a batch: the same answer
    max_parallel = None
    collects = True  # make_engine lifts the window: a whole round goes into one batch

    def __init__(self, cfg: TeacherConfig, state_dir: Path, progress: Progress = no_progress):
        self.cfg = cfg
        self.api = OpenAIBackend(cfg, pool_size=8)
        self.model_name = self.api.model_name
        # Structured outputs as online (a batch line's body is the online request's); the engine reads it once.
        self.structured = self.api.structured
        self.dir = state_dir
        self.ledger = Ledger(state_dir)
        self.progress = progress
        self.stats: Counter = Counter()
        self.status: dict[str, dict[str, Any]] = {}  # batch id -> its last polled state (for the manifest)
        self._opened = False
        self._queue: dict[str, tuple[ChatRequest, list[asyncio.Future]]] = {}
        self._first_queued = 0.0
        self._claimed: dict[str, _Batch] = {}  # custom id -> the submitted, unfinished batch that holds it
        self._done: dict[str, tuple[Path, int]] = {}  # custom id -> its line in a finished batch's local files
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- the Backend protocol -------------------------------------------------------------------------------------
    async def send(self, req: ChatRequest) -> Completion:
        if not self._opened:
            self._open()
        cid = req.key(self.backend, self.model_name)
        if cid in self._done:
            return self._answer(cid)
        fut = asyncio.get_running_loop().create_future()
        batch = self._claimed.get(cid)
        if batch is not None:
            batch.waiters.setdefault(cid, []).append(fut)
        else:
            if not self._queue:
                self._first_queued = time.monotonic()
            self._queue.setdefault(cid, (req, []))[1].append(fut)
            self._arm()
        return await fut

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.api.aclose()

    def describe(self) -> dict[str, Any]:
        return {"mode": "batch", **{k: self.stats[k] for k in sorted(self.stats)},
                "batches": dict(self.status)}

    # -- collecting a round ---------------------------------------------------------------------------------------
    def _arm(self) -> None:
        """Seal the queue when it is full, else once no request has come for ``batch_flush_idle_s`` (but never
        later than ten idle periods after its first request, so a trickle cannot hold a round back)."""
        if len(self._queue) >= self.cfg.batch_max_requests:
            self._seal()
            return
        if self._timer is not None:
            self._timer.cancel()
        idle = self.cfg.batch_flush_idle_s
        delay = min(idle, max(0.0, self._first_queued + 10 * idle - time.monotonic()))
        self._timer = asyncio.get_running_loop().call_later(delay, self._seal)

    def _seal(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue, self._queue = self._queue, {}
        live = [(cid, req, [f for f in futs if not f.done()]) for cid, (req, futs) in queue.items()]
        live = [item for item in live if item[2]]  # a request whose asker was cancelled is not sent
        size = self.cfg.batch_max_requests
        for start in range(0, len(live), size):
            part = live[start:start + size]
            batch = _Batch(intent=uuid.uuid4().hex, cids=[cid for cid, _, _ in part], at=time.time(),
                           waiters={cid: futs for cid, _, futs in part})
            for cid in batch.cids:
                self._claimed[cid] = batch
            rows = [{"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": openai_body(self.cfg, req, self.api.structured)}
                    for cid, req, _ in part]
            self._spawn(self._drive(batch, rows))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one batch, from any step ---------------------------------------------------------------------------------
    async def _drive(self, batch: _Batch, rows: list[dict] | None = None) -> None:
        try:
            if batch.file_id is None:
                await self._upload(batch, rows or [])
            if batch.batch_id is None:
                await self._create(batch)
            obj = await self._poll(batch)
            await self._collect(batch, obj)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error (a bug propagates too)
            self._release(batch, e)

    async def _upload(self, batch: _Batch, rows: list[dict]) -> None:
        name = f"{batch.intent}.input.jsonl"
        await asyncio.to_thread(write_jsonl_atomic, self.dir / name, rows)
        self.ledger.record("intent", batch.intent, input=name, requests=len(rows), at=batch.at)
        data = await asyncio.to_thread((self.dir / name).read_bytes)
        f = await self._call("upload", lambda: self.api.client().files.create(
            file=(name, data, "application/jsonl"), purpose="batch"))
        batch.file_id = f.id
        self.stats["files_uploaded"] += 1
        self.ledger.record("uploaded", batch.intent, file_id=f.id)

    async def _create(self, batch: _Batch) -> None:
        async def create_once() -> tuple[Any, bool]:
            if batch.maybe_created:
                found = await self._find(batch.intent, batch.at)
                if found is not None:
                    return found, True
            batch.maybe_created = True  # from here on a lost answer may still have made the batch
            return await self.api.client().batches.create(
                input_file_id=batch.file_id, endpoint=ENDPOINT, completion_window=WINDOW,
                metadata={INTENT_KEY: batch.intent}), False

        obj, found = await self._call("create", create_once)
        batch.batch_id = obj.id
        if found:
            self.stats["batches_found"] += 1  # made by a session that died before recording its id
        else:
            self.stats["batches_created"] += 1
            self.stats["requests_submitted"] += len(batch.cids)
        self.ledger.record("created", batch.intent, batch_id=obj.id)
        log.info("batch %s %s: %d requests", obj.id, "found" if found else "created", len(batch.cids))

    async def _find(self, intent: str, at: float) -> Any:
        """Our batch for ``intent`` in ``batches.list`` (newest first), if the API holds one."""
        async for b in self.api.client().batches.list(limit=100):
            if (b.metadata or {}).get(INTENT_KEY) == intent:
                return b
            if b.created_at < at - SEARCH_SLACK_S:
                return None
        return None

    async def _poll(self, batch: _Batch) -> Any:
        while True:
            obj = await self._call("poll", lambda: self.api.client().batches.retrieve(batch.batch_id))
            self._report(batch, obj)
            if obj.status in TERMINAL:
                return obj
            await asyncio.sleep(self.cfg.batch_poll_s)

    def _report(self, batch: _Batch, obj: Any) -> None:
        counts = obj.request_counts
        done, total = (counts.completed + counts.failed, counts.total) if counts else (0, len(batch.cids))
        self.status[obj.id] = {"status": obj.status, "requests": total, "done": done}
        running = sum(1 for s in self.status.values() if s["status"] not in TERMINAL)
        self.progress("batch", done, total or len(batch.cids),
                      {"id": obj.id, "status": obj.status, "open batches": running})
        log.info("batch %s %s: %d of %d done", obj.id, obj.status, done, total)

    async def _collect(self, batch: _Batch, obj: Any) -> None:
        """Download the output and error files into the run, record the batch finished, answer its requests."""
        files: dict[str, str] = {}
        for kind, file_id in (("output", obj.output_file_id), ("errors", obj.error_file_id)):
            if file_id:
                content = await self._call(f"download {kind}",
                                           lambda fid=file_id: self.api.client().files.content(fid))
                name = f"{obj.id}.{kind}.jsonl"
                await asyncio.to_thread(write_bytes_atomic, self.dir / name, content.content)
                files[kind] = name
        errors = [e.message for e in (obj.errors.data or [])][:3] if obj.errors else []
        self.ledger.record("finished", batch.intent, batch_id=obj.id, status=obj.status, files=files,
                           errors=errors)
        for name in files.values():
            self._index(self.dir / name)
        missing = Transient(f"batch_{obj.status}", f"batch {obj.id} ended {obj.status} without this request"
                            + (f": {'; '.join(map(str, errors))}" if errors else ""))
        self._release(batch, missing)

    def _release(self, batch: _Batch, error: BaseException) -> None:
        """The batch is over: answer each waiting request from the batch's lines, or with ``error``."""
        for cid in batch.cids:
            if self._claimed.get(cid) is batch:
                del self._claimed[cid]
            futs = [f for f in batch.waiters.pop(cid, []) if not f.done()]
            if not futs:
                continue
            if cid in self._done:
                try:
                    outcome: Any = self._answer(cid)
                except Exception as e:  # noqa: BLE001 - the line's outcome is an error
                    outcome = e
            else:
                outcome = error
            for f in futs:
                if isinstance(outcome, BaseException):
                    f.set_exception(outcome)
                else:
                    f.set_result(outcome)

    # -- answers from the local result files ----------------------------------------------------------------------
    def _index(self, path: Path) -> None:
        with open(path, "rb") as fh:
            offset = 0
            for line in fh:
                if line.strip():
                    cid = json.loads(line).get("custom_id")
                    if cid:
                        self._done[cid] = (path, offset)
                offset += len(line)

    def _answer(self, cid: str) -> Completion:
        """The completion a finished batch holds for ``cid``, or raise its error (``Refused``; ``Transient`` for a
        line that never ran, which is forgotten here so the engine's retry queues it for a later batch)."""
        path, offset = self._done[cid]
        with open(path, "rb") as fh:
            fh.seek(offset)
            row = json.loads(fh.readline())
        outcome = self._outcome(row)
        if isinstance(outcome, Completion):
            self.stats["lines_answered"] += 1
            return outcome
        if isinstance(outcome, Transient):
            del self._done[cid]
            self.stats["lines_resubmitted"] += 1
        else:
            self.stats["lines_refused"] += 1
        raise outcome

    def _outcome(self, row: dict[str, Any]) -> Completion | Exception:
        resp = row.get("response")
        if isinstance(resp, dict) and resp.get("status_code") is not None:
            code, body = int(resp["status_code"]), resp.get("body")
            if code == 200:
                try:
                    return completion_from_body(body)
                except Transient as e:
                    return e
            err = body.get("error") if isinstance(body, dict) else None
            message = err.get("message", "") if isinstance(err, dict) else json.dumps(body)[:500]
            return self.api.status_error(code, message)
        err = row.get("error") if isinstance(row.get("error"), dict) else {}
        code = str(err.get("code") or "batch_error")
        message = self.api.redact(f"{code}: {err.get('message', '')}")
        return Transient(code, message) if code in NOT_RUN else Refused(message)

    # -- resuming -------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        """Read the ledger of an earlier session: index the finished batches' answers, and drive every batch that
        was uploaded but not finished on from where it stopped (see the module docstring)."""
        self._opened = True
        for st in self.ledger.load().values():
            if st.get("finished"):
                for name in (st.get("files") or {}).values():
                    if (self.dir / name).exists():
                        self._index(self.dir / name)
            elif st.get("uploaded"):
                cids = [row["custom_id"] for row in read_jsonl(self.dir / st["input"])]
                batch = _Batch(intent=st["intent"], cids=cids, at=st.get("at", 0.0), file_id=st["file_id"],
                               batch_id=st.get("batch_id"), maybe_created=True)
                for cid in cids:
                    self._claimed[cid] = batch
                    self._done.pop(cid, None)
                self.stats["batches_resumed"] += 1
                self._spawn(self._drive(batch))
            # an intent never uploaded is dropped: the replayed stages ask for its requests again

    # -- API calls ------------------------------------------------------------------------------------------------
    async def _call(self, what: str, make: Callable[[], Awaitable[Any]]) -> Any:
        """One call of the Files or Batches API, retried on transient failures (up to ``teacher.max_retries``,
        exponential backoff, never sooner than Retry-After); any other failure is a ``TeacherError``."""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return await make()
            except Exception as e:  # noqa: BLE001 - sorted below; a bug propagates unchanged
                err = self.api.sorted_error(e)
                if isinstance(err, Transient) and attempt < self.cfg.max_retries:
                    self.stats[f"api_retries:{err.kind}"] += 1
                    await asyncio.sleep(max(err.retry_after, min(30.0, 0.5 * 2 ** attempt)))
                    continue
                if isinstance(err, (Transient, Refused)):
                    raise TeacherError(f"Batch API {what} failed: {err}") from None
                raise err from None
        raise AssertionError("unreachable")
