"""Self-Instruct bootstrap: grow new tasks from seed tasks with a teacher.

One ``step`` of the loop:
  1. build ``request_batch_size`` prompts, each listing in-context instructions sampled from the seeds and from
     the machine-generated tasks accepted so far, and ask the teacher to continue the numbered list;
  2. parse the new items (a response cut by the length limit loses its last item);
  3. filter each item with the instruction heuristics and the ROUGE-L novelty check against the pool, adding
     survivors to the pool at once so later items and prompts see them;
  4. ask the teacher whether each accepted instruction is a classification task;
  5. generate an instance for each (output-first for classification, input-first otherwise) and filter it with
     the instance and task rules of the filter chain (``filters.heuristics``), so every task this stage keeps
     is one the filter stage keeps too, and the target counts tasks that reach the dataset.

Steps are pure functions of (state, teacher, config): the caller owns all file I/O.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from ..config import BootstrapConfig, FilterConfig
from ..filters.heuristics import InstructionFilters, check_instance, check_task_instances
from ..filters.novelty import NoveltyIndex
from ..prompts import render
from ..records import Record, Rejection
from ..teachers import ChatRequest, Teacher
from .instances import generate_instances
from .parsing import split_numbered_list

STAGE = "bootstrap"


@dataclass
class BootstrapState:
    seed_instructions: list[str]
    index: NoveltyIndex
    machine_instructions: list[str] = field(default_factory=list)
    tasks_kept: int = 0
    next_task: int = 0
    requests: int = 0
    stats: Counter = field(default_factory=Counter)

    @classmethod
    def start(cls, seeds: list[Record], fcfg: FilterConfig) -> "BootstrapState":
        # Exact nearest for every candidate: the bootstrap pool is small, and kept records carry their nearest match.
        index = NoveltyIndex(fcfg.rouge_threshold, use_stemmer=fcfg.use_stemmer, unicode=fcfg.unicode_tokens,
                             exact_nearest=True)
        instructions: list[str] = []
        seen: set[str] = set()
        for rec in seeds:
            if rec.task_id not in seen:
                seen.add(rec.task_id)
                instructions.append(rec.instruction)
                index.add(rec.task_id, rec.instruction)
        return cls(seed_instructions=instructions, index=index)

    def done(self, cfg: BootstrapConfig) -> bool:
        return self.tasks_kept >= cfg.target_instructions or self.requests >= cfg.max_generation_requests


@dataclass
class StepResult:
    kept: list[Record] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def _prompt(state: BootstrapState, cfg: BootstrapConfig, rng: random.Random) -> ChatRequest:
    n_machine = min(cfg.num_machine_in_prompt, len(state.machine_instructions))
    n_seed = min(cfg.num_prompt_instructions - n_machine, len(state.seed_instructions))
    shown = rng.sample(state.machine_instructions, n_machine) + rng.sample(state.seed_instructions, n_seed)
    rng.shuffle(shown)
    text = render("bootstrap_instructions", tasks=shown, count=cfg.new_per_request)
    return ChatRequest(messages=[{"role": "user", "content": text}], decoding=cfg.generation)


def _reject(stage_result: StepResult, state: BootstrapState, rec: Record, reason: str, **details) -> None:
    state.stats[f"rejected:{reason}"] += 1
    stage_result.rejected.append(Rejection(rec, reason, details, STAGE))


def step(state: BootstrapState, teacher: Teacher, cfg: BootstrapConfig, fcfg: FilterConfig,
         rng: random.Random) -> StepResult:
    result = StepResult()
    filters = InstructionFilters(fcfg)
    n_requests = min(cfg.request_batch_size, cfg.max_generation_requests - state.requests)
    requests = [_prompt(state, cfg, rng) for _ in range(n_requests)]
    completions = teacher.generate(requests)
    state.requests += len(requests)

    # 1-3: parse and filter instructions, growing the pool as we go.
    accepted: list[Record] = []
    for request, completion in zip(requests, completions):
        state.stats["responses"] += 1
        response_id = f"bs-response-{state.stats['responses']:06d}"
        if not completion.text.strip():
            _reject(result, state, Record(id=response_id, instruction="", source=STAGE), "empty_completion",
                    finish_reason=completion.finish_reason)
            continue
        items, cut = split_numbered_list(completion.text, completion.finish_reason)
        if cut is not None:  # the length limit cut the last item short
            _reject(result, state, Record(id=f"{response_id}-cut", instruction=cut, source=STAGE), "truncated",
                    finish_reason="length")
        if not items:
            _reject(result, state, Record(id=response_id, instruction="", source=STAGE,
                                          meta={"response": completion.text[:2000]}), "unparseable_response")
            continue
        state.stats["parsed_instructions"] += len(items)
        prompt_text = " ".join(request.messages[-1]["content"].lower().split())
        for text in items:
            task_id = f"bs-{state.next_task:06d}"
            state.next_task += 1
            rec = Record(id=task_id, task_id=task_id, instruction=text, source=STAGE,
                         teacher_model=teacher.model_name)
            if " ".join(text.lower().split()) in prompt_text:  # copied back from the prompt (an example, the ask)
                _reject(result, state, rec, "echoed_prompt")
                continue
            verdict = filters.check(text)
            if verdict is not None:
                _reject(result, state, rec, verdict[0], **verdict[1])
                continue
            match = state.index.nearest(text)
            rec.nearest_id, rec.nearest_instruction, rec.rouge_l = match.nearest_id, match.nearest_text, match.score
            if state.index.is_duplicate(match):
                _reject(result, state, rec, "rouge_duplicate", nearest_id=match.nearest_id,
                        nearest_instruction=match.nearest_text, rouge_l=match.score, threshold=fcfg.rouge_threshold)
                continue
            state.index.add(task_id, text)
            accepted.append(rec)
    if not accepted:
        return result

    # 4-5: classification identification and instance generation, then the instance filters per task.
    generated = generate_instances(accepted, teacher, cfg)
    state.stats.update(generated.stats)
    for rec, reason, details in generated.rejected:
        _reject(result, state, rec, reason, **details)
    by_task: dict[str, list[Record]] = {t.id: [] for t in accepted}
    for inst in generated.kept:
        by_task[inst.task_id].append(inst)
    for task in accepted:
        candidates = []
        for inst in by_task[task.id]:
            verdict = check_instance(inst, fcfg)
            if verdict is not None:
                _reject(result, state, inst, verdict[0], **verdict[1])
            else:
                candidates.append(inst)
        kept, dropped = check_task_instances(candidates, min(cfg.max_instances_per_task, fcfg.max_instances_per_task))
        for inst, reason, details in dropped:
            _reject(result, state, inst, reason, **details)
        if kept:
            state.tasks_kept += 1
            state.machine_instructions.append(task.instruction)
            state.stats["kept_instances"] += len(kept)
            result.kept.extend(kept)
        else:
            state.stats["tasks_without_instance"] += 1
    return result
