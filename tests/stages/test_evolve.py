"""Evolve stage (Evol-Instruct): templates, parsing, elimination, pool/retry/caps, and real runs with the embedded
teacher (in-process and behind a real llama.cpp server)."""
from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from pipeline.stages import evolve
from pipeline.config import EVOLVE_OPERATIONS, EvolveConfig, load_config
from pipeline.stages.evolve import (LEAK_PHRASES, EvolveState, LeakDetector, check_answer, normalize, parse_equal,
                                    parse_rewrite)
from pipeline.prompts import PROMPTS_DIR, render_messages
from pipeline.records import Record
from pipeline.teachers import ChatRequest, Completion, Engine
from tests.conftest import OUR_SEEDS, run_cli

# ----------------------------------------------------------------------------------------------------------------
# A scripted teacher, ONLY for the deterministic pool / retry / cap / elimination-order tests below: the real
# teacher is too weak and random to make a given evolution fail or pass on purpose. Everything else in this file
# (templates, real runs) uses the real embedded model.


class ScriptedTeacher:
    """A teacher backend (``async send``) with replies chosen by a test function, behind the real ``Engine``.

    ``rewrite(instruction, operation, round_no) -> str`` gives the rewrite reply for a pool head;
    ``answer(prompt) -> str`` the answer; ``judge(first, second) -> str`` the equality judgment. Only for testing
    the pool, retry and cap logic of ``pipeline.stages.evolve``; never used for figures.
    """

    backend = "scripted"
    model_name = "scripted"
    max_parallel = None

    def __init__(self, rewrite, answer=lambda prompt: "A complete and helpful answer " + "word " * 30,
                 judge=lambda first, second: "Not Equal", rewrite_finish="stop", delay=None):
        self.rewrite, self.answer, self.judge, self.rewrite_finish = rewrite, answer, judge, rewrite_finish
        self.delay = delay  # delay(phase, round, sample_key) -> seconds before the answer
        self.calls: Counter = Counter()  # (phase, round) -> requests
        self.log: list[tuple[str, str, str]] = []  # ("sent" | "answered", phase, sample key), in time order

    @staticmethod
    def _given(messages) -> tuple[str, str]:
        last = messages[-1]["content"]
        m = re.search(r"#Given Prompt#:\n(.*?)(?:\n#Input#[^\n]*\n.*?)?\n\n(?:Rewrite|Write a brand-new)", last, re.S)
        op = next(op for op in EVOLVE_OPERATIONS if _template_signature(op) == messages[0]["content"])
        return m.group(1), op

    async def send(self, r: ChatRequest) -> Completion:
        first = r.messages[0]["content"]
        phase = ("rewrite" if "prompt rewriter" in first or "prompt creator" in first
                 else "judge" if first.startswith("You compare two tasks") else "answer")
        rnd = int(re.search(r"-r(\d+)$", r.sample_key).group(1))
        self.calls[(phase, rnd)] += 1
        self.log.append(("sent", phase, r.sample_key))
        if self.delay:
            await asyncio.sleep(self.delay(phase, rnd, r.sample_key))
        self.log.append(("answered", phase, r.sample_key))
        if phase == "rewrite":
            instruction, op = self._given(r.messages)
            return Completion(self.rewrite(instruction, op, rnd), self.rewrite_finish, 10, 10)
        if phase == "judge":
            text = r.messages[-1]["content"]
            first_t, second_t = re.match(r"First task:\n(.*)\n\nSecond task:\n(.*)\n\nAre", text, re.S).groups()
            return Completion(self.judge(first_t, second_t), "stop", 10, 2)
        return Completion(self.answer(r.messages[-1]["content"]), "stop", 10, 40)

    async def aclose(self) -> None:
        pass


def evolve_round(state: EvolveState, teacher: ScriptedTeacher, cfg: EvolveConfig) -> evolve.RoundResult:
    """One round of the real stage coroutine through the real engine."""
    engine = Engine(teacher, concurrency=64)
    out: list[evolve.RoundResult] = []
    try:
        engine.run(evolve.run(state, engine, cfg, out.append, rounds=1))
    finally:
        engine.close()
    return out[0] if out else evolve.RoundResult()


def _template_signature(op: str) -> str:
    return render_messages(f"evolve_{op}", instruction="x", input="")[0]["content"]


