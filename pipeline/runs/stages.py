"""The stages of a run, and ``run_stages``, which runs (or resumes) them in order inside one run session.

Each runner takes the open ``Run`` (``runs.store``), feeds the pure stage functions (``pipeline.stages``,
``pipeline.filters.chain``, ``pipeline.train``) and writes what they return into the run, batch by batch.

Resuming: finished stages are skipped; the stage in progress replays from its start with the request cache
answering every request that already succeeded, and its writers check that each replayed row equals the row on
disk before they append anything new (``io.files.JsonlWriter``). Replay is exact because every random choice is
seeded and every sampled request carries its own seed; a resume whose inputs changed (config, seed files,
templates, package version: ``runs.store.run_inputs``) is refused, and ``--force`` moves the unfinished stages'
files to ``<run>/attempts/`` and runs those stages from nothing.

Evolve: each round's candidates that pass elimination go through the filter chain (``evolve.final_filter``) before
they are written, with the input tasks and every evolved record accepted in earlier rounds as the reference pool;
this gives the same decisions as filtering the whole evolved set once at the end (the chain is incremental in file
order), and ``evolve/kept.jsonl`` never holds a record the chain would drop. Elimination rejections carry
``stage="evolve"``, filter rejections ``stage="filter"``. A record that passed elimination but not the filter
still became its lineage's new head: the filter decides what enters the dataset, not how lineages evolve.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import RunConfig
from ..errors import InputError
from ..filters.chain import Checks, filter_records
from ..filters.decontaminate import ContaminationIndex
from ..filters.safety import ToxicityFilter
from ..io.benchmarks import load_benchmarks
from ..io.classifiers import load_toxicity_scorer
from ..io.embeddings import load_embedder
from ..io.labelled import load_rows, load_templates
from ..io.files import iter_jsonl, read_jsonl, write_json_atomic, write_jsonl_atomic
from ..io.readers import load_seeds
from ..progress import Progress, no_progress
from ..records import BenchmarkItem, Record
from ..stages import bootstrap, conversation, evolve, heldout, judge, preferences, select, templatize
from ..stages.export import to_alpaca, to_messages, to_preference
from ..teachers import Teacher
from ..teachers.engine import gather_or_cancel
from ..train.evaluate import RESULTS, TABLE_JSON, TABLE_MD, EvalTask, evaluate, tasks_from_records
from ..train.tune import has_checkpoint, train
from .read import resolve_dataset, resolve_tune_dir
from .store import (DATASET_FILES, EVAL_DIR, HELDOUT_TASKS, PREFERENCES_FILE, SPLIT_FILE, TUNE_DIR, Run, is_done,
                    run_session)

STAGE_ORDER = ["templatize", "bootstrap", "evolve", "filter", "judge", "select", "conversation", "preferences",
               "export", "tune", "eval"]


def teacher_stages(cfg: RunConfig) -> set[str]:
    """The stages that need the run's teacher: the generating ones, the conversation stage, and the judge and the
    preferences stage unless they have teachers of their own."""
    own = cfg.judge.teacher is not None
    return ({"bootstrap", "evolve", "conversation"} | ({"judge"} if not own else set())
            | ({"preferences"} if not (own and cfg.preferences.teacher is not None) else set()))


def build_checks(cfg: RunConfig, heldout_tasks: list[Record] = ()) -> Checks:
    """The filter chain's parts that come from files and models: the benchmark index (``[decontaminate]``, plus the
    run's held-out human tasks as the benchmark "heldout") and the toxicity classifier (``[safety]``). Raises
    InputError for a bad benchmark or a missing extra."""
    index = None
    items = [BenchmarkItem("heldout", r.task_id or r.id, "\n".join((r.instruction, r.input, r.output)))
             for r in heldout_tasks]
    if cfg.decontaminate.benchmarks:
        items = load_benchmarks(cfg.decontaminate, cfg.resolve_path) + items
    if items:
        index = ContaminationIndex(items, n=cfg.decontaminate.ngram)
    toxicity = ToxicityFilter(load_toxicity_scorer(), cfg.safety.threshold) if cfg.safety.enabled else None
    return Checks(contamination=index, toxicity=toxicity)


def run_bootstrap(run: Run, teacher: Teacher, seeds: list[Record], progress: Progress = no_progress) -> None:
    teacher.run(bootstrap_stage(run, teacher, seeds, progress))


async def bootstrap_stage(run: Run, teacher: Teacher, seeds: list[Record], progress: Progress = no_progress) -> None:
    """The bootstrap stage as a coroutine on the engine's loop (it may run beside the evolve stage)."""
    teacher.stage(bootstrap.STAGE)
    cfg = run.cfg
    t0 = time.time()
    states = bootstrap.shard_states(seeds, cfg.filter, cfg.bootstrap.shards)
    files = run.stage_files(bootstrap.STAGE)
    rejected: Counter = Counter()
    kept = 0
    target = cfg.bootstrap.target_instructions

    def tick() -> None:
        progress(bootstrap.STAGE, min(sum(s.tasks_kept for s in states), target), target,
                 {"instances": kept, "rejected": sum(rejected.values()), "requests": teacher.usage.requests,
                  "cached": teacher.usage.cache_hits, "in flight": teacher.limit.in_flight})

    def emit(result: bootstrap.StepResult) -> None:
        nonlocal kept
        teacher.flush()  # the answers behind these records are durable before the records are
        files.write((r.to_dict() for r in result.kept), (r.to_dict() for r in result.rejected))
        kept += len(result.kept)
        rejected.update(r.reason for r in result.rejected)
        tick()

    progress(bootstrap.STAGE, 0, target, {})  # starts the stage's clock, so rates are per real minute
    tasks_kept = None
    try:
        if len(states) == 1:
            await bootstrap.run(states[0], teacher, cfg.bootstrap, cfg.filter, emit)
            tasks_kept = states[0].tasks_kept
        else:
            tasks_kept = await bootstrap.run_shards(states, teacher, cfg.bootstrap, cfg.filter, emit, tick)
    finally:
        files.close()
        stats: Counter = Counter()
        for s in states:
            stats.update(s.stats)
        run.record_stage(
            bootstrap.STAGE, kept, rejected, time.time() - t0,
            tasks_kept=tasks_kept if tasks_kept is not None else sum(s.tasks_kept for s in states),
            target_instructions=target,
            generation_requests=sum(s.requests for s in states),
            **({"shards": [{"tasks_kept": s.tasks_kept, "generation_requests": s.requests} for s in states]}
               if len(states) > 1 else {}),
            stats=dict(stats),
            usage=teacher.stage_usage(bootstrap.STAGE).as_dict(),
            engine=teacher.describe(),
            teacher_model=teacher.model_name,
        )


