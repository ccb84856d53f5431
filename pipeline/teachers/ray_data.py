"""Teacher requests through Ray Data's batch-inference processors (``[scale] engine = "ray"``).

To the engine this is one more backend: ``send(request)`` returns the request's completion, and everything the
engine owns stays as it is (the request cache, the budget, retries, priorities), as does every stage: the same
stage code builds the requests and parses and filters the answers, and the run store writes them. Underneath,
requests are collected into waves, and each wave is one Ray Data execution:

    from_items(row per request: index, the JSON body), per replica       blocks of concurrency_per_replica rows
    -> per replica: ray.data.llm's HTTP processor (HttpRequestProcessorConfig(url=<replica>/chat/completions))
    -> union of the replicas' datasets -> iter_rows on the driver: each answer completes its request at once

A wave starts once no new request has come for ``scale.wave_idle_s`` (every stage is waiting on an answer), once it
holds ``scale.max_wave`` requests, or once its first request has waited ``scale.wave_max_wait_s``; waves overlap (a
stage that got its answers sends its next requests in the next wave while the slow answers of the last one are still
coming). The engine's window is lifted in this mode (``make_engine``), as for the Batch API, so a whole round goes
into one wave. Requests are dealt round-robin over the replicas (``scale.replicas``, or ``teacher.base_url``, or
servers started by ``scale.launch_llamacpp``).

What Ray's HTTP stage does and what we do around it (ray 2.60, ``ray/llm/_internal/batch/stages/
http_request_stage.py``): it sends the rows of one batch one after another and runs up to
``RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY`` batches of a block at once (4 unless set), so we use one-row
batches and set that limit to the requests each actor should keep in flight (``concurrency_per_replica /
actors_per_replica``); measured on the simulated server, 256 requests of 0.5 s took 16.6 s with Ray's defaults and
5.0 s with this. Rows carry the request body and the answer as JSON strings (``BodySession``, given to the stage
as its session factory), because Arrow cannot put rows of different shapes in one block; the same session
answers every request to Ray as a success (the real status, a timeout or a broken connection travel in the row),
so Ray never retries a request nor fails a block for one: the engine sorts each answer as the online backend does
(429/5xx/timeouts transient, retried in a later wave with the engine's backoff and Retry-After; 400-like refused,
the record rejected as ``teacher_refused``) and counts what may have been billed. A block that still fails (a Ray
worker died) does not stop the wave (``max_errored_blocks``); its requests fail as
``Transient("ray_block_failed")``, retried by the engine and counted as possibly billed. Answers still inside Ray
when the process is killed are lost: a resumed run asks for them again (the request cache holds every answer that
reached this process).

The vLLM engine processor (``scale.processor = "vllm"``, ``teacher.backend = "vllm"``): vLLM engines inside Ray
actors on the cluster's GPUs, fed rows of chat messages and sampling parameters, with the same wave mechanics.
It needs a GPU and vllm, which this project's CI machines do not have: it is kept thin and is untested here.
Its answers have no finish reason in Ray's output; "length" is inferred when the answer used every token allowed.

Throughput and client cost are measured in ``bench/ray_teacher_bench.py``; ``pipeline/ray_cluster.py`` says how
the cluster is joined or started.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Awaitable

import aiohttp

from ..config import ScaleConfig, TeacherConfig
from ..errors import TeacherError
from .base import ChatRequest, Completion, Transient
from .openai_api import OpenAIBackend, chat_url
from .options import openai_body

log = logging.getLogger(__name__)
STAGE_CPUS = 0.25  # logical CPUs per HTTP actor and per pre/post-processing task: they wait on the network
WAVE_THREADS = 32  # waves in flight at once (each waits on its Ray execution in a thread of its own)
CLOSE_GRACE_S = 8.0  # what aclose gives running waves before it stops the cluster under them (Engine.close: 30 s)


# -- what the Ray workers run (module level: pickled by reference) ----------------------------------------------
class BodySession:
    """The aiohttp session Ray's HTTP stage is given (``session_factory``). A row carries its request body as one
    JSON string (``payload = {"body": "..."}``) and gets its answer back as ``{"status": ..., "body": ...,
    "retry_after": ...}``: every row of a block has the same Arrow type whatever its request or answer holds (rows of
    different JSON shapes, or an error body next to a completion, cannot share an Arrow block). Every answer reaches
    Ray as a 200, and a timeout or a broken connection as an answer of status 0 with the error's kind in the body,
    so Ray neither retries nor fails a block for one request: each request succeeds or fails on its own, and the
    engine retries (with its own backoff, Retry-After and budget accounting) exactly as online."""

    def __init__(self, timeout_s: float):
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def __aenter__(self) -> "BodySession":
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    def post(self, url: str, headers: dict | None = None, data: str = "") -> Awaitable["BodyResponse"]:
        return self._post(url, headers, json.loads(data)["body"])

    async def _post(self, url: str, headers: dict | None, body: str) -> "BodyResponse":
        try:
            async with self._session.post(url, headers=headers, data=body.encode()) as resp:
                raw = (await resp.read()).decode("utf-8", "replace")
                return BodyResponse(resp.status, raw, resp.headers.get("retry-after") or "")
        except asyncio.TimeoutError:
            return BodyResponse(0, "timeout")
        except aiohttp.ClientPayloadError as e:
            return BodyResponse(0, f"truncated: {e}")
        except aiohttp.ClientError as e:
            return BodyResponse(0, f"connection: {type(e).__name__}: {e}")


class BodyResponse:
    status, reason = 200, "OK"  # what Ray's stage sees: never a status it retries

    def __init__(self, status: int, body: str, retry_after: str = ""):
        self._answer = {"status": status, "body": body, "retry_after": retry_after}

    async def __aenter__(self) -> "BodyResponse":
        return self

    async def __aexit__(self, *exc) -> None:
        pass

    async def json(self) -> dict:
        return self._answer


def _http_row(row: dict) -> dict:
    return {"i": row["i"], "payload": {"body": row["body"]}}


def _http_result(row: dict) -> dict:
    answer = row["http_response"]
    return {"i": row["i"], "status": int(answer["status"]), "response": answer["body"],
            "retry_after": answer["retry_after"]}


def _vllm_row(row: dict) -> dict:
    body = json.loads(row["body"])
    return {"i": row["i"], "messages": body["messages"], "sampling_params": body["sampling_params"]}


def _vllm_result(row: dict) -> dict:
    """Ray's vLLM stage output as an OpenAI-style body (the one parser reads both)."""
    limit = (row.get("sampling_params") or {}).get("max_tokens")
    used = int(row.get("num_generated_tokens") or 0)
    body = {"choices": [{"message": {"content": row.get("generated_text") or ""},
                         "finish_reason": "length" if limit and used >= limit else "stop"}],
            "usage": {"prompt_tokens": int(row.get("num_input_tokens") or 0), "completion_tokens": used}}
    return {"i": row["i"], "status": 200, "response": json.dumps(body), "retry_after": ""}