def _seeds(n: int = 3) -> list[Record]:
    texts = ["Write a short story about a lost key.", "Explain how a refrigerator keeps food cold.",
             "List five uses for baking soda at home.", "Describe the water cycle to a child.",
             "Suggest a name for a new coffee shop."]
    return [Record(id=f"s{k}", task_id=f"s{k}", instruction=t, output="seed answer") for k, t in enumerate(texts[:n])]


def _cfg(**kw) -> EvolveConfig:
    return EvolveConfig(**{"min_parent_overlap": 0.3, **kw})


# ----------------------------------------------------------------------------------------------------------------
# Templates and the leak list


@pytest.mark.parametrize("op", EVOLVE_OPERATIONS)
def test_operation_templates_render_with_few_shot(op):
    msgs = render_messages(f"evolve_{op}", instruction="Sort the numbers below.", input="4, 1, 3")
    roles = [m["role"] for m in msgs]
    assert roles[0] == "system" and roles[-1] == "user" and "assistant" in roles  # a few-shot turn
    assert "Sort the numbers below." in msgs[-1]["content"] and "4, 1, 3" in msgs[-1]["content"]
    assert "only" in msgs[-1]["content"].lower()  # reply with the new instruction only
    no_input = render_messages(f"evolve_{op}", instruction="Name a colour.", input="")
    assert "#Input#" not in no_input[-1]["content"]
    # The few-shot replies model a clean answer: no leaked words in them.
    detector = LeakDetector()
    for m in msgs:
        if m["role"] == "assistant":
            assert detector.find(m["content"]) is None, m["content"]


def test_every_template_marker_is_in_the_leak_list():
    detector = LeakDetector()
    markers = set()
    for path in PROMPTS_DIR.glob("evolve_*.j2"):
        markers |= {m.lower() for m in re.findall(r"#[A-Za-z][A-Za-z ]*[A-Za-z]#", path.read_text())}
    assert {"#given prompt#", "#rewritten prompt#", "#created prompt#", "#input#"} <= markers
    for marker in markers:
        assert marker in LEAK_PHRASES, marker
        assert detector.find(f"Do this task. {marker.upper()} x") is not None
    # Role words and the plain phrasings of the template headers too.
    for phrase in ("prompt rewriter", "prompt creator", "given prompt", "rewritten prompt", "created prompt",
                   "it stays the same"):
        assert phrase in LEAK_PHRASES


@pytest.mark.parametrize("phrase", LEAK_PHRASES + ("#Some Other Marker#",))
def test_leak_detection_catches_each_phrase(phrase):
    detector = LeakDetector()
    for variant in (phrase, phrase.upper(), phrase.title()):
        text = f"Summarize the article and follow the {variant} closely, in three sentences."
        assert detector.find(text) is not None, text
    assert detector.find(f"{phrase} then explain.".replace("  ", " ")) is not None


def test_leak_detection_no_false_alarm_on_ordinary_instructions():
    detector = LeakDetector()
    for text in ("Rewrite the sentence below in the passive voice.", "Compare C# and F# for web services.",
                 "# Title\nWrite a markdown heading for a blog post.", "Give a new name to the prompt cards game.",
                 "Explain why the given numbers add up to 10."):
        assert detector.find(text) is None, text
    assert LeakDetector(extra=["secret sauce"]).find("Use the Secret  Sauce.") == "secret sauce"


# ----------------------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("reply, expected", [
    ("#Rewritten Prompt#:\nWrite a haiku about rain that names a city.", "Write a haiku about rain that names a city."),
    ("#Rewritten Prompt#: Write a haiku about rain that names a city.", "Write a haiku about rain that names a city."),
    ("Rewritten prompt: Write a haiku about rain.", "Write a haiku about rain."),
    ("**Rewritten Prompt:** Write a haiku about rain.", "Write a haiku about rain."),
    ("#Created Prompt#:\nExplain how a moonbow forms.", "Explain how a moonbow forms."),
    ("New instruction: Explain how a moonbow forms.", "Explain how a moonbow forms."),
    ("Sure, here is the rewritten prompt:\n\n\"Write a haiku about rain at dawn.\"",
     "Write a haiku about rain at dawn."),
    ("Sure! Here is a harder version: Write a haiku about rain at dawn.", "Write a haiku about rain at dawn."),
    ("Here's the new task:\n**Write a haiku about rain at dawn.**", "Write a haiku about rain at dawn."),
    ("\u201cWrite a haiku about rain at dawn.\u201d", "Write a haiku about rain at dawn."),
    ("#Given Prompt#: Write a haiku.\n#Rewritten Prompt#: Write a haiku about dawn.", "Write a haiku about dawn."),
    ("Write a haiku about dawn.\n#Input# (it stays the same):\nsome input", "Write a haiku about dawn."),
    ("Write a haiku about dawn.\n\nNote: I added a time of day.", "Write a haiku about dawn."),
    ("Prompt: Say which row is largest:\n| a | b |\n|---|---|\n| 1 | 2 |",
     "Say which row is largest:\n| a | b |\n|---|---|\n| 1 | 2 |"),
])
def test_parse_strips_headers_preambles_quotes_markdown(reply, expected):
    assert parse_rewrite(reply) == expected