def evolve_inputs(run: Run, seeds: list[Record]) -> list[Record]:
    """The records ``evolve.source`` names: the seed tasks, or the bootstrap stage's kept records of this run."""
    if run.cfg.evolve.source == "seeds":
        return seeds
    path = run.kept_file("bootstrap")
    return [Record.from_dict(row) for row in read_jsonl(path)] if path.exists() else []


def run_evolve(run: Run, teacher: Teacher, records: list[Record], progress: Progress = no_progress,
               reference: list[Record] | None = None, checks: Checks | None = None) -> dict:
    return teacher.run(evolve_stage(run, teacher, records, progress, reference, checks))


async def evolve_stage(run: Run, teacher: Teacher, records: list[Record], progress: Progress = no_progress,
                       reference: list[Record] | None = None, checks: Checks | None = None) -> dict:
    """Evolve ``records`` (seed tasks or bootstrap kept records) for ``run.cfg.evolve.rounds`` rounds.

    ``reference`` starts the filter chain's novelty pool (default: ``records``, all of them, not only the
    ``max_items`` sample that is evolved); pass seeds + bootstrap records when both end up in one dataset.

    Writes ``<run>/evolve/{kept,rejected}.jsonl`` after each round and records the stage in the manifest
    (``run.record_stage("evolve", ...)``, also when interrupted). Returns the stage stats: per round and per
    operation attempts, passes, pass rate, failures by reason and mean word growth (``evolve.EvolveState.summary``)
    plus the filter chain's counts.
    """
    teacher.stage(evolve.STAGE)
    cfg = run.cfg.evolve
    t0 = time.time()
    state = evolve.EvolveState.start(records, cfg.max_items, random.Random(cfg.seed))
    reference = list(records if reference is None else reference)
    files = run.stage_files(evolve.STAGE)
    rejected: Counter = Counter()
    filter_rejected: Counter = Counter()
    summary: dict = {}
    counts: Counter = Counter()
    kept_by_round: Counter = Counter()

    def emit(res: evolve.RoundResult) -> None:
        filtered = evolve.final_filter(res.kept, reference, run.cfg.filter, checks) if res.kept else None
        accepted = list(filtered.kept) if filtered else []
        dropped = list(filtered.rejected) if filtered else []
        reference.extend(accepted)
        teacher.flush()  # the answers behind these records are durable before the records are
        files.write((r.to_dict() for r in accepted), (r.to_dict() for r in [*res.rejected, *dropped]))
        counts["evolved"] += len(res.kept)
        counts["kept"] += len(accepted)
        kept_by_round[res.stats.round if res.stats else state.round] += len(accepted)
        rejected.update(r.reason for r in res.rejected)
        filter_rejected.update(r.reason for r in dropped)
        progress(evolve.STAGE, state.round, cfg.rounds,
                 {"evolved": counts["evolved"], "kept": counts["kept"],
                  "rejected": sum(rejected.values()) + sum(filter_rejected.values()),
                  "active": len(state.active()), "in flight": teacher.limit.in_flight})

    try:
        progress(evolve.STAGE, 0, cfg.rounds, {"items": len(state.items)})
        await evolve.run(state, teacher, cfg, emit)
    finally:
        files.close()
        summary = state.summary()
        evolved, kept = counts["evolved"], counts["kept"]
        summary["filter"] = {"input": evolved, "kept": kept, "rejected": sum(filter_rejected.values()),
                             "rejected_by_reason": dict(filter_rejected.most_common()),
                             "lineage_aware": run.cfg.filter.lineage_aware,
                             "kept_by_round": {str(r): n for r, n in sorted(kept_by_round.items())}}
        run.record_stage(
            evolve.STAGE, kept, rejected + filter_rejected, time.time() - t0,
            input_items=len(state.items),
            rounds_run=state.round,
            rounds=cfg.rounds,
            evolved=evolved,
            stats=summary,
            usage=teacher.stage_usage(evolve.STAGE).as_dict(),
            teacher_model=teacher.model_name,
        )
    return summary


