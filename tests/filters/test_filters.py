"""The filter engine: exact pruning, incremental == batch, MinHash candidates, heuristics, the chain and the CLI."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from rapidfuzz import process
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer
from typer.testing import CliRunner

from pipeline.config import FilterConfig
from pipeline.errors import InputError
from pipeline.filters.chain import filter_records
from pipeline.filters.heuristics import check_instance, check_task_instances
from pipeline.filters.minhash import CompactBandIndex, MinHasher, lsh_params
from pipeline.filters.novelty import NoveltyIndex, dedup
from pipeline.filters.rouge import Tokenizer, Vocab, f_from_lcs_array
from pipeline.io.readers import read_records
from pipeline.records import Record
from tests.conftest import OUR_SEEDS, PUBLISHED_SEEDS


VOCAB = ("write a the of poem story list three ways to about sea summer explain how why make good bad short "
         "long describe give me an example for children using simple words in style").split()


def random_stream(seed: int, n: int, vocab=VOCAB, max_len: int = 16) -> list[str]:
    """Random instructions with many near-duplicates (edits of earlier ones) and some token-less texts."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        u = rng.random()
        if out and u < 0.45:
            words = rng.choice(out).split()
            for _ in range(rng.choice((1, 1, 2, 3))):
                op = rng.random()
                if op < 0.4 and words:
                    words[rng.randrange(len(words))] = rng.choice(vocab)
                elif op < 0.7:
                    words.insert(rng.randint(0, len(words)), rng.choice(vocab))
                elif words:
                    del words[rng.randrange(len(words))]
            out.append(" ".join(words))
        elif u < 0.48:
            out.append(rng.choice(["", "!!!", "写诗", "😀"]))
        else:
            out.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(1, max_len))))
    return out


def brute_force(texts: list[str], threshold: float = 0.7, stemmer: bool = False, reference=(), pure=False):
    """The plain loop: every candidate against every pool item (first best on ties). ``pure``: rouge-score's own
    _score_lcs; otherwise rapidfuzz LCS with rouge-score's F formula (bit-identical, see test_rouge.py)."""
    tok = Tokenizer(use_stemmer=stemmer)
    vocab = Vocab()
    pool = [(rid, tok.tokenize(t)) for rid, t in reference]
    pool_enc = [vocab.encode(p) for _, p in pool]
    out = []
    for i, text in enumerate(texts):
        cand = tok.tokenize(text)
        enc = vocab.encode(cand)
        if pure:
            scores = [rouge_scorer._score_lcs(cand, p).fmeasure for _, p in pool]
        elif pool:
            lcs = process.cdist([enc], pool_enc, scorer=LCSseq.similarity, dtype=np.int32)[0]
            scores = f_from_lcs_array(lcs, [len(p) for _, p in pool], len(cand)).tolist()
        else:
            scores = []
        best = max(scores) if scores else 0.0
        dup = best > threshold
        out.append((dup, best if dup else None, pool[scores.index(best)][0] if dup else None, best))
        if not dup:
            pool.append((str(i), cand))
            pool_enc.append(enc)
    return out


def decisions(index: NoveltyIndex, texts: list[str]):
    out = []
    for i, text in enumerate(texts):
        dup, m = index.check_and_add(str(i), text)
        out.append((dup, m.score if dup else None, m.nearest_id if dup else None))
    return out


# --- novelty index -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold,stemmer,seed,n", [(0.7, False, 0, 1500), (0.7, True, 1, 1000),
                                                      (0.5, False, 2, 800), (0.9, False, 3, 800),
                                                      (0.3, True, 4, 400), (0.7, False, 10, 2000)])
def test_pruning_never_changes_a_decision(threshold, stemmer, seed, n):
    texts = random_stream(seed, n, max_len=10 + seed)
    expected = brute_force(texts, threshold, stemmer)
    index = NoveltyIndex(threshold, use_stemmer=stemmer)
    assert decisions(index, texts) == [e[:3] for e in expected]
    assert index.stats.scored < sum(range(len(index)))  # and it did prune


def test_pruning_against_rouge_score_itself():
    texts = random_stream(11, 250)
    index = NoveltyIndex(0.7)
    assert decisions(index, texts) == [e[:3] for e in brute_force(texts, pure=True)]