@pytest.mark.parametrize("reply", ["", "   ", "***", "#Rewritten Prompt#:", "\"\"", "Sure, here is the new prompt:"])
def test_parse_unparseable_is_empty(reply):
    assert parse_rewrite(reply) == ""


def test_parse_keeps_code_and_json_lines():
    reply = 'Fix the bug in this function:\n```python\ndef f(x):\n    return x +\n```'
    assert parse_rewrite(reply) == reply
    reply = 'Plan the trip for this family:\n{"adults": 2, "budget_eur": 400}'
    assert parse_rewrite(reply) == reply


def test_answer_checks_and_equal_parsing():
    assert check_answer(Completion("I'm sorry, I can't do that.", "stop"), 80)[0] == "sorry_answer"
    long_sorry = "Sorry for the wait. " + "Here is a long and useful answer. " * 20
    assert check_answer(Completion(long_sorry, "stop"), 80) is None
    assert check_answer(Completion("... the, and of it!", "stop"), 80)[0] == "stopword_answer"
    assert check_answer(Completion("", "stop"), 80)[0] == "empty_answer"
    assert check_answer(Completion("A fine but cut", "length"), 80)[0] == "truncated_answer"
    assert check_answer(Completion("Paris is the capital of France.", "stop"), 80) is None
    assert parse_equal("Not Equal") is False and parse_equal("Equal.") is True and parse_equal("maybe") is None
    assert parse_equal("They are not the same.") is False and parse_equal("**Equal**") is True
    assert normalize("  Write, a HAIKU!") == normalize("write a haiku")


# ----------------------------------------------------------------------------------------------------------------
# Pool, retries and caps (scripted teacher)


def _good(instruction: str, op: str, rnd: int) -> str:
    return f"{instruction.rstrip('.')} and add one more detail number {rnd}."


def test_failed_evolution_goes_back_to_the_pool_and_is_retried_next_round():
    def rewrite(instruction, op, rnd):
        if rnd == 1 and "lost key" in instruction:
            return "#Rewritten Prompt#: " + instruction + " Mention the given prompt."  # a leak: fails
        return _good(instruction, op, rnd)

    teacher = ScriptedTeacher(rewrite)
    seeds = _seeds(2)
    state = EvolveState.start(seeds)
    cfg = _cfg()
    r1 = evolve_round(state, teacher, cfg)
    assert [r.reason for r in r1.rejected] == ["leaked_prompt"]
    rej = r1.rejected[0]
    assert rej.stage == "evolve" and rej.record.parent_id == "s0" and rej.record.root_id == "s0"
    assert rej.details["failures"] == 1 and "retired" not in rej.details
    assert state.items[0].head is seeds[0] and state.items[0].failures == 1  # back in the pool unchanged
    assert [r.id for r in r1.kept] == ["s1-r1"]
    r2 = evolve_round(state, teacher, cfg)
    by_root = {r.root_id: r for r in r2.kept}
    assert by_root["s0"].parent_id == "s0" and by_root["s0"].round == 2  # retried, evolved from the seed
    assert by_root["s1"].parent_id == "s1-r1" and by_root["s1"].round == 2  # the chain continues
    for rec in r1.kept + r2.kept:
        assert rec.source == "evolve" and rec.operation in EVOLVE_OPERATIONS and rec.output
        assert rec.teacher_model == "scripted" and rec.task_id == rec.id
    # One generate call per phase per round, each with all of the round's items.
    # Every item asks once per phase per round; a failed rewrite is never answered.
    assert teacher.calls == {("rewrite", 1): 2, ("answer", 1): 1, ("rewrite", 2): 2, ("answer", 2): 2}
    s = state.summary()
    assert s["rounds"][0]["attempts"] == 2 and s["rounds"][0]["passes"] == 1
    assert s["rounds"][0]["failures"] == {"leaked_prompt": 1} and s["rounds"][0]["pass_rate"] == 0.5
    assert s["total"]["passes"] == 3 and s["total"]["mean_growth_words"] > 0
    assert sum(v["attempts"] for v in s["by_operation"].values()) == 4