def run_filter(run: Run, seeds: list[Record], progress: Progress = no_progress, checks: Checks | None = None) -> None:
    """The final filter chain over everything generated (bootstrap and evolve, all rounds), against the seeds."""
    t0 = time.time()
    records = [Record.from_dict(row) for path in run.generated_files() for row in read_jsonl(path)]
    result = filter_records(records, run.cfg.filter, reference=seeds,
                            progress=lambda phase, done, total: progress("filter", done, total, {"phase": phase}),
                            checks=checks)
    files = run.stage_files("filter")
    try:
        files.write((r.to_dict() for r in result.kept), (r.to_dict() for r in result.rejected))
    finally:
        files.close()
    run.record_stage("filter", len(result.kept), Counter(r.reason for r in result.rejected), time.time() - t0,
                     input=len(records), stats=result.stats)


def run_judge(run: Run, engine: Teacher, progress: Progress = no_progress) -> None:
    engine.run(judge_stage(run, engine, progress))


async def judge_stage(run: Run, engine: Teacher, progress: Progress = no_progress) -> None:
    """Score every record of the stage before (filter's kept records, usually) with ``engine``, the run's teacher
    or ``[judge] teacher``'s, into ``<run>/judge/kept.jsonl`` (the same records, with ``scores``)."""
    engine.stage(judge.STAGE)
    cfg = run.cfg.judge
    t0 = time.time()
    records = run.input_records(judge.STAGE)
    files = run.stage_files(judge.STAGE)
    scored: list[Record] = []
    problems: Counter = Counter()

    def emit(batch: list[Record]) -> None:
        engine.flush()  # the answers behind these scores are durable before the records are
        files.write((r.to_dict() for r in batch), ())
        scored.extend(batch)
        progress(judge.STAGE, len(scored), len(records),
                 {"requests": engine.usage.requests, "cached": engine.usage.cache_hits,
                  "missing": sum(problems.values()), "in flight": engine.limit.in_flight})

    progress(judge.STAGE, 0, len(records), {})
    try:
        await judge.score_records(records, engine, cfg, emit, problems=problems)
    finally:
        files.close()
        run.record_stage(judge.STAGE, len(scored), Counter(), time.time() - t0, input=len(records),
                         scores=list(cfg.scores), missing=dict(problems.most_common()),
                         histograms={name: judge.histogram(scored, name) for name in cfg.scores},
                         usage=engine.stage_usage(judge.STAGE).as_dict(), judge_model=engine.model_name)