def test_incremental_equals_batch_and_reference_preload():
    ref = [("seed-a", "write a short poem about the sea"), ("seed-b", "explain how to make a good story")]
    texts = ["write a short poem about the summer sea", "explain how to make a good short story"]
    texts += random_stream(5, 800)
    expected = [e[:3] for e in brute_force(texts, reference=ref)]
    index = NoveltyIndex(0.7)
    for rid, t in ref:
        index.add(rid, t)
    assert decisions(index, texts) == expected
    batch = dedup(texts, [str(i) for i in range(len(texts))], reference=ref)
    got = [(d, m.score if d else None, m.nearest_id if d else None) for d, m in zip(batch.duplicate, batch.matches)]
    assert got == expected
    assert any(nid in ("seed-a", "seed-b") for _, _, nid in expected)


def test_exact_nearest_and_alpaca_similarity_report_the_true_best():
    texts = random_stream(6, 300)
    expected = brute_force(texts)
    index = NoveltyIndex(0.7, alpaca_similarity=True)
    for i, (text, exp) in enumerate(zip(texts, expected)):
        dup, m = index.check_and_add(str(i), text)
        assert dup == exp[0] and m.score == exp[3] and m.exact
        if len(index) > 1 and m.top:
            assert m.top[0]["score"] == exp[3] and len(m.top) <= 10
            assert [t["score"] for t in m.top] == sorted((t["score"] for t in m.top), reverse=True)
    # Pruned mode: for kept texts the score is a lower bound, never above the true best.
    index = NoveltyIndex(0.7)
    for i, (text, exp) in enumerate(zip(texts, expected)):
        _, m = index.check_and_add(str(i), text)
        assert m.score <= exp[3]


def test_unicode_option_dedups_chinese_and_thai():
    texts = ["写一首关于大海的诗", "写一首关于大海的短诗", "เขียนบทกวีเกี่ยวกับทะเล", "เขียนบทกวีสั้นเกี่ยวกับทะเล",
             "解释光合作用的过程"]
    plain = NoveltyIndex(0.7)
    assert [plain.check_and_add(str(i), t)[0] for i, t in enumerate(texts)] == [False] * 5
    uni = NoveltyIndex(0.7, unicode=True)
    got = [uni.check_and_add(str(i), t) for i, t in enumerate(texts)]
    assert [d for d, _ in got] == [False, True, False, True, False]
    assert got[1][1].nearest_id == "0" and got[3][1].nearest_id == "2"
    # Through the chain: the non-ASCII start rule is English-only and must be off for these.
    cfg = FilterConfig(unicode_tokens=True, reject_non_ascii_start=False, min_words=4)
    recs = [Record(id=f"r{i}", instruction=t, output="好的") for i, t in enumerate(texts)]
    res = filter_records(recs, cfg)
    assert [r.id for r in res.kept] == ["r0", "r2", "r4"]
    assert {r.reason for r in res.rejected} == {"rouge_duplicate"}


@pytest.mark.parametrize("backend", ["compact", "datasketch"])
def test_minhash_path_finds_the_duplicates(backend):
    texts = random_stream(7, 600, max_len=24)
    expected = [e[0] for e in brute_force(texts)]
    index = NoveltyIndex(0.7, minhash_above=0, minhash_backend=backend)
    got = [index.check_and_add(str(i), t) for i, t in enumerate(texts)]
    assert index.stats.minhash_queries > 0
    found = sum(d and e for (d, _), e in zip(got, expected))
    assert found >= 0.97 * sum(expected)
    for d, m in got:  # every MinHash rejection is a real duplicate of a pool item (exact score above 0.7)
        if d:
            assert m.score > 0.7


def test_switch_to_minhash_keeps_earlier_decisions_exact():
    texts = random_stream(8, 500)
    expected = brute_force(texts)
    index = NoveltyIndex(0.7, minhash_above=120)
    got = decisions(index, texts)
    switched = index.stats.switched_to_minhash_at
    assert switched == 121
    k = next(i for i, e in enumerate(expected) if sum(not x[0] for x in expected[: i + 1]) > 121)
    assert got[:k] == [e[:3] for e in expected[:k]]
    assert sum(g[0] and e[0] for g, e in zip(got, expected)) >= 0.95 * sum(e[0] for e in expected)


def test_compact_band_index_matches_a_plain_dict():
    rng = np.random.RandomState(0)
    bands, rows = lsh_params(0.4, 64)
    idx = CompactBandIndex(64, bands, rows, buffer_items=7)  # tiny buffer: many flushes and merges
    hasher = MinHasher(64)
    sets = [rng.randint(0, 40, size=rng.randint(3, 12)).tolist() for _ in range(300)]
    plain: dict[int, set[int]] = {}
    for i, s in enumerate(sets):
        keys = idx.band_keys(hasher.signature(sorted(set(s))))
        expected = sorted(set().union(*(plain.get(k, set()) for k in keys.tolist())))
        assert idx.query(keys=keys).tolist() == expected
        idx.insert(i, keys=keys)
        for k in keys.tolist():
            plain.setdefault(k, set()).add(i)
    assert len(idx._runs) <= 10