def test_item_is_retired_after_max_failures_and_never_tried_again():
    teacher = ScriptedTeacher(lambda i, op, rnd: "***")  # unparseable every time
    state = EvolveState.start(_seeds(2))
    cfg = _cfg(max_failures_per_item=2)
    reasons = []
    for _ in range(5):
        res = evolve_round(state, teacher, cfg)
        reasons += [(r.reason, r.details.get("retired", False)) for r in res.rejected]
    assert reasons == [("unparseable_rewrite", False)] * 2 + [("unparseable_rewrite", True)] * 2
    assert all(it.status == "retired" and it.retired_reason == "max_failures" for it in state.items)
    assert teacher.calls == {("rewrite", 1): 2, ("rewrite", 2): 2}  # rounds 3-5 asked nothing
    assert state.summary()["pool"]["retired_by_reason"] == {"max_failures": 2}
    assert state.summary()["rounds"][1]["retired"] == {"max_failures": 2}


def test_items_run_ahead_of_slow_ones_and_the_result_does_not_depend_on_timing():
    """Each item runs its own request chain: an item starts round 2 while a slow item is still in round 1, and a
    three-round run with random latencies gives exactly what three rounds one after another give."""
    def rewrite(instruction, op, rnd):
        return "***" if (rnd == 2 and "coffee" in instruction) else _good(instruction, op, rnd)

    def run_rounds(delay, rounds_at_once):
        teacher = ScriptedTeacher(rewrite, delay=delay)
        state, cfg, out = EvolveState.start(_seeds(5)), _cfg(), []
        engine = Engine(teacher, concurrency=64)
        try:
            for _ in range(3 // rounds_at_once):
                engine.run(evolve.run(state, engine, cfg, out.append, rounds=rounds_at_once))
        finally:
            engine.close()
        rows = [([(k.id, k.instruction, k.output, k.operation) for k in o.kept],
                 [(j.record.id, j.reason, j.record.instruction) for j in o.rejected], o.stats.as_dict()) for o in out]
        return rows, state, teacher

    slow = lambda phase, rnd, key: 0.3 if key == "s0-r1" else random.Random(key + phase).random() * 0.02
    pipelined, state, teacher = run_rounds(slow, 3)
    stepwise, state2, _ = run_rounds(None, 1)
    assert pipelined == stepwise and len(pipelined) == 3
    assert [(it.head.id, it.failures) for it in state.items] == [(it.head.id, it.failures) for it in state2.items]
    assert state.round == 3 and [h.round for h in state.history] == [1, 2, 3]
    # s1 sent its round-2 (even round-3) rewrite before the slow s0 got its round-1 answer.
    slow_done = teacher.log.index(("answered", "answer", "s0-r1"))
    assert teacher.log.index(("sent", "rewrite", "s1-r2")) < slow_done
    assert pipelined[1][1] == [("s4-r2", "unparseable_rewrite", "")]


def test_length_cap_holds_and_growth_stops():
    # Every rewrite is valid and adds ~25 words: without caps the chain would grow without bound.
    teacher = ScriptedTeacher(lambda i, op, rnd: i.rstrip(".") + " and also "
                              + " ".join(f"detail{rnd}x{k}" for k in range(22)) + ".")
    state = EvolveState.start(_seeds(3))
    cfg = _cfg(max_instruction_words=60, max_instruction_chars=5000, max_failures_per_item=2)
    kept, rejected = [], []
    for _ in range(10):
        res = evolve_round(state, teacher, cfg)
        kept += res.kept
        rejected += res.rejected
    assert kept and all(evolve.words(r.instruction) <= 60 for r in kept)
    assert {r.reason for r in rejected} == {"too_long"}
    assert all(it.status == "retired" for it in state.items)
    assert sum(n for (phase, _), n in teacher.calls.items() if phase == "answer") <= 6
    # The per-step growth cap: a text rewrite that adds far more than 10-20 words fails (not complicate_input).
    cfg = _cfg(max_growth_words=15, operations={"constraints": 1.0, "complicate_input": 1.0, "deepen": 0.0,
                                                "concretize": 0.0, "reasoning": 0.0, "breadth": 0.0})
    state = EvolveState.start(_seeds(5))
    res = evolve_round(state, teacher, cfg)
    ops = {r.root_id: r.operation for r in res.kept} | {r.record.root_id: r.record.operation for r in res.rejected}
    assert set(ops.values()) == {"constraints", "complicate_input"}
    assert all(r.operation == "complicate_input" for r in res.kept)
    assert {(r.record.operation, r.reason) for r in res.rejected} == {("constraints", "grew_too_much")}
    # A rewrite that loops on itself fails, whatever its length.
    looped = "Solve the puzzle and explain your reasoning step by step. " * 2
    looping = ScriptedTeacher(lambda i, op, rnd: i.rstrip(".") + ". " + looped)
    res = evolve_round(EvolveState.start(_seeds(2)), looping, _cfg(max_growth_words=0))
    assert {r.reason for r in res.rejected} == {"repetitive_rewrite"} and not res.kept
    assert evolve.repeated_ngram("Sort the table by price, then by name.\n| a | 1 |\n| b | 2 |") is None
    # The character cap holds as well.
    state = EvolveState.start(_seeds(3))
    res = evolve_round(state, teacher, _cfg(max_instruction_chars=80))
    assert not res.kept and {r.reason for r in res.rejected} == {"too_long"}


def test_cheap_checks_reject_unchanged_truncated_copied_drifted_and_bad_answers():
    seeds = _seeds(5)
    replies = {
        "s0": lambda i: "  " + i.upper() + "  ",  # unchanged after normalisation
        "s1": lambda i: i.rstrip(".") + " that has exactly four rhyming lines and mentions the sky.",  # few-shot copy
        "s2": lambda i: "The answer is that bananas are yellow when they are ripe and green before.",  # drifted
        "s3": lambda i: i.rstrip(".") + " for a group of retired teachers in Lisbon.",  # fine; answered "sorry"
        "s4": lambda i: i.rstrip(".") + " with a budget of twenty euros.",  # fine
    }
    root_of = {s.instruction: s.id for s in seeds}
    teacher = ScriptedTeacher(lambda i, op, rnd: replies[root_of[i]](i),
                              answer=lambda p: "Sorry, I cannot." if "Lisbon" in p else "A full answer " * 10)
    state = EvolveState.start(seeds)
    cfg = _cfg(operations={"constraints": 1.0, **{op: 0.0 for op in EVOLVE_OPERATIONS if op != "constraints"}})
    res = evolve_round(state, teacher, cfg)
    got = {r.record.root_id: r.reason for r in res.rejected}
    assert got == {"s0": "unchanged", "s1": "copied_example", "s2": "drifted", "s3": "sorry_answer"}
    assert [r.root_id for r in res.kept] == ["s4"] and res.kept[0].operation == "constraints"
    assert res.kept[0].meta["growth_words"] == 6
    # A rewrite cut by the length limit fails before anything else.
    teacher = ScriptedTeacher(lambda i, op, rnd: i + " and more", rewrite_finish="length")
    res = evolve_round(EvolveState.start(_seeds(2)), teacher, cfg)
    assert {r.reason for r in res.rejected} == {"truncated_rewrite"} and teacher.calls == {("rewrite", 1): 2}


def test_equal_judgment_runs_after_cheap_checks_when_enabled():
    seeds = _seeds(3)
    teacher = ScriptedTeacher(lambda i, op, rnd: _good(i, op, rnd) if "key" not in i else "***",
                              judge=lambda a, b: "Equal" if "refrigerator" in a else "Not Equal")
    res = evolve_round(EvolveState.start(seeds), teacher, _cfg(judge_equal=True))
    assert {r.record.root_id: r.reason for r in res.rejected} == {"s0": "unparseable_rewrite",
                                                                  "s1": "no_information_gain"}
    assert [r.root_id for r in res.kept] == ["s2"]
    assert teacher.calls == {("rewrite", 1): 3, ("judge", 1): 2, ("answer", 1): 1}  # judged only what passed cheap checks
    # Off by default: no judge call.
    teacher = ScriptedTeacher(lambda i, op, rnd: _good(i, op, rnd))
    evolve_round(EvolveState.start(seeds), teacher, _cfg())
    assert {p for p, _ in teacher.calls} == {"rewrite", "answer"}


def test_operations_follow_seeded_weights():
    cfg = _cfg(operations={"breadth": 3.0, "deepen": 1.0, **{op: 0.0 for op in EVOLVE_OPERATIONS
                                                              if op not in ("breadth", "deepen")}})
    a = [evolve.choose_operation(cfg, random.Random(7)) for _ in range(3)]
    assert a == [evolve.choose_operation(cfg, random.Random(7)) for _ in range(3)]
    rng = random.Random(8)
    ops = [evolve.choose_operation(cfg, rng) for _ in range(2000)]
    assert set(ops) == {"breadth", "deepen"} and 0.7 < ops.count("breadth") / 2000 < 0.8


def test_pool_start_one_item_per_task_and_seeded_sample():
    recs = [Record(id=f"t{k}-{j}", task_id=f"t{k}", instruction=f"Task {k}") for k in range(10) for j in range(2)]
    state = EvolveState.start(recs)
    assert [it.root_id for it in state.items] == [f"t{k}-0" for k in range(10)]
    a = EvolveState.start(recs, max_items=4, rng=random.Random(5))
    b = EvolveState.start(recs, max_items=4, rng=random.Random(5))
    assert len(a.items) == 4 and [i.root_id for i in a.items] == [i.root_id for i in b.items]
    assert [i.root_id for i in a.items] == sorted((i.root_id for i in a.items), key=lambda s: int(s[1:].split("-")[0]))


def test_config_section_and_stage_name():
    cfg = load_config(None, sets=["evolve.rounds=2", "evolve.operations.breadth=0", "evolve.judge_equal=true"])
    assert cfg.evolve.rounds == 2 and cfg.evolve.judge_equal and cfg.evolve.operations["breadth"] == 0.0
    assert cfg.evolve.operations["deepen"] == 1.0 and "evolve" not in cfg.stages  # not in the default stages
    assert load_config(None, sets=['stages=["bootstrap", "evolve", "export"]']).stages[1] == "evolve"
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="unknown operation"):
        load_config(None, sets=["evolve.operations.shorten=1"])
    with pytest.raises(InputError, match="at least one"):
        load_config(None, sets=["evolve.operations={constraints=0, deepen=0, concretize=0, reasoning=0, "
                                "complicate_input=0, breadth=0}"])


