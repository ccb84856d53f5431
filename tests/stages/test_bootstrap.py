"""The bootstrap stage keeps only what the filter stage keeps: both use one set of instance rules, so the target
counts tasks that reach the dataset."""
from pipeline.config import BootstrapConfig, FilterConfig
from pipeline.filters.chain import filter_records
from pipeline.io.readers import load_seed_file
from pipeline.stages import bootstrap
from pipeline.teachers import Completion, Engine
from tests.conftest import OUR_SEEDS

INSTRUCTIONS = [
    "Describe the water cycle for a ten year old child.",
    "Suggest three names for a bakery that sells only bread.",
    "Explain why leaves change colour in the autumn months.",
    "Give two tips for sleeping better during a heat wave.",
    "Plan a one day walking tour of an old harbour town.",
    "Outline the steps to repot a small cactus safely at home.",
]
ANSWERS = {  # by the instruction's first word
    "Describe": "Water rises as vapour, forms clouds and falls again as rain.",
    "Suggest": "As an AI language model, I would pick Crumb, Loaf and Rise.",  # AI boilerplate
    "Explain": "Leaves lose chlorophyll. " * 6,  # a loop: repeated n-grams
    "Give": "I can't help but recommend a cool shower and a fan by the bed.",  # not a refusal
    "Plan": "Start at the quay, walk the old walls, and end at the lighthouse.",
    "Outline": "I'm sorry, I cannot help with that.",  # a refusal
}


class ScriptedBackend:
    """Answers generation prompts with the six instructions and each task's request by its first word."""

    backend = model_name = "scripted"
    max_parallel = None
    cut = False  # answer generation prompts as if the length limit cut a seventh item

    async def send(self, r):
        text = r.messages[-1]["content"]
        if text.startswith("Here are some example tasks"):
            reply = "\n".join(f"{k}. {t}" for k, t in enumerate(INSTRUCTIONS, start=1))
            if self.cut:
                return Completion(reply + "\n7. Write a haiku about", "length", 10, 10)
        else:
            reply = ANSWERS[text.split()[0]]
        return Completion(reply, "stop", 10, 10)

    async def aclose(self):
        pass


def one_request(backend, fcfg=None):
    """Bootstrap over one generation request (target above what it can give, cap of one request)."""
    seeds = load_seed_file(OUR_SEEDS)
    fcfg = fcfg or FilterConfig()
    state = bootstrap.BootstrapState.start(seeds, fcfg)
    result = bootstrap.StepResult()

    def emit(r):
        result.kept.extend(r.kept)
        result.rejected.extend(r.rejected)

    engine = Engine(backend)
    try:
        engine.run(bootstrap.run(state, engine, BootstrapConfig(request_batch_size=1, max_generation_requests=1,
                                                                target_instructions=100), fcfg, emit))
    finally:
        engine.close()
    return seeds, state, result


def test_bootstrap_keeps_only_what_the_filter_stage_keeps():
    fcfg = FilterConfig()
    seeds, state, result = one_request(ScriptedBackend(), fcfg)
    reasons = {r.record.instruction.split()[0]: r.reason for r in result.rejected}
    assert reasons == {"Suggest": "ai_boilerplate", "Explain": "repeated_ngrams", "Outline": "refusal"}
    kept_tasks = {r.task_id for r in result.kept}
    assert state.tasks_kept == len(kept_tasks) == 3
    # The filter stage, over what bootstrap kept and against the same seeds, drops none of it.
    final = filter_records(result.kept, fcfg, reference=seeds)
    assert final.rejected == [] and {r.task_id for r in final.kept} == kept_tasks


def test_a_cut_response_loses_its_last_item_once():
    backend = ScriptedBackend()
    backend.cut = True
    _, state, result = one_request(backend)
    cut = [r for r in result.rejected if r.reason == "truncated"]
    assert [r.record.instruction for r in cut] == ["Write a haiku about"]
    assert state.tasks_kept == 3  # the six complete items were all parsed