def test_count_sketch_bounds_the_overlap():
    rng = random.Random(1)
    for _ in range(2000):
        a = rng.sample(range(500), rng.randint(0, 60))
        b = rng.sample(range(500), rng.randint(0, 60)) + a[: rng.randint(0, len(a))]
        b = list(dict.fromkeys(b))
        bound = int(np.minimum(NoveltyIndex._sketch_of(a), NoveltyIndex._sketch_of(b)).sum())
        assert bound >= len(set(a) & set(b))
    long = list(range(300))  # 255+ elements: all bins saturated, still a bound
    assert int(np.minimum(NoveltyIndex._sketch_of(long), NoveltyIndex._sketch_of(long)).sum()) >= 300


# --- heuristics and the chain ------------------------------------------------------------------------------------
def rec(rid, instruction="Write a short poem about the sea at night.", inp="", out="Waves fold the moonlight.",
        task=None):
    return Record(id=rid, instruction=instruction, input=inp, output=out, task_id=task or rid)


def test_every_rejection_reason_with_a_real_example():
    cfg = FilterConfig(max_instances_per_task=2)
    rows = [
        rec("keep", "Summarize the story of a classic fairy tale in two sentences.",
            out="A girl visits her grandmother."),
        rec("empty", "   ", out="x"),
        rec("short", "Write poem.", out="Roses."),
        rec("long", "Describe " + "very " * 160 + "carefully.", out="Ok."),
        rec("black", "Draw a picture of a cat sitting on a mat.", out="..."),
        rec("program", "Write a program that prints the first ten primes.", out="print(2)"),
        rec("punct", "\"Translate\" the sentence into French please.", out="Bonjour."),
        rec("nonascii", "¿Cómo se dice hello en inglés, por favor?", out="Hello."),
        rec("noout", "Give three tips for staying focused while studying.", out="   "),
        rec("same", "Repeat the given sentence exactly as it is.", inp="The sky is blue.", out="The sky is blue."),
        rec("colon", "List the ingredients for a simple pancake batter.", out="Ingredients:"),
        rec("refuse", "Tell me the home address of my new neighbour.", out="I'm sorry, but I cannot help with that."),
        rec("boiler", "What is your favourite colour and why do you like it?",
            out="As an AI language model, I do not have personal preferences."),
        rec("repeat", "Explain how to fold an origami crane step by step.",
            out="Fold the paper in half. " * 6 + "Then you are done."),
        rec("dupe1", "Convert the temperature from Celsius to Fahrenheit.", inp="20 C", out="68 F", task="t-conv"),
        rec("dupe2", "Convert the temperature from Celsius to Fahrenheit.", inp="20 C", out="68 F", task="t-conv2"),
        rec("c1", "Classify the sentiment of the given review.", inp="Great food!", out="positive", task="t-cls"),
        rec("c2", "Classify the sentiment of the given review.", inp="Great food!", out="negative", task="t-cls"),
        rec("c3", "Classify the sentiment of the given review.", inp="Cold soup.", out="negative", task="t-cls"),
        rec("m1", "Name a country and its capital city.", inp="Europe", out="France, Paris", task="t-many"),
        rec("m2", "Name a country and its capital city.", inp="Asia", out="Japan, Tokyo", task="t-many"),
        rec("m3", "Name a country and its capital city.", inp="Africa", out="Kenya, Nairobi", task="t-many"),
        rec("near", "Summarize the story of a classic fairy tale in three sentences.", out="A wolf; a girl; a hunter."),
    ]
    res = filter_records(rows, cfg)
    reasons = {r.record.id: r.reason for r in res.rejected}
    assert reasons == {
        "empty": "empty_instruction", "short": "too_short", "long": "too_long", "black": "blacklisted_word",
        "program": "write_a_program", "punct": "leading_punctuation", "nonascii": "leading_non_ascii",
        "noout": "empty_output", "same": "input_equals_output", "colon": "ends_with_colon", "refuse": "refusal",
        "boiler": "ai_boilerplate", "repeat": "repeated_ngrams", "dupe2": "exact_duplicate",
        "c1": "conflicting_outputs", "c2": "conflicting_outputs", "c3": "conflicting_outputs",
        "m3": "too_many_instances", "near": "rouge_duplicate",
    }
    assert [r.id for r in res.kept] == ["keep", "dupe1", "m1", "m2"]
    near = next(r for r in res.rejected if r.record.id == "near")
    assert near.details["nearest_id"] == "keep" and near.details["rouge_l"] > 0.7 == near.details["threshold"]
    assert near.details["nearest_instruction"].startswith("Summarize the story")
    assert sum(res.stats["rejected_by_reason"].values()) == len(res.rejected) == len(rows) - len(res.kept)
    # Task rule inside a task: duplicate instances (when the file-wide check is off).
    res = filter_records([rec("d1", task="t"), rec("d2", task="t")], FilterConfig(reject_exact_duplicates=False))
    assert [(r.record.id, r.reason) for r in res.rejected] == [("d2", "duplicate_instance")]