# ----------------------------------------------------------------------------------------------------------------
# Real runs (the embedded SmolLM2-135M-Instruct)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_evolve_run(run: Path, items: int, rounds: int) -> tuple[list[dict], list[dict], dict]:
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    kept, rejected = _lines(run / "evolve" / "kept.jsonl"), _lines(run / "evolve" / "rejected.jsonl")
    stage = manifest["stages"]["evolve"]
    stats = stage["stats"]
    assert stage["input_items"] == items and stage["rounds_run"] == rounds
    assert stage["kept"] == len(kept) and stage["rejected"] == len(rejected)
    assert stats["total"]["attempts"] == stats["total"]["passes"] + sum(stats["total"]["failures"].values())
    assert stats["total"]["passes"] == stage["evolved"] == len(kept) + stats["filter"]["rejected"]
    assert len(stats["rounds"]) == rounds and stats["rounds"][0]["attempts"] == items
    for op, s in stats["by_operation"].items():
        assert op in EVOLVE_OPERATIONS and set(s) >= {"attempts", "passes", "pass_rate", "failures",
                                                       "mean_growth_words"}
    assert stage["usage"]["requests"] + stage["usage"]["cache_hits"] >= items  # a replay is all cache hits
    assert manifest["tokens"]["completion"] > 0 and manifest["spent"]["requests"] >= items
    for r in kept + rejected:  # lineage on every record
        assert r["source"] == "evolve" and r["operation"] in EVOLVE_OPERATIONS and 1 <= r["round"] <= rounds
        assert r["parent_id"] and r["root_id"] and r["id"] == f"{r['root_id']}-r{r['round']}"
    for r in kept:
        assert r["instruction"].strip() and r["output"].strip() and r["teacher_model"]
        if r["round"] == 1:
            assert r["parent_id"] == r["root_id"]
    for r in rejected:
        assert r["reason"] and r["stage"] in ("evolve", "filter")
    # The whole output of a real run: no accepted instruction carries a word of the evolving prompt.
    detector = LeakDetector()
    for r in kept:
        assert detector.find(r["instruction"]) is None, r["instruction"]
        assert not re.search(r"given prompt|rewritten prompt|created prompt|#[a-z][a-z ]*[a-z]#", r["instruction"],
                             re.I)
    for r in rejected:
        if r["reason"] == "leaked_prompt":
            assert r["details"]["phrase"].lower() in r["instruction"].lower() or "#" in r["details"]["phrase"]
    return kept, rejected, manifest


