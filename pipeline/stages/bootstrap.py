"""Self-Instruct bootstrap: grow new tasks from seed tasks with a teacher, streaming.

Everything is in flight at once, under the engine's concurrency limit:
  - up to ``request_batch_size`` generation requests (the window), each listing in-context instructions sampled
    from the seeds and from the machine instructions accepted so far, asking the teacher to continue the list;
  - for every instruction already accepted, its instance chain: classification, labels, inputs, answers.
Decisions keep Self-Instruct's order and do not depend on which answer arrives first:
  1. generation answers are decided in request order: parsed (a response cut by the length limit loses its last
     item), each item filtered by the instruction heuristics and the ROUGE-L novelty check against every
     instruction accepted before it, survivors joining the pool at once;
  2. generation request g shows machine instructions from the pool as it stood when requests 0 .. g - window
     were decided (``pool_sizes``), sampled with g's own seed: the prompt is the same however fast answers come,
     and Self-Instruct's "2 of 8 in-context instructions are machine-generated" holds from request ``window`` on
     (the first window shows seeds only; later prompts lag the pool by at most a window of requests);
  3. each accepted task's instances are filtered with the instance and task rules of the filter chain
     (``filters.heuristics``), so every task this stage keeps is one the filter stage keeps too;
  4. results are emitted request by request, each request's tasks in order, and stop at exactly the
     ``target_instructions``-th kept task. A resumed run replays the same decisions from the request cache.

Shards (``bootstrap.shards = K``, ``run_shards``). The loop above is sequential by nature: request g's prompt waits
on the decisions of requests before it, so one loop keeps at most a window of generation requests (and their
instance chains) in flight, which is too little for many teacher replicas. K independent loops run at once on the
one engine instead: loop k starts from the same seeds, samples its prompts with its own seed (``bootstrap.seed +
k``), numbers its tasks ``bs<k>-...`` and stops at its share of the target (ceil(target x (1 +
bootstrap.shard_overshoot) / K): the loops find some of the same tasks, and the margin makes up for them). When all
have stopped, their tasks are deduplicated against each other in one fixed order (task 0 of every loop in loop
order, then task 1 of every loop, ...; each task's instruction against the tasks kept before it, with the same
ROUGE-L threshold), and the first ``target`` survivors are kept (fewer if the loops duplicated each other beyond the
margin: the stage records ``tasks_kept``); the losers are rejected as ``rouge_duplicate`` with ``cross_shard =
true``, the surplus past the target as ``beyond_target``. The result depends on K and on nothing else (not on
timing): each loop is deterministic, and so is the merge. How K changes the data: each loop's prompts show only its
own machine instructions, so the loops explore from the seeds independently and find some of the same tasks (the
merge removes those, so a K-shard run asks for more generation requests per kept task than one loop), and the kept
set holds the early, seed-near tasks of K loops rather than the late tasks of one long loop.

The stage is a pure coroutine of (state, engine, config): the caller's ``emit`` owns all file I/O.
"""
from __future__ import annotations

import asyncio
import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

from ..config import BootstrapConfig, FilterConfig
from ..filters.heuristics import InstructionFilters, check_instance, check_task_instances
from ..filters.novelty import NoveltyIndex
from ..prompts import render
from ..records import Record, Rejection
from ..teachers import ChatRequest, Completion, Engine, formats
from ..teachers.base import REFUSED
from ..teachers.cache import BudgetExhausted
from ..teachers.engine import gather_or_cancel
from .instances import InstanceResult, instances_for
from .parsing import json_string_list, split_numbered_list

STAGE = "bootstrap"


def _novelty_index(fcfg: FilterConfig) -> NoveltyIndex:
    """The filter's ROUGE-L novelty check with the exact nearest match for every candidate: the bootstrap pool is
    small, and kept records carry their nearest match."""
    return NoveltyIndex(fcfg.rouge_threshold, use_stemmer=fcfg.use_stemmer, unicode=fcfg.unicode_tokens,
                        exact_nearest=True)


@dataclass
class BootstrapState:
    seed_instructions: list[str]
    index: NoveltyIndex
    machine_instructions: list[str] = field(default_factory=list)
    tasks_kept: int = 0
    next_task: int = 0
    requests: int = 0
    # len(machine_instructions) after each generation request was decided: what request g + window may show
    pool_sizes: list[int] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    prefix: str = "bs"  # task ids: bs-000000 (one loop), bs<k>-000000 (shard k of several)

    @classmethod
    def start(cls, seeds: list[Record], fcfg: FilterConfig, prefix: str = "bs") -> "BootstrapState":
        index = _novelty_index(fcfg)
        instructions: list[str] = []
        seen: set[str] = set()
        for rec in seeds:
            if rec.task_id not in seen:
                seen.add(rec.task_id)
                instructions.append(rec.instruction)
                index.add(rec.task_id, rec.instruction)
        return cls(seed_instructions=instructions, index=index, prefix=prefix)