def _vllm_sampling(body: dict) -> dict:
    """vLLM SamplingParams from an OpenAI chat body (the fields both know)."""
    keys = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "stop", "seed", "top_k", "min_p",
            "repetition_penalty")
    params = {k: body[k] for k in keys if k in body}
    params["max_tokens"] = body.get("max_tokens") or body.get("max_completion_tokens")
    return params


class RayDataBackend(OpenAIBackend):
    """``teacher.backend = "openai"`` (HTTP processor) or ``"vllm"`` (vLLM engine processor) through Ray Data.
    The request bodies, the API key handling, the sorting of errors and the JSON-schema fallback are the online
    backend's (this class is one, with ``_send`` replaced)."""

    collects = True  # make_engine lifts the window: a whole round goes into one wave

    def __init__(self, cfg: TeacherConfig, scale: ScaleConfig, state_dir: Path | None = None):
        self.scale, self.vllm = scale, scale.processor == "vllm"
        # Replicas the pipeline starts itself need no key: none is sent to them.
        keyless = self.vllm or scale.launch_llamacpp > 0
        super().__init__(cfg.model_copy(update={"api_key_env": ""}) if keyless else cfg, pool_size=1)
        if self.vllm:
            self.backend = "vllm"  # the cache key: the same answers as vLLM in-process
            self.structured = "off"  # structured outputs through Ray's vLLM stage are not wired (untested here)
        self.max_parallel = None
        self.stats: Counter = Counter()
        self._queue: list[tuple[str, asyncio.Future]] = []
        self._first_queued = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waves: set[asyncio.Task] = set()
        self._dealt = 0
        self._resources = ExitStack()
        self._urls: list[str] = []
        self._processors: list[Any] | None = None
        self._opening: asyncio.Future | None = None
        self._servers: Any = None  # the replicas we started (scale.launch_llamacpp)
        self._closing = threading.Event()  # aclose has begun: _open undoes itself, _execute stops reading rows
        self._threads = ThreadPoolExecutor(max_workers=WAVE_THREADS, thread_name_prefix="ray-wave")
        self._context_lock = threading.Lock()
        self._running = 0
        self._saved_context: tuple | None = None
        self._state_dir = state_dir

    # -- set up on the first request (a resumed run with everything cached starts no cluster) -------------------
    def _open(self) -> None:
        from ..ray_cluster import ray_session

        try:
            import ray.data  # noqa: F401
        except ImportError:
            raise TeacherError('scale.engine = "ray" needs the ray extra: pip install -e ".[ray]"') from None
        sc = self.scale
        try:
            self._resources.enter_context(ray_session(sc.address, sc.num_cpus))
            if sc.launch_llamacpp:
                from .replicas import LlamaServers

                logs = self._state_dir.parent / "replicas" if self._state_dir is not None else None
                self._servers = LlamaServers(sc.launch_llamacpp, sc.launch_gguf, alias=self.cfg.model,
                                             n_ctx=self.cfg.n_ctx, threads=sc.launch_threads, log_dir=logs)
                self._resources.callback(self._servers.close)  # closed before the cluster (last in, first out)
                bases = self._servers.urls
            else:
                bases = sc.replicas or [self.cfg.base_url]
            self._urls = [chat_url(b) for b in bases]
            # Ray Data logs every execution it starts and ends (INFO) and that progress bars are off (WARNING):
            # a wave is one execution, so that would be a few lines per stage step. Errors still show.
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            self._processors = [self._processor(url) for url in (self._urls if not self.vllm else ["vllm"])]
            if self._closing.is_set():
                raise TeacherError("the teacher was closed while Ray was starting")
        except BaseException as e:
            self._resources.close()
            if isinstance(e, (TeacherError, KeyboardInterrupt, SystemExit)):
                raise
            # Nothing will succeed (the cluster or a replica did not start): one clear error, not retries.
            raise TeacherError(self.redact(f"Ray could not be started: {type(e).__name__}: {e}")[:1000]) from None

    def _processor(self, url: str):
        from ray.data.llm import build_processor

        sc = self.scale
        small = {"num_cpus": STAGE_CPUS}
        if self.vllm:
            from ray.data.llm import vLLMEngineProcessorConfig

            config = vLLMEngineProcessorConfig(model_source=self.cfg.model, engine_kwargs=sc.vllm_engine_kwargs,
                                               concurrency=sc.vllm_replicas, batch_size=sc.vllm_batch_size)
            return build_processor(config, preprocess=_vllm_row, postprocess=_vllm_result,
                                   preprocess_map_kwargs=small, postprocess_map_kwargs=small)
        from ray.data.llm import HttpRequestProcessorConfig

        headers = {"Authorization": self._auth} if self.cfg.api_key_env or self._auth.startswith("Basic") else None
        config = HttpRequestProcessorConfig(
            url=url, headers=headers, batch_size=1, concurrency=(sc.actors_per_replica, sc.actors_per_replica),
            max_retries=0,  # BodySession answers every request itself: the engine retries
            session_factory=functools.partial(BodySession, self.cfg.timeout_s),
            http_request_stage={"num_cpus": STAGE_CPUS})
        return build_processor(config, preprocess=_http_row, postprocess=_http_result,
                               preprocess_map_kwargs=small, postprocess_map_kwargs=small)

    # -- the Backend protocol (``send`` is OpenAIBackend's: the JSON-schema fallback calls ``_send``) -----------
    async def _send(self, req: ChatRequest, structured: str) -> Completion:
        body = openai_body(self.cfg, req, structured)
        if self.vllm:
            body = {"messages": body["messages"], "sampling_params": _vllm_sampling(body)}
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self._queue:
            self._first_queued = loop.time()
        self._queue.append((json.dumps(body, ensure_ascii=False), fut))
        # A wave starts once the stages stop asking (wave_idle_s), at max_wave requests, or when its first request
        # has waited wave_max_wait_s (a stream of requests must not hold the first ones back).
        if (len(self._queue) >= self.scale.max_wave
                or loop.time() - self._first_queued >= self.scale.wave_max_wait_s):
            self._start_wave()
        else:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(self.scale.wave_idle_s, self._start_wave)
        status, raw, retry_after = await fut
        if status == 0:  # no HTTP answer (BodySession): timeout, truncated body, connection error
            kind = raw.split(":", 1)[0]
            raise Transient(kind, self.redact(raw)[:500])
        return self.completion_from_answer(status, raw.encode(), retry_after or None)

    def _start_wave(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._queue = self._queue, []
        if items:
            task = asyncio.ensure_future(self._wave(items))
            self._waves.add(task)
            task.add_done_callback(self._waves.discard)

    async def _wave(self, items: list[tuple[str, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        futures = [f for _, f in items]

        def deliver(i: int, answer: tuple[int, str, str]) -> None:
            if not futures[i].done():
                futures[i].set_result(answer)

        t0 = time.perf_counter()
        self.stats["waves"] += 1
        self.stats["rows"] += len(items)
        failure: BaseException = Transient("ray_wave_failed", "the wave ended before answering")
        try:
            if self._opening is None:  # the first wave opens the cluster; the waves started meanwhile wait for it
                self._opening = loop.run_in_executor(self._threads, self._open)
            await asyncio.shield(self._opening)
            n = len(self._processors)
            rows: list[list[dict]] = [[] for _ in range(n)]
            for i, (body, _) in enumerate(items):
                rows[(self._dealt + i) % n].append({"i": i, "body": body})
            self._dealt += len(items)
            await loop.run_in_executor(self._threads, self._execute, rows,
                                       lambda i, r: loop.call_soon_threadsafe(deliver, i, r))
            failure = Transient("ray_block_failed", "a block of this wave failed in Ray Data; sent again")
        except TeacherError as e:
            failure = e
        except asyncio.CancelledError:
            failure = TeacherError("the teacher was closed")
            raise
        except Exception as e:  # the cluster went away, a worker died: the engine retries these requests
            failure = Transient("ray_wave_failed", self.redact(f"{type(e).__name__}: {e}")[:500])
        finally:
            await asyncio.sleep(0)  # answers delivered from the thread are set before the rest fail
            missing = [f for f in futures if not f.done()]
            self.stats["rows_failed"] += len(missing)
            self.stats["wave_seconds"] += time.perf_counter() - t0
            for f in missing:
                f.set_exception(failure)

    def _execute(self, rows: list[list[dict]], deliver) -> None:
        """One wave, on a worker thread: the replicas' datasets, unioned, streamed back row by row."""
        import ray.data

        per_actor = max(1, self.scale.concurrency_per_replica // self.scale.actors_per_replica)
        self._enter_context(per_actor)
        try:
            parts = []
            for proc, replica_rows in zip(self._processors, rows):
                if replica_rows:
                    blocks = math.ceil(len(replica_rows) / per_actor)
                    parts.append(proc(ray.data.from_items(replica_rows, override_num_blocks=blocks)))
            ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
            for row in ds.iter_rows():
                deliver(int(row["i"]), (int(row["status"]), row["response"], row["retry_after"]))
                if self._closing.is_set():
                    return  # leaving the iterator ends the execution
        finally:
            self._leave_context()

    def _enter_context(self, per_actor: int) -> None:
        """Ray Data settings for the waves, set while any wave runs and put back after the last one (they are the
        process's, shared with e.g. ``ray_dedup``, which must not skip failed blocks)."""
        import ray.data
        from ray.data._internal.planner import plan_udf_map_op

        with self._context_lock:
            if self._running == 0:
                ctx = ray.data.DataContext.get_current()
                self._saved_context = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.max_errored_blocks,
                                       plan_udf_map_op.DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY)
                ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
                ctx.max_errored_blocks = -1  # a failed block does not stop the wave: its requests are retried
                # Ray's HTTP stage runs this many one-row batches of a block at once (the module docstring); read
                # when the plan is built, in this process.
                plan_udf_map_op.DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY = per_actor
            self._running += 1

    def _leave_context(self) -> None:
        import ray.data
        from ray.data._internal.planner import plan_udf_map_op

        with self._context_lock:
            self._running -= 1
            if self._running == 0 and self._saved_context is not None:
                ctx = ray.data.DataContext.get_current()
                (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.max_errored_blocks,
                 plan_udf_map_op.DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY) = self._saved_context
                self._saved_context = None

    def describe(self) -> dict:
        return {"engine": "ray", "processor": self.scale.processor, "replicas": len(self._urls) or None,
                "waves": self.stats["waves"], "rows": self.stats["rows"], "rows_failed": self.stats["rows_failed"],
                "wave_seconds": round(self.stats["wave_seconds"], 2)}

    async def aclose(self) -> None:
        """Stop: no new wave; running waves stop reading rows (their requests fail as closed); the replicas and
        a cluster we started are stopped once nothing uses them."""
        self._closing.set()
        if self._timer is not None:
            self._timer.cancel()
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(TeacherError("the teacher was closed"))
        self._queue = []
        if self._opening is not None:
            await asyncio.gather(self._opening, return_exceptions=True)
        if self._servers is not None:  # our replicas go first: the requests still in Ray fail at once
            await asyncio.to_thread(self._servers.close)
        if self._waves:  # a wave ends at its next row once closing is set (or when the cluster stops below)
            await asyncio.wait(list(self._waves), timeout=CLOSE_GRACE_S)
        await asyncio.to_thread(self._resources.close)
        if self._waves:
            await asyncio.wait(list(self._waves), timeout=CLOSE_GRACE_S)
        self._threads.shutdown(wait=False)
        await super().aclose()