class VariedBackend:
    """New instructions derived from the prompt itself (the same prompt always gets the same answer), each request
    answered after a random delay: the order answers arrive in differs from run to run."""

    backend = model_name = "varied"
    max_parallel = None

    def __init__(self, delay_seed: int):
        import random

        self.rng = random.Random(delay_seed)
        self.prompts: list[str] = []

    async def send(self, r):
        import asyncio
        import hashlib

        text = r.messages[-1]["content"]
        if text.startswith("Here are some example tasks"):
            self.prompts.append(text)
        await asyncio.sleep(self.rng.uniform(0, 0.02))
        if text.startswith("Here are some example tasks"):
            vocab = ["river", "copper", "lantern", "meadow", "orbit", "pepper", "quartz", "saddle", "tundra",
                     "velvet", "walnut", "yarrow", "harbor", "glacier", "falcon", "ember", "violin", "cactus",
                     "marble", "thunder", "pilgrim", "oyster", "canyon", "biscuit", "comet", "ledger", "mosaic",
                     "nectar", "parsley", "raven", "signal", "timber"]
            items = []
            for k in range(10):  # ten unrelated instructions, fixed by the prompt's text
                h = hashlib.sha256(f"{k}:{text}".encode()).digest()
                items.append("Explain " + " ".join(vocab[b % len(vocab)] for b in h[:9]))
            return Completion("\n".join(f"{k}. {t}" for k, t in enumerate(items, 1)), "stop", 10, 10)
        return Completion(f"An answer about {text[:40]}", "stop", 10, 10)

    async def aclose(self):
        pass


def _stream(delay_seed: int, target: int, window: int = 4):
    seeds = load_seed_file(OUR_SEEDS)
    fcfg = FilterConfig()
    state = bootstrap.BootstrapState.start(seeds, fcfg)
    emitted: list[tuple[str, str]] = []
    backend = VariedBackend(delay_seed)
    engine = Engine(backend, concurrency=16)
    try:
        engine.run(bootstrap.run(state, engine, BootstrapConfig(request_batch_size=window, new_per_request=10,
                                                                target_instructions=target), fcfg,
                                 lambda r: emitted.extend([("kept", x.id) for x in r.kept] +
                                                          [(x.reason, x.record.id) for x in r.rejected])))
    finally:
        engine.close()
    return state, emitted, backend


def test_streaming_result_does_not_depend_on_answer_order_and_meets_the_target_exactly():
    state_a, out_a, backend = _stream(delay_seed=1, target=77)
    state_b, out_b, _ = _stream(delay_seed=2, target=77)
    assert out_a == out_b  # same records, same order, whatever order the answers came back in
    kept_tasks = {rid.rsplit("-", 1)[0] for kind, rid in out_a if kind == "kept"}
    assert state_a.tasks_kept == len(kept_tasks) == 77
    # After the first window, prompts show machine-generated instructions (2 of 8), as Self-Instruct does.
    machine = set(state_a.machine_instructions)
    shown = [sum(line.removeprefix("- ") in machine for line in p.splitlines()) for p in backend.prompts]
    # (Counted, not in order: the backend sees prompts in the order the engine happens to send them.)
    assert len(shown) > 4 and shown.count(0) == 4 and all(n == 2 for n in shown if n)


class FirstTaskFailsBackend(VariedBackend):
    """One request at a time (as the embedded model): the first task's answer is cut by the length limit, every
    other answer is fine."""

    max_parallel = 1

    async def send(self, r):
        c = await super().send(r)
        text = r.messages[-1]["content"]
        if text.startswith("Here are some example tasks"):
            self.generations += 1
            if self.generations == 1:  # the first answer lists one task only
                return Completion(c.text.splitlines()[0], "stop", 10, 10)
            return c
        if self.first_answer is None:
            self.first_answer = text
        if text == self.first_answer:
            return Completion(c.text, "length", 10, 10)
        return c


def test_generation_first_does_not_starve_instances_when_the_first_task_fails():
    """Generation requests go first in the engine; an early lost task must not make the stage read its keep rate
    as 0 and generate without end while the instance requests wait."""
    seeds = load_seed_file(OUR_SEEDS)
    fcfg = FilterConfig()
    state = bootstrap.BootstrapState.start(seeds, fcfg)
    backend = FirstTaskFailsBackend(delay_seed=3)
    backend.first_answer, backend.generations = None, 0
    engine = Engine(backend, concurrency=1)
    try:
        engine.run(bootstrap.run(state, engine, BootstrapConfig(request_batch_size=2, new_per_request=10,
                                                                target_instructions=3, classification="rules"),
                                 fcfg, lambda r: None))
    finally:
        engine.close()
    assert state.tasks_kept == 3 and state.requests <= 3