@dataclass
class StepResult:
    kept: list[Record] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def _prompt(state: BootstrapState, cfg: BootstrapConfig, g: int, structured: str = "off") -> ChatRequest:
    """Generation request ``g``: in-context instructions sampled from the seeds and from the machine instructions
    decided from requests ``0 .. g - window`` (what the pool held when ``g`` could first be sent), with a random
    generator of its own, so the prompt does not depend on when answers arrived. ``structured`` (the engine's):
    the request carries the list format; with a JSON schema the prompt asks for JSON when ``cfg.json_prompt``
    (a grammar constrains the numbered list the prompt asks for anyway)."""
    rng = random.Random(f"{cfg.seed}:{g}")
    visible = state.pool_sizes[g - cfg.request_batch_size] if g >= cfg.request_batch_size else 0
    machine = state.machine_instructions[:visible]
    n_machine = min(cfg.num_machine_in_prompt, len(machine))
    n_seed = min(cfg.num_prompt_instructions - n_machine, len(state.seed_instructions))
    shown = rng.sample(machine, n_machine) + rng.sample(state.seed_instructions, n_seed)
    rng.shuffle(shown)
    if n_machine:
        state.stats["prompts_with_machine_instructions"] += 1
    if structured == "off":
        text = render("bootstrap_instructions", tasks=shown, count=cfg.new_per_request)
        return ChatRequest(messages=[{"role": "user", "content": text}], decoding=cfg.generation)
    text = render("bootstrap_instructions", tasks=shown, count=cfg.new_per_request,
                  json=structured == "json_schema" and cfg.json_prompt)
    return ChatRequest(messages=[{"role": "user", "content": text}], decoding=cfg.generation,
                       format=formats.instruction_list(cfg.new_per_request))


def _decide(state: BootstrapState, filters: InstructionFilters, fcfg: FilterConfig, g: int, request: ChatRequest,
            completion: Completion, model: str) -> tuple[list[Rejection], list[Record]]:
    """Parse generation request ``g``'s answer and decide each new instruction, in order: heuristics, an echo of
    the prompt, ROUGE-L novelty against every instruction accepted before it. Accepted ones join the pool now."""
    rejected: list[Rejection] = []

    def reject(rec: Record, reason: str, **details) -> None:
        state.stats[f"rejected:{reason}"] += 1
        rejected.append(Rejection(rec, reason, details, STAGE))

    state.stats["responses"] += 1
    response_id = f"{state.prefix}-response-{g + 1:06d}"
    if completion.finish_reason == REFUSED:
        reject(Record(id=response_id, instruction="", source=STAGE), "teacher_refused", message=completion.text)
        return rejected, []
    if not completion.text.strip():
        reject(Record(id=response_id, instruction="", source=STAGE), "empty_completion",
               finish_reason=completion.finish_reason)
        return rejected, []
    parsed = json_string_list(completion.text, "instructions", completion.finish_reason)
    if parsed is not None:
        state.stats["parsed_as_json"] += 1
        items, cut = parsed
    else:  # free text (or a backend that ignored the format): the tolerant parser
        state.stats["parsed_as_text"] += 1
        items, cut = split_numbered_list(completion.text, completion.finish_reason)
    if cut is not None:  # the length limit cut the last item short
        reject(Record(id=f"{response_id}-cut", instruction=cut, source=STAGE), "truncated", finish_reason="length")
    if not items:
        reject(Record(id=response_id, instruction="", source=STAGE, meta={"response": completion.text[:2000]}),
               "unparseable_response")
        return rejected, []
    state.stats["parsed_instructions"] += len(items)
    prompt_text = " ".join(request.messages[-1]["content"].lower().split())
    accepted: list[Record] = []
    for text in items:
        task_id = f"{state.prefix}-{state.next_task:06d}"
        state.next_task += 1
        rec = Record(id=task_id, task_id=task_id, instruction=text, source=STAGE, teacher_model=model)
        if " ".join(text.lower().split()) in prompt_text:  # copied back from the prompt (an example, the ask)
            reject(rec, "echoed_prompt")
            continue
        verdict = filters.check(text)
        if verdict is not None:
            reject(rec, verdict[0], **verdict[1])
            continue
        match = state.index.nearest(text)
        rec.nearest_id, rec.nearest_instruction, rec.rouge_l = match.nearest_id, match.nearest_text, match.score
        if state.index.is_duplicate(match):
            reject(rec, "rouge_duplicate", nearest_id=match.nearest_id, nearest_instruction=match.nearest_text,
                   rouge_l=match.score, threshold=fcfg.rouge_threshold)
            continue
        state.index.add(task_id, text)
        state.machine_instructions.append(text)
        accepted.append(rec)
    return rejected, accepted