def test_one_set_of_instance_rules():
    # The bootstrap stage and the filter chain call the same rules (the bootstrap stage once had fixed rules of its
    # own: no n-gram rule, other refusal phrases, so the filter stage dropped tasks bootstrap had counted).
    looping = rec("x", out="Fold the paper in half. " * 6)
    assert check_instance(looping, FilterConfig())[0] == "repeated_ngrams"
    assert check_instance(rec("y", out="As an AI, I think so."), FilterConfig())[0] == "ai_boilerplate"
    assert check_instance(rec("y", out="As an AI, I think so."), FilterConfig(reject_refusals=False)) is None
    assert check_instance(rec("z", out="I can't help but smile at this."), FilterConfig()) is None
    kept, dropped = check_task_instances([rec("a", inp="1", out="x"), rec("b", inp="1", out="y"),
                                          rec("c", inp="2", out="z")], 5)
    assert [r.id for r in kept] == ["c"] and [d[1] for d in dropped] == ["conflicting_outputs"] * 2
    assert check_instance(rec("w", out="Fold the paper in half. Then fold it again."), FilterConfig()) is None


def test_task_siblings_follow_the_first_instance():
    rows = [
        rec("a", "Write a short poem about the sea at night.", task="t1"),
        rec("b1", "Write a short poem about the sea at dawn.", inp="calm", out="Gold on grey water.", task="t2"),
        rec("b2", "Write a short poem about the sea at dawn.", inp="storm", out="Spray and thunder.", task="t2"),
        rec("c1", "Give two facts about honeybees and their hives.", inp="", out="They dance; they cool.", task="t3"),
        rec("c2", "Give two facts about honeybees and their hives.", inp="x", out="Six-sided cells.", task="t3"),
    ]
    res = filter_records(rows, FilterConfig())
    assert [r.id for r in res.kept] == ["a", "c1", "c2"]
    assert [(r.record.id, r.reason, r.details["nearest_id"]) for r in res.rejected] == [
        ("b1", "rouge_duplicate", "t1"), ("b2", "rouge_duplicate", "t1")]
    ref = [Record(id="s1", task_id="s1", instruction="Give two facts about honeybees and their hives.", output="-")]
    res = filter_records(rows, FilterConfig(), reference=ref)
    assert [r.id for r in res.kept] == ["a"]
    assert {r.details["nearest_id"] for r in res.rejected if r.record.id.startswith("c")} == {"s1"}
    assert res.stats["reference_instructions"] == 1


def test_batch_mode_same_result_as_incremental():
    texts = random_stream(9, 400)
    rows = [Record(id=f"r{i}", instruction=t, output=f"answer {i}") for i, t in enumerate(texts)]
    inc = filter_records(rows, FilterConfig())
    bat = filter_records(rows, FilterConfig(novelty_mode="batch"))
    assert [r.to_dict() for r in inc.kept] == [r.to_dict() for r in bat.kept]
    assert [r.to_dict() for r in inc.rejected] == [r.to_dict() for r in bat.rejected]
    assert inc.stats["rejected_by_reason"]["rouge_duplicate"] > 20


# --- reading -----------------------------------------------------------------------------------------------------
def test_read_records_formats(tmp_path):
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text('{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}\n'
                      '{"instruction": "Name a colour.", "input": "<noinput>", "output": "Blue"}\n')
    recs = read_records(alpaca)
    assert [(r.id, r.task_id, r.input) for r in recs] == [("alpaca_0", "alpaca_0", "2 and 3"),
                                                           ("alpaca_1", "alpaca_1", "")]
    run_rows = tmp_path / "kept.jsonl"
    run_rows.write_text("".join(json.dumps(Record(id=f"bs-1-{k}", task_id="bs-1", instruction="Say hi.",
                                                  output=f"hi {k}", source="bootstrap").to_dict()) + "\n"
                                for k in range(2)))
    recs = read_records(run_rows)
    assert {r.task_id for r in recs} == {"bs-1"} and recs[0].source == "bootstrap"
    array = tmp_path / "alpaca_data.json"
    array.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}]))
    assert read_records(array)[0].instruction == "Say hi."