class JsonBackend(ScriptedBackend):
    """A server with JSON-schema structured outputs: a generation request that carries the list format gets
    ``{"instructions": [...]}``; everything else as ScriptedBackend."""

    structured = "json_schema"
    formats: list = []

    async def send(self, r):
        import json

        self.formats.append(r.format)
        if r.messages[-1]["content"].startswith("Here are some example tasks") and r.format is not None:
            assert 'Reply with JSON only, in the form {"instructions": [...]}' in r.messages[-1]["content"]
            return Completion(json.dumps({"instructions": INSTRUCTIONS}), "stop", 10, 10)
        return await super().send(r)


def test_structured_generation_is_parsed_as_json_with_the_same_decisions():
    _, text_state, text_result = one_request(ScriptedBackend())
    backend = JsonBackend()
    _, state, result = one_request(backend)
    assert backend.formats[0] is not None and backend.formats[0].name == "instructions_10"
    assert state.stats["parsed_as_json"] == 1 and state.stats["parsed_as_text"] == 0
    assert text_state.stats["parsed_as_text"] == 1
    assert [r.instruction for r in result.kept] == [r.instruction for r in text_result.kept]
    assert state.tasks_kept == text_state.tasks_kept == 3


class SharedFirstBackend(VariedBackend):
    """Every generation answer starts with the same three instructions, then seven of its own: independent loops
    all find those three, and the merge must keep them once."""

    COMMON = ["Name three rivers that flow through more than two countries.",
              "Write a polite note asking a neighbour to trim their hedge.",
              "Convert a recipe for four people into one for ten people."]

    async def send(self, r):
        c = await super().send(r)
        if r.messages[-1]["content"].startswith("Here are some example tasks"):
            own = c.text.splitlines()[:7]
            items = self.COMMON + [line.split(". ", 1)[1] for line in own]
            return Completion("\n".join(f"{k}. {t}" for k, t in enumerate(items, 1)), "stop", 10, 10)
        return c


def _shards(delay_seed: int, shards: int, target: int):
    seeds = load_seed_file(OUR_SEEDS)
    fcfg = FilterConfig()
    states = bootstrap.shard_states(seeds, fcfg, shards)
    out = bootstrap.StepResult()
    engine = Engine(SharedFirstBackend(delay_seed), concurrency=16)

    def emit(r):
        out.kept.extend(r.kept)
        out.rejected.extend(r.rejected)
    try:
        kept = engine.run(bootstrap.run_shards(states, engine, BootstrapConfig(
            request_batch_size=2, new_per_request=10, target_instructions=target), fcfg, emit))
    finally:
        engine.close()
    return kept, out


def test_sharded_bootstrap_is_deterministic_and_merges_the_loops_without_duplicates():
    kept_a, out_a = _shards(delay_seed=1, shards=3, target=20)
    kept_b, out_b = _shards(delay_seed=2, shards=3, target=20)
    rows = lambda out: ([r.id for r in out.kept], [(x.reason, x.record.id) for x in out.rejected])  # noqa: E731
    assert rows(out_a) == rows(out_b)  # whatever order the answers came back in
    tasks = list(dict.fromkeys(r.task_id for r in out_a.kept))
    assert kept_a == len(tasks) == 20
    # The three loops each kept the shared instructions; the merge kept them once (from loop 0, first in order).
    assert {t[:3] for t in tasks} == {"bs0", "bs1", "bs2"}
    instructions = [r.instruction for r in out_a.kept]
    for common in SharedFirstBackend.COMMON:
        assert common in instructions
        assert len({r.task_id for r in out_a.kept if r.instruction == common}) == 1
    cross = [x for x in out_a.rejected if x.details.get("cross_shard")]
    assert {x.record.instruction for x in cross} == set(SharedFirstBackend.COMMON)
    assert {x.record.task_id[:3] for x in cross} == {"bs1", "bs2"}
    assert all(x.reason == "rouge_duplicate" and x.details["rouge_l"] > 0.7 for x in cross)
    # 3 loops of ceil(20 x 1.25 / 3) = 9 tasks, less 6 cross-loop duplicates, is 21: one task past the target.
    beyond = {x.record.task_id for x in out_a.rejected if x.reason == "beyond_target"}
    assert len(beyond) == 1


def test_one_shard_is_the_single_loop():
    seeds = load_seed_file(OUR_SEEDS)
    [state] = bootstrap.shard_states(seeds, FilterConfig(), 1)
    assert state.prefix == "bs"
    cfg = BootstrapConfig(target_instructions=10, seed=5)
    assert bootstrap.shard_config(cfg, 0, 1) == cfg
    third = bootstrap.shard_config(cfg, 2, 3)
    assert third.seed == 7 and third.target_instructions == 5  # ceil(10 x 1.25 / 3)