def _finish_task(state: BootstrapState, task: Record, generated: InstanceResult, cfg: BootstrapConfig,
                 fcfg: FilterConfig, out: StepResult) -> None:
    """The instance rules over one task's candidates; the task counts toward the target if any instance is kept."""
    state.stats.update(generated.stats)
    for rec, reason, details in generated.rejected:
        state.stats[f"rejected:{reason}"] += 1
        out.rejected.append(Rejection(rec, reason, details, STAGE))
    candidates = []
    for inst in generated.kept:
        verdict = check_instance(inst, fcfg)
        if verdict is not None:
            state.stats[f"rejected:{verdict[0]}"] += 1
            out.rejected.append(Rejection(inst, verdict[0], verdict[1], STAGE))
        else:
            candidates.append(inst)
    kept, dropped = check_task_instances(candidates, min(cfg.max_instances_per_task, fcfg.max_instances_per_task))
    for inst, reason, details in dropped:
        state.stats[f"rejected:{reason}"] += 1
        out.rejected.append(Rejection(inst, reason, details, STAGE))
    if kept:
        state.tasks_kept += 1
        state.stats["kept_instances"] += len(kept)
        out.kept.extend(kept)
    else:
        state.stats["tasks_without_instance"] += 1


async def run(state: BootstrapState, engine: Engine, cfg: BootstrapConfig, fcfg: FilterConfig,
              emit: Callable[[StepResult], None]) -> None:
    """Grow tasks until ``cfg.target_instructions`` of them have instances (or the request cap is reached).

    Everything is in flight at once under the engine's limit: up to ``request_batch_size`` generation requests,
    and the classification, label, input and answer requests of every instruction already accepted. Decisions
    and output still follow one fixed order, so the result does not depend on which answer came back first:
    generation answers are decided in request order, and results are emitted request by request, each request's
    tasks in order, each task once all its instance requests are answered. The output stops at exactly the
    target-th kept task; work in flight beyond it is dropped (its answers stay in the cache).
    """
    filters = InstructionFilters(fcfg)
    target, window, cap = cfg.target_instructions, cfg.request_batch_size, cfg.max_generation_requests
    sent: dict[int, tuple[ChatRequest, asyncio.Future]] = {}
    blocks: deque[tuple[StepResult, list[tuple[Record, asyncio.Future]]]] = deque()
    decided = in_progress = 0
    accepted_total = decided_tasks = kept_tasks = 0

    def expected_tasks() -> float:
        """Tasks the work in flight will probably add: accepted ones times the keep rate so far, plus what the
        outstanding generation requests will probably accept. This is what stops generation: generation requests
        go first in the engine (they start the longest chains), so a keep rate read as 0 would starve every
        instance request behind endless generation."""
        keep_rate = (kept_tasks + 1) / (decided_tasks + 1)  # smoothed: one early loss must not read as 0
        per_request = accepted_total / decided if decided else float(cfg.new_per_request)
        return keep_rate * (in_progress + per_request * (state.requests - decided))

    def fill() -> None:
        while (state.requests < cap and state.requests - decided < window
               and state.tasks_kept + expected_tasks() < target):
            g = state.requests
            req = _prompt(state, cfg, g, engine.structured)
            sent[g] = (req, asyncio.ensure_future(engine.complete(req, "generate", priority=3)))
            state.requests += 1

    try:
        fill()
        while state.tasks_kept < target:
            # Emit, in order, every request whose tasks are all answered.
            while blocks and all(f.done() for _, f in blocks[0][1]):
                result, tasks = blocks.popleft()
                out = StepResult(rejected=result.rejected)
                for task, fut in tasks:
                    in_progress -= 1
                    if state.tasks_kept >= target:
                        continue  # past the target: dropped, not emitted
                    before = state.tasks_kept
                    _finish_task(state, task, fut.result(), cfg, fcfg, out)
                    decided_tasks += 1
                    kept_tasks += state.tasks_kept - before
                emit(out)
                if state.tasks_kept >= target:
                    return
            fill()
            waiting = set()
            if decided < state.requests:
                waiting.add(sent[decided][1])
            if blocks:
                waiting.update(f for _, f in blocks[0][1] if not f.done())
            if not waiting:
                if not blocks and decided == state.requests:
                    return  # the request cap is reached and everything is decided
                continue
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            # Decide, in order, every generation answer that has arrived.
            while decided < state.requests and sent[decided][1].done():
                req, fut = sent.pop(decided)
                rejected, accepted = _decide(state, filters, fcfg, decided, req, fut.result(), engine.model_name)
                state.pool_sizes.append(len(state.machine_instructions))
                accepted_total += len(accepted)
                in_progress += len(accepted)
                blocks.append((StepResult(rejected=rejected),
                               [(t, asyncio.ensure_future(instances_for(t, engine, cfg))) for t in accepted]))
                decided += 1
    except BudgetExhausted:
        # The requests already sent are paid for: let them finish and reach the cache (new ones now fail at the
        # budget check at once), so a resume with a larger budget does not pay for them again.
        outstanding = [f for _, f in sent.values()] + [f for _, ts in blocks for _, f in ts]
        await asyncio.gather(*outstanding, return_exceptions=True)
        raise
    finally:
        outstanding = [f for _, f in sent.values()] + [f for _, ts in blocks for _, f in ts]
        for f in outstanding:
            f.cancel()
        if outstanding:
            await asyncio.gather(*outstanding, return_exceptions=True)