def read_scored(path: Path) -> list[Record]:
    """The records of a kept file, with their scores checked against the judge's scales: a score off its scale
    (a file edited by hand, or written by another tool) is an InputError naming the file, line and field."""
    records = []
    for line, row in iter_jsonl(path):
        scores = row.get("scores") or {}
        if not isinstance(scores, dict):
            raise InputError(str(path), "expected an object of scores", line=line, field="scores")
        for name, value in scores.items():
            scale = judge.SCALES.get(name)
            if value is None or scale is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not scale[0] <= value <= scale[1]:
                raise InputError(str(path), f"score {value!r} is off the {scale[0]}-{scale[1]} scale", line=line,
                                 field=f"scores.{name}")
        records.append(Record.from_dict(row))
    return records


def _remembered(embed: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    """``embed`` that embeds each distinct text once (the policy and the comparison table ask for the same)."""
    rows: dict[str, np.ndarray] = {}

    def embed_once(texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in rows]
        if new:
            rows.update(zip(new, embed(new)))
        return np.stack([rows[t] for t in texts]) if texts else embed([])

    return embed_once


def run_select(run: Run, progress: Progress = no_progress) -> None:
    """Apply ``[select] policies`` to the stage before's kept records (judge's, usually): ``<run>/select/kept.jsonl``
    and, with each dropped record's policy and figures, ``select/rejected.jsonl``. Every input is read and checked
    before anything is written."""
    t0 = time.time()
    cfg = run.cfg.select
    records = [r for path in run.stage_input(select.STAGE) if path.exists() for r in read_scored(path)]
    embed = _remembered(load_embedder(cfg.embedding)) if "diverse_top_k" in cfg.policies else None
    result = select.select_records(records, cfg, embed)
    comparison = select.compare_policies(records, cfg, embed)
    files = run.stage_files(select.STAGE)
    try:
        files.write((r.to_dict() for r in result.kept), (r.to_dict() for r in result.rejected))
    finally:
        files.close()
    progress(select.STAGE, len(result.kept), len(records), {})
    run.record_stage(select.STAGE, len(result.kept), Counter(r.reason for r in result.rejected), time.time() - t0,
                     input=len(records), policies=list(cfg.policies), score=cfg.score, stats=result.stats,
                     each_policy_alone=comparison)


def load_labelled(cfg: RunConfig) -> list[tuple[str, str, list, list]]:
    """Every labelled dataset of ``[templatize]`` with its templates: [(name, origin, rows, templates)], read and
    checked before a run writes anything (InputError naming the file, line and field)."""
    out = []
    directory = cfg.resolve_path(cfg.templatize.templates_dir)
    for k, src in enumerate(cfg.templatize.datasets):
        where = f"templatize.datasets.{k}"
        origin, rows = load_rows(src, cfg.resolve_path, where)
        out.append((src.label, origin, rows, load_templates(directory, src.task, src.templates or None, where)))
    if not out:
        raise InputError("config", "the templatize stage needs at least one [[templatize.datasets]]",
                         field="templatize.datasets")
    return out


def run_templatize(run: Run, labelled: list[tuple[str, str, list, list]], progress: Progress = no_progress) -> None:
    """Every labelled dataset through its templates into ``<run>/templatize/{kept,rejected}.jsonl``."""
    t0 = time.time()
    cfg = run.cfg.templatize
    files = run.stage_files(templatize.STAGE)
    kept, rejected, per_dataset = 0, Counter(), {}
    try:
        for done, (name, origin, rows, templates) in enumerate(labelled, start=1):
            res = templatize.templatize_dataset(rows, templates, name, list(cfg.shots), cfg.max_per_template,
                                                cfg.seed)
            files.write((r.to_dict() for r in res.kept), (r.to_dict() for r in res.rejected))
            kept += len(res.kept)
            rejected.update(r.reason for r in res.rejected)
            per_dataset[name] = {**res.stats, "origin": origin, "task": templates[0].task}
            progress(templatize.STAGE, done, len(labelled), {"records": kept})
    finally:
        files.close()
    run.record_stage(templatize.STAGE, kept, rejected, time.time() - t0, datasets=per_dataset,
                     shots=list(cfg.shots), max_per_template=cfg.max_per_template)


def run_conversation(run: Run, teacher: Teacher, progress: Progress = no_progress) -> None:
    teacher.run(conversation_stage(run, teacher, progress))


async def conversation_stage(run: Run, teacher: Teacher, progress: Progress = no_progress) -> None:
    """Grow the stage before's kept records into conversations: ``<run>/conversation/kept.jsonl`` holds every input
    record (with its new turns), ``rejected.jsonl`` every failed turn."""
    teacher.stage(conversation.STAGE)
    cfg = run.cfg.conversation
    t0 = time.time()
    records = run.input_records(conversation.STAGE)
    files = run.stage_files(conversation.STAGE)
    rejected: Counter = Counter()
    turns: Counter = Counter()
    done = 0

    def emit(batch: list[conversation.Converted]) -> None:
        nonlocal done
        teacher.flush()  # the answers behind these turns are durable before the records are
        files.write((c.record.to_dict() for c in batch), (r.to_dict() for c in batch for r in c.rejected))
        done += len(batch)
        rejected.update(r.reason for c in batch for r in c.rejected)
        turns.update(1 + len(c.record.turns) // 2 for c in batch)
        progress(conversation.STAGE, done, len(records),
                 {"multi-turn": sum(n for t, n in turns.items() if t > 1), "failed turns": sum(rejected.values()),
                  "requests": teacher.usage.requests, "in flight": teacher.limit.in_flight})

    progress(conversation.STAGE, 0, len(records), {})
    try:
        await conversation.extend_records(records, teacher, cfg, run.cfg.filter, emit)
    finally:
        files.close()
        run.record_stage(conversation.STAGE, done, rejected, time.time() - t0, input=len(records),
                         extended=len(conversation.sample(records, cfg)), target_turns=cfg.turns,
                         turns_per_conversation={str(k): v for k, v in sorted(turns.items())},
                         usage=teacher.stage_usage(conversation.STAGE).as_dict(), teacher_model=teacher.model_name)


def run_preferences(run: Run, generator: Teacher, judge_engine: Teacher, progress: Progress = no_progress) -> None:
    generator.run(preferences_stage(run, generator, judge_engine, progress))


async def preferences_stage(run: Run, generator: Teacher, judge_engine: Teacher,
                            progress: Progress = no_progress) -> None:
    """Preference pairs for the stage before's kept records (single-turn): ``<run>/preferences/kept.jsonl`` (one
    pair per row) and ``rejected.jsonl`` (the records that gave none, with the reason)."""
    for engine in {id(generator): generator, id(judge_engine): judge_engine}.values():
        engine.stage(preferences.STAGE)
    cfg = run.cfg.preferences
    t0 = time.time()
    records = run.input_records(preferences.STAGE)
    files = run.stage_files(preferences.STAGE)
    rejected: Counter = Counter()
    pairs: list[dict] = []
    total = len(preferences.sample(records, cfg))

    def emit(batch: list[preferences.Ranked]) -> None:
        generator.flush()
        judge_engine.flush()
        files.write((r.pair for r in batch if r.pair), (r.rejection.to_dict() for r in batch if r.rejection))
        pairs.extend(r.pair for r in batch if r.pair)
        rejected.update(r.rejection.reason for r in batch if r.rejection)
        progress(preferences.STAGE, len(pairs) + sum(rejected.values()), total,
                 {"pairs": len(pairs), "dropped": sum(rejected.values())})

    progress(preferences.STAGE, 0, total, {})
    try:
        await preferences.rank_records(records, generator, judge_engine, cfg, emit)
    finally:
        files.close()
        margins = [p["margin"] for p in pairs]
        run.record_stage(preferences.STAGE, len(pairs), rejected, time.time() - t0, input=total,
                         margins=preferences.margin_histogram(pairs),
                         mean_margin=round(sum(margins) / len(margins), 4) if margins else None,
                         chosen_is_original=sum(p["chosen_is_original"] for p in pairs),
                         usage=generator.stage_usage(preferences.STAGE).as_dict(),
                         teacher_model=generator.model_name, judge_model=judge_engine.model_name)


def run_export(run: Run, progress: Progress = no_progress) -> None:
    t0 = time.time()
    alpaca, chat, lineages = run.dataset_writers()
    turns: Counter = Counter()

    def write(batch: list[Record]) -> None:
        turns.update(1 + len(r.turns) // 2 for r in batch)
        start = lineages.count
        lineages.write_many([{"row": start + i + 1, "id": r.id, "lineage": heldout.lineage(r)}
                             for i, r in enumerate(batch)])
        alpaca.write_many(map(to_alpaca, batch))
        chat.write_many(map(to_messages, batch))

    with alpaca, chat, lineages:
        for source in run.final_files():
            batch: list[Record] = []
            for row in read_jsonl(source) if source.exists() else []:
                batch.append(Record.from_dict(row))
                if len(batch) >= 512:
                    write(batch)
                    batch = []
            write(batch)
        count = alpaca.count
    files = dict(DATASET_FILES)
    extra = {}
    pref_source = run.kept_file(preferences.STAGE)
    if run.is_done(preferences.STAGE) and pref_source.exists():
        pairs = run.preference_writer()
        with pairs:
            pairs.write_many(map(to_preference, read_jsonl(pref_source)))
        files["preferences"] = PREFERENCES_FILE
        extra["preference_pairs"] = pairs.count
    progress("export", count, count, {})
    run.record_stage("export", count, Counter(), time.time() - t0, files=files,
                     turns_per_row={str(k): v for k, v in sorted(turns.items())}, **extra)


def run_tune_stage(run: Run, progress: Progress = no_progress) -> None:
    """The "tune" stage of ``pipeline run``: tune on ``<run>/dataset`` into ``<run>/tune``. A run resumed after an
    interruption continues from the newest checkpoint of ``<run>/tune/checkpoints``."""
    t0 = time.time()
    out_dir = run.dir / TUNE_DIR
    resume = "last" if has_checkpoint(out_dir) else None
    if run.cfg.tune.method == "dpo":  # on the preference pairs, from the base or [tune.dpo] sft_adapter
        from ..train.dpo import train_dpo

        meta = train_dpo(run.dir / PREFERENCES_FILE, out_dir, run.cfg.tune, resume=resume, progress=progress)
    else:
        meta = train(resolve_dataset(run.dir), out_dir, run.cfg.tune, resume=resume, progress=progress)
    dropped = Counter(meta.get("dropped", {}))
    tr = meta.get("trainer", {})
    run.record_stage("tune", meta.get("train_rows", 0), dropped, time.time() - t0, method=run.cfg.tune.method,
                     heldout_rows=meta.get("heldout_rows", 0), base_model=meta.get("base_model_spec"),
                     global_step=tr.get("global_step"), train_loss=tr.get("train_loss"),
                     eval_loss=tr.get("eval_loss"), tokens_per_s=tr.get("tokens_per_s"),
                     files={"adapter": "tune/adapter", "log_csv": "tune/train_log.csv", "loss_png": "tune/loss.png",
                            "meta": "tune/tune_meta.json"})


def run_eval_stage(run: Run, progress: Progress = no_progress) -> None:
    """The "eval" stage of ``pipeline run``: ``<run>/tune`` against its base model, into ``<run>/eval``."""
    t0 = time.time()
    tune_dir = resolve_tune_dir(run.dir)
    judges = []

    def judge_factory():  # the judge's requests go through the run's cache and budget, and into the manifest
        judges.append(run.open_teacher(run.cfg.judge.teacher))
        return judges[-1]

    tasks = heldout_eval_tasks(run.dir)
    table = evaluate(tune_dir, run.dir / EVAL_DIR, run.cfg.eval, run.cfg.teacher, progress,
                     judge_factory=judge_factory, tasks=tasks,
                     tasks_source="held-out human tasks" if tasks is not None else "",
                     toxicity_threshold=run.cfg.safety.threshold)
    usage = {"usage": judges[0].usage.as_dict(), "teacher_model": judges[0].model_name} if judges else {}
    run.record_stage("eval", table["examples"], Counter(), time.time() - t0,
                     tasks_source=table["tasks_source"], models=table["models"], differences=table["differences"],
                     judge=table["judge"], **usage,
                     files={name: f"{EVAL_DIR}/{f}" for name, f in (("table_json", TABLE_JSON), ("table_md", TABLE_MD),
                                                                   ("results", RESULTS))})


def heldout_split(cfg: RunConfig, run_dir: Path, seeds: list[Record]
                  ) -> tuple[list[Record], list[Record], dict | None]:
    """(the seeds generation may see, the held-out human tasks, the split to store or None when nothing is held
    out). A run that already has ``split.json`` keeps its split; one of its task ids missing from the seeds now is
    an error (the fingerprint check names what changed)."""
    path = run_dir / SPLIT_FILE
    extra = load_seeds([cfg.resolve_path(p) for p in cfg.eval.heldout_files]) if cfg.eval.heldout_files else []
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        held = set(stored.get("heldout_task_ids", []))
        missing = held - {s.task_id or s.id for s in seeds}
        if missing:
            raise InputError(str(path), f"{len(missing)} held-out task ids are not in the seed files now (first: "
                             f"{sorted(missing)[0]}); the seeds changed since this run started",
                             field="heldout_task_ids")
    else:
        held = heldout.split_tasks(seeds, cfg.heldout_share(), cfg.eval.heldout_seed)
    train, out = heldout.partition(seeds, held)
    if not held and not extra:
        return seeds, [], None
    split = {"by": "task", "share": cfg.heldout_share(), "seed": cfg.eval.heldout_seed,
             "seed_tasks": len({s.task_id or s.id for s in seeds}), "seed_tasks_held_out": len(held),
             "heldout_task_ids": sorted(held), "files": list(cfg.eval.heldout_files),
             "eval_tasks": len({r.task_id or r.id for r in out + extra})}
    return train, out + extra, split


def write_split(run_dir: Path, split: dict, tasks: list[Record]) -> None:
    """``split.json`` and ``heldout/tasks.jsonl``, written once: a resumed run leaves them as they are."""
    if not (run_dir / SPLIT_FILE).is_file():
        write_jsonl_atomic(run_dir / HELDOUT_TASKS, (r.to_dict() for r in tasks))
        write_json_atomic(run_dir / SPLIT_FILE, split)


def heldout_eval_tasks(run_dir: Path) -> list[EvalTask] | None:
    """The run's held-out human tasks as evaluation tasks, or None when the run holds none out."""
    path = run_dir / HELDOUT_TASKS
    if not path.is_file():
        return None
    return tasks_from_records([Record.from_dict(row) for row in read_jsonl(path)])


def run_stages(cfg: RunConfig, run_dir: Path, config_path: str | None = None, stages: list[str] | None = None,
               progress: Progress = no_progress, force: bool = False) -> dict:
    """Validate every input, then run (or resume) the stages in order. Returns the manifest.

    Raises InputError before anything is written when an input is bad; BudgetExhausted, TeacherError or
    KeyboardInterrupt leave the run resumable, with its manifest saying why it stopped.
    """
    wanted = stages or list(cfg.stages)
    stages = [s for s in STAGE_ORDER if s in wanted]
    all_seeds = load_seeds([cfg.resolve_path(p) for p in cfg.seed_files])
    seeds, heldout_tasks, split = heldout_split(cfg, run_dir, all_seeds)
    pending = [s for s in stages if not is_done(run_dir, s)]
    labelled = load_labelled(cfg) if "templatize" in pending else []
    checks = build_checks(cfg, heldout_tasks) if {"evolve", "filter"} & set(pending) else Checks()
    # The teacher (a model in memory, a GPU engine) is built only when a stage that still has to run needs it.
    need_teacher = bool(teacher_stages(cfg) & set(pending))
    with run_session(cfg, run_dir, config_path, force=force, need_teacher=need_teacher,
                     progress=progress) as (run, teacher):
        run.manifest["seeds"] = {"files": cfg.seed_files, "tasks": len({s.task_id for s in all_seeds}),
                                 "generation_tasks": len({s.task_id for s in seeds}),
                                 "paths": [str(cfg.resolve_path(p).resolve()) for p in cfg.seed_files]}
        if split is not None:
            write_split(run.dir, split, heldout_tasks)
            run.manifest["heldout"] = {k: split[k] for k in ("share", "seed_tasks_held_out", "eval_tasks", "files")}
        if force:  # a forced resume restarts every unfinished stage from nothing, never appends to its files
            for stage in stages:
                if not run.is_done(stage):
                    run.set_aside(stage)
        if "templatize" in stages and not run.is_done("templatize"):  # first: it needs no teacher, and its
            run_templatize(run, labelled, progress)                    # tasks may seed the bootstrap
            run.mark_done("templatize")
        prompt_seeds = seeds  # what the bootstrap and evolve stages show the teacher; the filter's reference stays
        if "templatize" in stages and cfg.templatize.seed_bootstrap:  # the seed files' tasks
            prompt_seeds = seeds + templatize.seed_tasks(run.input_records("templatize"))
        together = [s for s in ("bootstrap", "evolve") if s in stages and not run.is_done(s)]
        if len(together) == 2 and cfg.evolve.source == "seeds":
            # Neither needs the other's output: run both at once on the one engine, so the teacher is kept busy
            # through the ends of both (each stage still writes, records and finishes on its own).
            async def done_when(stage: str, coro) -> None:
                await coro
                run.mark_done(stage)

            teacher.run(gather_or_cancel([
                done_when("bootstrap", bootstrap_stage(run, teacher, prompt_seeds, progress)),
                done_when("evolve", evolve_stage(run, teacher, evolve_inputs(run, prompt_seeds), progress,
                                                 checks=checks))]))
        for stage in stages:
            if run.is_done(stage):
                continue
            if stage == "bootstrap":
                run_bootstrap(run, teacher, prompt_seeds, progress)
            elif stage == "evolve":
                run_evolve(run, teacher, evolve_inputs(run, prompt_seeds), progress, checks=checks)
            elif stage == "filter":
                run_filter(run, seeds, progress, checks)
            elif stage == "judge":
                run_judge(run, teacher if cfg.judge.teacher is None else run.open_teacher(cfg.judge.teacher),
                          progress)
            elif stage == "select":
                run_select(run, progress)
            elif stage == "conversation":
                run_conversation(run, teacher, progress)
            elif stage == "preferences":
                own = cfg.preferences.teacher
                run_preferences(run, teacher if own is None else run.open_teacher(own),
                                teacher if cfg.judge.teacher is None else run.open_teacher(cfg.judge.teacher), progress)
            elif stage == "export":
                run_export(run, progress)
            elif stage == "tune":
                if teacher is not None:
                    teacher.close()  # generation is over: its model leaves the GPU before training needs it
                run_tune_stage(run, progress)
            elif stage == "eval":
                if teacher is not None:
                    teacher.close()
                run_eval_stage(run, progress)
            run.mark_done(stage)
    return run.manifest


def evolve_file(cfg: RunConfig, run_dir: Path, in_file: Path, records: list[Record], config_path: str | None = None,
                progress: Progress = no_progress, force: bool = False) -> dict:
    """``pipeline evolve``: the Evolve stage alone over the records of ``in_file``, in a run directory of its own,
    with the same machinery as ``run_stages`` (lock, request cache, budget, resume). Returns the manifest.

    Resuming (same ``--out``) replays the stage with the cache answering every request that already succeeded;
    the input file must be the same one (its SHA-256 is in the manifest) unless ``force``.
    """
    digest = hashlib.sha256(Path(in_file).read_bytes()).hexdigest()

    def same_input(manifest: dict) -> None:
        old = manifest.get("input")
        if old and old.get("sha256") != digest and not force:
            raise InputError(str(in_file), f"differs from the input this run started with ({old.get('file')}); "
                             "resume with the same file, or pass --force", field="input")

    checks = build_checks(cfg)
    with run_session(cfg, run_dir, config_path, force=force, check=same_input, progress=progress) as (run, teacher):
        run.manifest["input"] = {"file": str(in_file), "sha256": digest, "records": len(records),
                                 "tasks": len({r.task_id or r.id for r in records})}
        if not run.is_done(evolve.STAGE):
            if force:
                run.set_aside(evolve.STAGE)
            run_evolve(run, teacher, records, progress, checks=checks)
            run.mark_done(evolve.STAGE)
    return run.manifest