# Short replies keep the default-suite real run quick (a cut reply is just a counted failure); long enough, with 8
# items, that the 135M model gets at least one evolved record through elimination and the filter chain.
SMALL = ("--set", "evolve.answer_decoding.max_tokens=160", "--set", "evolve.rewrite_decoding.max_tokens=160")


def test_real_embedded_evolve_run_writes_lineage_and_stats(tmp_path):
    run = tmp_path / "evolve"
    r = run_cli("evolve", str(OUR_SEEDS), "--out", str(run), "--rounds", "1", "--max-items", "8",
                *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pass rate" in r.stderr and "kept after the filter chain" in r.stderr
    kept, rejected, manifest = check_evolve_run(run, items=8, rounds=1)
    assert len(kept) + len(rejected) >= 8  # every item was tried: kept, eliminated or filtered
    assert len(kept) >= 1, [r["reason"] for r in rejected]  # a run that keeps nothing proves nothing
    assert manifest["stages"]["evolve"]["teacher_model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert manifest["input"]["file"] == str(OUR_SEEDS) and len(manifest["input"]["sha256"]) == 64
    assert (run / "evolve" / ".done").exists() and (run / "cache.sqlite").exists()
    # The same command again finds the stage done: nothing is written twice.
    before = (run / "evolve" / "kept.jsonl").read_text(), (run / "evolve" / "rejected.jsonl").read_text()
    again = run_cli("evolve", str(OUR_SEEDS), "--out", str(run), "--rounds", "1", "--max-items", "8",
                    *SMALL)
    assert again.returncode == 0, again.stderr[-2000:]
    assert before == ((run / "evolve" / "kept.jsonl").read_text(), (run / "evolve" / "rejected.jsonl").read_text())
    # Another input file in the same run directory is refused.
    other = tmp_path / "other.jsonl"
    other.write_text('{"instruction": "Name a planet.", "output": "Mars"}\n')
    manifest_before = (run / "manifest.json").read_bytes()
    r = run_cli("evolve", str(other), "--out", str(run), "--rounds", "1", "--max-items", "8",
                *SMALL)
    assert r.returncode == 2 and "differs from the input" in r.stderr
    assert (run / "manifest.json").read_bytes() == manifest_before  # refused before anything was written


def test_evolve_bad_input_exits_2_naming_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok", "output": "x"}\n{"instruction": 3}\n')
    r = run_cli("evolve", str(bad), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr and "instruction" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_real_embedded_two_rounds_whole_output_clean(tmp_path):
    run = tmp_path / "evolve"
    r = run_cli("evolve", str(OUR_SEEDS), "--out", str(run), "--rounds", "2", "--max-items", "8", *SMALL,
                timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    kept, rejected, _ = check_evolve_run(run, items=8, rounds=2)
    assert len(kept) >= 1 and len({r["id"] for r in kept}) == len(kept)
    for rec in kept:
        if rec["round"] == 2 and rec["parent_id"] != rec["root_id"]:
            assert rec["parent_id"] == f"{rec['root_id']}-r1"


@pytest.mark.slow
def test_real_llama_server_evolve_run(tmp_path, llama_server):
    run = tmp_path / "evolve"
    config = Path(__file__).resolve().parents[2] / "configs" / "llamacpp_server.toml"
    r = run_cli("evolve", str(OUR_SEEDS), "--out", str(run), "--rounds", "1", "--max-items", "8", *SMALL,
                "--config", str(config), "--base-url", llama_server, "--set", "teacher.concurrency=2")
    assert r.returncode == 0, r.stderr[-3000:]
    kept, _, _ = check_evolve_run(run, items=8, rounds=1)
    assert len(kept) >= 1