def shard_states(seeds: list[Record], fcfg: FilterConfig, shards: int) -> list[BootstrapState]:
    """The starting state of each loop: one named ``bs`` (today's ids), or ``shards`` named ``bs0``, ``bs1``, ..."""
    if shards == 1:
        return [BootstrapState.start(seeds, fcfg)]
    return [BootstrapState.start(seeds, fcfg, prefix=f"bs{k}") for k in range(shards)]


def shard_config(cfg: BootstrapConfig, k: int, shards: int) -> BootstrapConfig:
    """Loop ``k``'s settings: its own seed, its share of the target (with ``shard_overshoot``) and of the request
    cap. One shard is the single loop, unchanged."""
    if shards == 1:
        return cfg
    share = math.ceil(cfg.target_instructions * (1 + cfg.shard_overshoot) / shards)
    return cfg.model_copy(update={"seed": cfg.seed + k, "target_instructions": share,
                                  "max_generation_requests": math.ceil(cfg.max_generation_requests / shards)})


async def run_shards(states: list[BootstrapState], engine: Engine, cfg: BootstrapConfig, fcfg: FilterConfig,
                     emit: Callable[[StepResult], None], tick: Callable[[], None] = lambda: None) -> int:
    """``len(states)`` loops at once (see "Shards" in the module docstring), then the merge. Everything is emitted
    once, at the end, in a fixed order (each loop's rejections in loop order, then the merge's keeps and
    rejections), so a resumed run writes the same file; ``tick()`` is called whenever a loop made progress.
    Returns the tasks kept."""
    held: list[StepResult] = [StepResult() for _ in states]

    def collect(k: int) -> Callable[[StepResult], None]:
        def emit_k(result: StepResult) -> None:
            held[k].kept.extend(result.kept)
            held[k].rejected.extend(result.rejected)
            tick()
        return emit_k

    # One loop failing for good (the teacher is down, the budget is spent) stops the others the way one request
    # failing stops a stage: gather_or_cancel (a budget stop lets the requests already paid for finish first).
    await gather_or_cancel(run(state, engine, shard_config(cfg, k, len(states)), fcfg, collect(k))
                           for k, state in enumerate(states))
    out = StepResult(rejected=[r for h in held for r in h.rejected])
    tasks: list[list[list[Record]]] = []  # per loop, its tasks in order, each as its records
    for h in held:
        by_task: dict[str, list[Record]] = {}
        for rec in h.kept:
            by_task.setdefault(rec.task_id, []).append(rec)
        tasks.append(list(by_task.values()))
    # Each loop already checked its tasks against the seeds and its own earlier tasks: the merge compares tasks of
    # different loops only, through one index of the tasks kept so far.
    index = _novelty_index(fcfg)
    kept_tasks = 0
    for j in range(max((len(t) for t in tasks), default=0)):
        for k, loop_tasks in enumerate(tasks):
            if j >= len(loop_tasks):
                continue
            records = loop_tasks[j]
            if kept_tasks >= cfg.target_instructions:  # the margin's surplus: kept with its reason
                out.rejected.extend(Rejection(rec, "beyond_target", {"target": cfg.target_instructions}, STAGE)
                                    for rec in records)
                continue
            first = records[0]
            match = index.nearest(first.instruction)
            if index.is_duplicate(match):
                for rec in records:
                    out.rejected.append(Rejection(rec, "rouge_duplicate", {
                        "nearest_id": match.nearest_id, "nearest_instruction": match.nearest_text,
                        "rouge_l": match.score, "threshold": fcfg.rouge_threshold, "cross_shard": True}, STAGE))
                continue
            index.add(first.task_id, first.instruction)
            out.kept.extend(records)
            kept_tasks += 1
    emit(out)
    return kept_tasks