def test_read_records_reads_the_published_seed_file(published_seeds):
    published = read_records(published_seeds)
    assert len(published) == 175 and sum(not r.input for r in published) == 50


@pytest.mark.parametrize("content,where", [
    ('{"instruction": "A"}\n', "bad.jsonl:1: output: missing field"),
    ('{"instruction": "A", "output": "b"}\nnot json\n', "bad.jsonl:2: invalid JSON"),
    ('{"instruction": 3, "output": "b"}\n', "bad.jsonl:1: instruction: expected a string"),
    ('{"id": "x", "instruction": "A", "output": "b"}\n{"id": "x", "instruction": "B", "output": "c"}\n',
     "bad.jsonl:2: id: duplicate id"),
    ("", "bad.jsonl: file is empty"),
])
def test_bad_input_is_an_input_error(tmp_path, content, where):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as e:
        read_records(path)
    assert where in str(e.value)


# --- CLI ---------------------------------------------------------------------------------------------------------
def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_cli_filter_published_seeds(tmp_path, published_seeds):
    from pipeline.cli.main import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["filter", str(published_seeds), "--out", str(out)])
    assert result.exit_code == 0, result.output
    kept, rejected = _lines(out / "kept.jsonl"), _lines(out / "rejected.jsonl")
    stats = json.loads((out / "stats.json").read_text())
    assert len(kept) + len(rejected) == stats["input_records"] == 175
    assert stats["kept_records"] == len(kept) and stats["rejected_records"] == len(rejected)
    assert sum(stats["rejected_by_reason"].values()) == len(rejected)
    assert all(r["reason"] and "details" in r for r in rejected)
    dup = [r for r in rejected if r["reason"] == "rouge_duplicate"]
    assert dup and all(r["details"]["rouge_l"] > 0.7 and r["details"]["nearest_id"] for r in dup)
    assert stats["timing"]["total_s"] >= 0
    # Our seeds with the published ones preloaded, a stricter threshold and a --set override.
    out2 = tmp_path / "out2"
    result = CliRunner().invoke(app, ["filter", str(OUR_SEEDS), "--out", str(out2), "--reference",
                                      str(published_seeds), "--rouge-threshold", "0.5", "--set", "min_words=3"])
    assert result.exit_code == 0, result.output
    stats = json.loads((out2 / "stats.json").read_text())
    assert stats["config"]["rouge_threshold"] == 0.5 and stats["config"]["min_words"] == 3
    assert stats["reference_instructions"] == 175


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    from pipeline.cli.main import app

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Add.", "output": "5"}\n{"instruction": "Add.", "output": 5}\n')
    result = CliRunner().invoke(app, ["filter", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "bad.jsonl:2: output: expected a string" in lines[0]
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(app, ["filter", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "file not found" in result.output
    result = CliRunner().invoke(app, ["filter", str(OUR_SEEDS), "--out", str(tmp_path / "o"),
                                      "--set", "filter.minhash_backend=redis"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "minhash_backend" in result.output


@pytest.mark.parametrize("up_to, exact", [(20_000, True), (0, False)])
def test_kept_records_carry_their_exact_nearest_while_the_pool_is_small(up_to, exact):
    """Default config: every kept record names its most similar earlier instruction (seed or kept) and the exact
    rouge-score ROUGE-L; with exact_nearest_up_to=0 the score is only a lower bound, often missing."""
    from pipeline.io.readers import load_seeds

    if not PUBLISHED_SEEDS.is_file():
        pytest.skip("published seeds not present")
    seeds = load_seeds([OUR_SEEDS])[:60]
    candidates = load_seeds([PUBLISHED_SEEDS])
    result = filter_records(candidates, FilterConfig(exact_nearest_up_to=up_to), reference=seeds)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = list(dict.fromkeys(s.instruction for s in seeds))
    kept_by_task = {}
    for r in result.kept:
        kept_by_task.setdefault(r.task_id or r.id, r)
    assert len(kept_by_task) > 100
    missing = 0
    for r in kept_by_task.values():
        best = max(scorer.score(p, r.instruction)["rougeL"].fmeasure for p in pool)
        if exact:
            assert r.rouge_l == pytest.approx(best, abs=1e-9) and r.nearest_instruction in pool
        else:
            assert r.rouge_l is None or r.rouge_l <= best + 1e-9
            missing += r.rouge_l is None
        pool.append(r.instruction)
    assert (missing == 0) if exact else (missing > 0)
