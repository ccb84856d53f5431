"""LoRA tuning and base-vs-tuned evaluation.

Fast tests use a tiny randomly initialised Llama (2 layers, width 48) with a byte-level BPE tokenizer trained here
with the `tokenizers` package (ChatML special tokens and chat template): no download. The slow test tunes the
embedded SmolLM2-135M-Instruct for a few steps, then loads the adapter with peft and generates.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
WORDS = ["apple", "river", "stone", "cloud", "green", "music", "tiger", "paper", "light", "ocean", "maple", "sugar",
         "robot", "candle", "forest", "silver", "window", "garden", "rocket", "butter", "planet", "yellow", "winter",
         "bridge", "coffee", "dragon", "pencil", "summer", "castle", "violet"]


def _rows() -> list[dict]:
    rows = []
    for i, w in enumerate(WORDS):
        if i % 2:
            rows.append({"messages": [{"role": "user", "content": f"Repeat the word {w} three times."},
                                      {"role": "assistant", "content": f"{w} {w} {w}"}]})
        else:
            rows.append({"messages": [{"role": "user", "content": f"Spell the word {w} backwards."},
                                      {"role": "assistant", "content": w[::-1]}]})
    return rows


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny-llama")
    corpus = []
    for row in _rows():
        for m in row["messages"]:
            corpus += [m["content"], f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"]
    corpus += [f"The {a} and the {b} are near the {c}." for a, b, c in zip(WORDS, WORDS[3:], WORDS[7:])] * 8
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = CHATML
    tok.save_pretrained(d)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, initializer_range=0.2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    d = tmp_path / "run"
    (d / "dataset").mkdir(parents=True)
    with open(d / "dataset" / "messages.jsonl", "w") as fh:
        for row in _rows():
            fh.write(json.dumps(row) + "\n")
    return d


def _cfg(tiny_model: Path, **kw):
    from pipeline.config import TuneConfig

    base = dict(base_model=str(tiny_model), max_steps=6, batch_size=4, learning_rate=5e-3, lora_r=8, lora_alpha=16,
                lora_dropout=0.1, max_length=128, eval_fraction=0.2, save_steps=3, seed=7,
                num_threads=1)  # a tiny model gains nothing from threads, and loses a lot on a busy machine
    base.update(kw)
    return TuneConfig(**base)


def _losses(out: Path) -> dict[int, float]:
    with open(out / "train_log.csv") as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh) if r["loss"]}


def test_dataset_rows_and_split(run_dir, tmp_path):
    from pipeline.errors import InputError
    from pipeline.runs.read import resolve_dataset
    from pipeline.train.tune import load_examples, split_examples

    path = resolve_dataset(run_dir)
    assert path == run_dir / "dataset" / "messages.jsonl"
    examples, dropped = load_examples(path)
    assert len(examples) == len(WORDS) and not dropped
    assert examples[0].prompt == [{"role": "user", "content": "Spell the word apple backwards."}]
    assert examples[0].completion == [{"role": "assistant", "content": "elppa"}]
    train, held = split_examples(examples, 0.2, seed=1)
    assert len(held) == 6 and len(train) == 24 and not {e.id for e in train} & {e.id for e in held}
    assert [e.id for e in split_examples(examples, 0.2, seed=1)[1]] == [e.id for e in held]  # seeded
    assert [e.id for e in split_examples(examples, 0.2, seed=2)[1]] != [e.id for e in held]
    alpaca = tmp_path / "train.jsonl"
    alpaca.write_text('{"instruction": "Add.", "input": "2 and 3", "output": "5"}\n'
                      '{"instruction": "Empty.", "input": "", "output": ""}\n')
    ex, dropped = load_examples(alpaca)
    assert ex[0].prompt[0]["content"] == "Add.\n\n2 and 3" and dict(dropped) == {"empty_output": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: messages"):
        load_examples(bad)
    with pytest.raises(InputError, match="dataset file not found"):
        resolve_dataset(tmp_path / "nowhere")


def test_labels_cover_completion_and_end_token(tiny_model, run_dir, tmp_path):
    from pipeline.train.tune import build_trainer, load_examples, split_examples

    examples, _ = load_examples(run_dir / "dataset" / "messages.jsonl")
    train, held = split_examples(examples, 0.2, 7)
    trainer, tok, info = build_trainer(train, held, tmp_path / "out", _cfg(tiny_model), tiny_model)
    assert info["end_of_turn_token"] == "<|im_end|>"
    assert info["labels"]["completion_only"] == info["labels"]["with_end_of_turn"] == len(train)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for ex, row in zip(train, trainer.train_dataset):
        ids, labels = row["input_ids"], row["labels"]
        prompt_ids = tok(tok.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"]
        k = len(prompt_ids)
        assert ids[:k] == prompt_ids
        assert labels[:k] == [-100] * k  # the prompt, up to and including "<|im_start|>assistant\n", is masked
        assert labels[k:] == ids[k:]  # everything after it is trained on
        answer = ex.completion[0]["content"]
        assert tok.decode(labels[k:]) == answer + "<|im_end|>\n"
        assert im_end in labels[k:]
    assert info["labels"]["first_example"]["labelled_text"].startswith(train[0].completion[0]["content"])


def test_loss_falls_and_outputs(tiny_model, run_dir, tmp_path):
    from pipeline.train.tune import train

    out = tmp_path / "tune"
    meta = train(run_dir / "dataset" / "messages.jsonl", out, _cfg(tiny_model, max_steps=12, lora_dropout=0.0,
                                                                     learning_rate=1e-2, lr_scheduler="constant",
                                                                     save_steps=100),
                 merge=True)
    losses = _losses(out)
    assert len(losses) == 12
    first, last = sum(losses[s] for s in (1, 2)) / 2, sum(losses[s] for s in (11, 12)) / 2
    assert last < first * 0.8, losses
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json",
                 "loss.png", "train_log.csv", "heldout.jsonl", "split.json", "tune_meta.json",
                 "merged/config.json", "checkpoints/checkpoint-12/trainer_state.json"):
        assert (out / name).is_file(), name
    assert meta["heldout_rows"] == 6 and meta["train_rows"] == 24
    assert meta["trainer"]["tokens"] > 0 and meta["trainer"]["tokens_per_s"] > 0
    assert meta["trainer"]["eval_loss"] is not None
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_matches_uninterrupted(tiny_model, run_dir, tmp_path):
    from transformers import TrainerCallback

    from pipeline.errors import InputError
    from pipeline.train.tune import train

    data = run_dir / "dataset" / "messages.jsonl"
    cfg = _cfg(tiny_model)
    full = tmp_path / "full"
    train(data, full, cfg)

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                control.should_training_stop = True

    part = tmp_path / "part"
    train(data, part, cfg, callbacks=[StopAt3()])
    assert max(_losses(part)) == 3 and (part / "checkpoints" / "checkpoint-3").is_dir()
    with pytest.raises(InputError, match="--resume last"):
        train(data, part, cfg)  # a fresh run must not mix into an earlier one's checkpoints
    meta = train(data, part, cfg, resume="last")
    assert meta["resumed_from"].endswith("checkpoint-3") and meta["trainer"]["global_step"] == 6
    a, b = _losses(full), _losses(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), (step, a, b)

    from safetensors.torch import load_file

    wa, wb = load_file(full / "adapter" / "adapter_model.safetensors"), load_file(part / "adapter" /
                                                                                  "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() < 1e-5, k


class _RuleJudge:
    """A stand-in judge for the fast tests: prefers the answer that shares more words with the reference. The real
    embedded judge (llama.cpp) runs in the slow test."""

    model_name = "rule-judge"

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        from pipeline.teachers import Completion

        self.requests += requests
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            ref = set(text.split("Reference answer:")[1].split("Answer A:")[0].split())
            a = set(text.split("Answer A:")[1].split("Answer B:")[0].split())
            b = set(text.split("Answer B:")[1].split("Which answer")[0].split())
            verdict = "A" if len(a & ref) > len(b & ref) else "B" if len(b & ref) > len(a & ref) else "tie"
            out.append(Completion(text=verdict, finish_reason="stop"))
        return out


def _human_tasks():
    """Eight human tasks the tuned model never saw: four label tasks (classification) and four others."""
    from pipeline.records import Record

    recs = []
    for i, w in enumerate(["lemon", "tiger", "cloud", "piano"]):
        recs.append(Record(id=f"h{i}", task_id=f"h{i}", instruction="Is this word a fruit? Answer yes or no.",
                           input=w, output="yes" if w == "lemon" else "no", is_classification=True))
    for i, w in enumerate(["apple", "river", "stone", "music"], start=4):
        recs.append(Record(id=f"h{i}", task_id=f"h{i}", instruction=f"Repeat the word {w} twice.",
                           output=f"{w} {w}"))
    return recs


def test_eval_on_human_tasks_writes_table(tiny_model, run_dir, tmp_path):
    import sacrebleu
    from rouge_score import rouge_scorer

    from pipeline.config import EvalConfig
    from pipeline.runs.read import resolve_tune_dir
    from pipeline.train.evaluate import evaluate, tasks_from_records
    from pipeline.train.tune import train

    train(run_dir / "dataset" / "messages.jsonl", run_dir / "tune", _cfg(tiny_model, max_steps=4, save_steps=100))
    tune_dir = resolve_tune_dir(run_dir)
    assert tune_dir == run_dir / "tune"
    seen, judge = [], _RuleJudge()
    tasks = tasks_from_records(_human_tasks())
    table = evaluate(tune_dir, run_dir / "eval", EvalConfig(max_new_tokens=6, batch_size=4, judge=True,
                                                            bootstrap_rounds=200),
                     progress=lambda *a: seen.append(a), judge=judge, tasks=tasks, tasks_source="human")
    assert table["examples"] == 8 and table["classification_tasks"] == 4 and table["tasks_source"] == "human"
    for side in ("base", "tuned"):
        m = table["models"][side]
        assert 0.0 <= m["rouge_l"]["value"] <= 1.0 and len(m["rouge_l"]["ci"]) == 2 and m["rouge_l"]["n"] == 8
        assert m["accuracy"]["n"] == 4 and m["reference_loss"] > 0 and 1 <= m["mean_new_tokens"] <= 6
        assert m["bleu"]["ci"][0] <= m["bleu"]["value"] <= m["bleu"]["ci"][1] or m["bleu"]["value"] == 0
    assert set(table["differences"]["tuned"]) >= {"rouge_l", "bleu", "accuracy", "finished"}
    j = table["judge"]["tuned"]
    assert j["wins"] + j["losses"] + j["ties"] + j["unjudged"] == 8 and table["judge_model"] == "rule-judge"
    asked = 8 - j["identical_answers"]
    assert asked and len(judge.requests) == 2 * asked  # every task with two different answers, in both orders
    assert j["answered_A"] + j["answered_B"] + j["answered_tie"] + j["invalid"] == 2 * asked
    saved = json.loads((run_dir / "eval" / "table.json").read_text())
    assert saved["models"] == table["models"]
    md = (run_dir / "eval" / "table.md").read_text()
    assert "| ROUGE-L F |" in md and "| BLEU |" in md and "tuned - base" in md and "both orders" in md
    rows = [json.loads(line) for line in (run_dir / "eval" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and [r["model"] for r in rows[:2]] == ["base", "tuned"]
    tuned = [r for r in rows if r["model"] == "tuned"]
    base = [r for r in rows if r["model"] == "base"]
    assert all(r["base_answer"] == b["answer"] and len(r["judge"]["verdicts"]) == 2 for r, b in zip(tuned, base))
    # the figures are rouge-score's and sacrebleu's, called here directly on the saved answers
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for r in rows:
        assert r["scores"]["rouge_l"] == round(scorer.score(r["reference"], r["answer"])["rougeL"].fmeasure, 4)
    for side, rs in (("base", base), ("tuned", tuned)):
        bleu = sacrebleu.corpus_bleu([r["answer"] for r in rs], [[r["reference"] for r in rs]]).score
        assert table["models"][side]["bleu"]["value"] == round(bleu, 4)
    assert seen and seen[-1][0] == "eval"


def test_eval_without_tasks_uses_the_tune_split_and_says_so(tiny_model, run_dir):
    from pipeline.config import EvalConfig
    from pipeline.train.evaluate import evaluate
    from pipeline.train.tune import train

    train(run_dir / "dataset" / "messages.jsonl", run_dir / "tune", _cfg(tiny_model, max_steps=2, save_steps=100))
    table = evaluate(run_dir / "tune", run_dir / "eval", EvalConfig(max_new_tokens=4, bootstrap_rounds=50))
    held = [json.loads(line) for line in (run_dir / "tune" / "heldout.jsonl").read_text().splitlines()]
    assert table["examples"] == len(held) == 6 and "not by people" in table["note"]
    assert table["judge"] is None


def test_judge_asks_both_orders_and_cancels_position_bias():
    from pipeline.config import Decoding
    from pipeline.train.evaluate import EvalTask, judge_both_orders, judge_summary, parse_verdict
    from pipeline.teachers import Completion

    assert parse_verdict("A") == "A" and parse_verdict(" **B**.") == "B" and parse_verdict("Tie") == "tie"
    assert parse_verdict("Answer A is better") == "A" and parse_verdict("neither") == "invalid"
    assert parse_verdict("The better response is B.") == "B" and parse_verdict("A\n\nBecause ...") == "A"
    assert parse_verdict("A colour wheel has twelve hues") == "invalid"  # the article, not a verdict

    class Judge:
        def __init__(self, rule):
            self.rule, self.seen = rule, []

        def generate(self, requests):
            out = []
            for r in requests:
                text = r.messages[-1]["content"]
                a = text.split("Answer A:")[1].split("Answer B:")[0].strip()
                b = text.split("Answer B:")[1].split("Which answer")[0].strip()
                self.seen.append((a, b))
                out.append(Completion(text=self.rule(a, b), finish_reason="stop"))
            return out

    tasks = [EvalTask(f"t{i}", [{"role": "user", "content": f"q{i}"}], "r") for i in range(10)]
    base, tuned = ["BASE"] * 10, ["TUNED"] * 10
    fair = Judge(lambda a, b: ("A" if a == "TUNED" else "B") + "\nit says TUNED")
    res = judge_both_orders(fair, tasks, base, tuned, Decoding(temperature=0.0, max_tokens=8))
    assert fair.seen == [("TUNED", "BASE"), ("BASE", "TUNED")] * 10  # each task in both orders
    assert all(r["score"] == 1.0 and r["reasons"] == ["it says TUNED"] * 2 for r in res)
    biased = Judge(lambda a, b: "A")  # always the first position: no preference once both orders count
    res = judge_both_orders(biased, tasks, base, tuned, Decoding(temperature=0.0, max_tokens=8))
    s = judge_summary(res, rounds=100, seed=0)
    assert s["score"]["value"] == 0.5 and s["ties"] == 10 and s["answered_A"] == 20


def test_compare_data_tunes_each_selection_and_evaluates_all(tiny_model, run_dir, tmp_path):
    from pipeline.config import EvalConfig, RunConfig, SelectConfig
    from pipeline.records import Record
    from pipeline.runs.compare import compare_data
    from pipeline.train.evaluate import tasks_from_records

    run = tmp_path / "cmp"
    (run / "filter").mkdir(parents=True)
    with open(run / "filter" / "kept.jsonl", "w") as fh:
        for i, row in enumerate(_rows()):
            rec = Record(id=f"r{i}", instruction=row["messages"][0]["content"],
                         output=row["messages"][1]["content"], task_id=f"r{i}", source="bootstrap")
            fh.write(json.dumps(rec.to_dict()) + "\n")
    (run / "filter" / ".done").write_text("")
    cfg = RunConfig(tune=_cfg(tiny_model, max_steps=2, save_steps=100), select=SelectConfig(k=10),
                    eval=EvalConfig(max_new_tokens=4, batch_size=8, bootstrap_rounds=50))
    tasks = tasks_from_records(_human_tasks())
    table = compare_data(run, cfg, ["all", "longest_k"], tasks, "human")
    assert list(table["models"]) == ["base", "all", "longest_k"]
    assert table["selections"]["kept"] == {"all": 30, "longest_k": 10}
    assert {n: a["train_rows"] for n, a in table["adapters"].items()} == {"all": 30, "longest_k": 10}
    assert {a["steps"] for a in table["adapters"].values()} == {2}
    md = (run / "compare" / "table.md").read_text()
    assert "| longest_k | 10 | 2 |" in md
    rows = (run / "compare" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 8 * 3
    stamp = (run / "compare" / "longest_k" / "tune" / "tune_meta.json").stat().st_mtime_ns
    compare_data(run, cfg, ["longest_k"], tasks, "human")  # finished adapters are not tuned again
    assert (run / "compare" / "longest_k" / "tune" / "tune_meta.json").stat().st_mtime_ns == stamp


def test_resume_refuses_a_changed_split(tiny_model, run_dir, tmp_path):
    from transformers import TrainerCallback

    from pipeline.errors import InputError
    from pipeline.train.tune import train

    class StopAt1(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_training_stop = True

    data = run_dir / "dataset" / "messages.jsonl"
    out = tmp_path / "t"
    train(data, out, _cfg(tiny_model, max_steps=4, save_steps=1), callbacks=[StopAt1()])
    with pytest.raises(InputError, match="eval_fraction changed"):
        train(data, out, _cfg(tiny_model, max_steps=4, save_steps=1, eval_fraction=0.3), resume="last")
    with open(data, "a") as fh:
        fh.write(json.dumps(_rows()[0]) + "\n")
    with pytest.raises(InputError, match="dataset_sha256 changed"):
        train(data, out, _cfg(tiny_model, max_steps=4, save_steps=1), resume="last")


def test_cli_errors_name_the_path(tmp_path):
    r = run_cli("tune", str(tmp_path / "missing_run"), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "missing_run" in r.stderr and "dataset file not found" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("eval", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "tune_meta.json" in r.stderr
    r = run_cli("tune", str(tmp_path), "--set", "tune.lora_r=0", timeout=120)
    assert r.returncode == 2 and "tune.lora_r" in r.stderr


@pytest.mark.slow  # two subprocesses that import torch/transformers/trl: about 25 s idle, minutes on a busy machine
def test_cli_tune_and_eval(tiny_model, run_dir):
    r = run_cli("tune", str(run_dir), "--base-model", str(tiny_model), "--max-steps", "2", "--lr", "1e-3",
                "--eval-fraction", "0.1", "--max-length", "96", "--set", "tune.num_threads=1", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run_dir / "tune" / "adapter" / "adapter_model.safetensors").is_file()
    meta = json.loads((run_dir / "tune" / "tune_meta.json").read_text())
    assert meta["trainer"]["global_step"] == 2 and meta["settings"]["learning_rate"] == 1e-3
    r = run_cli("eval", str(run_dir), "--max-new-tokens", "4", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| ROUGE-L F |" in r.stdout
    assert (run_dir / "eval" / "table.json").is_file()


@pytest.mark.slow
def test_smollm2_tune_then_generate_with_adapter(tmp_path, run_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config import TuneConfig
    from pipeline.train.model import resolve_base_model
    from pipeline.train.tune import train

    base = resolve_base_model("")
    tok = AutoTokenizer.from_pretrained(base)
    assert tok.eos_token == tok.pad_token == "<|im_end|>"  # the GGUF tokenizer trap, fixed in the cached copy
    assert "quantization_config" not in json.loads((base / "config.json").read_text())  # the quantizer trap
    out = tmp_path / "tune"
    meta = train(run_dir / "dataset" / "messages.jsonl", out,
                 TuneConfig(max_steps=3, batch_size=2, max_length=128, eval_fraction=0.1, learning_rate=1e-4,
                            num_threads=1))
    assert meta["end_of_turn_token"] == "<|im_end|>" and meta["trainer"]["global_step"] == 3
    assert meta["labels"]["with_end_of_turn"] == meta["labels"]["examples"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out / "adapter"))
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    text = tok.apply_chat_template([{"role": "user", "content": "Repeat the word apple three times."}],
                                   tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        gen = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip()

    from pipeline.config import EvalConfig, TeacherConfig
    from pipeline.train.evaluate import evaluate

    table = evaluate(out, tmp_path / "eval", EvalConfig(max_new_tokens=16, judge=True),
                     TeacherConfig(n_ctx=4096, n_threads=1))
    assert table["examples"] == 3 and table["judge_model"].startswith("SmolLM2")
    assert table["models"]["tuned"]["reference_loss"] > 0 and (tmp_path / "eval" / "table.md").is_file()


def test_the_eval_judge_of_a_run_goes_through_its_cache_and_budget(tiny_model, run_dir, tmp_path, sims):
    """``pipeline run`` with tune and eval: the judge's requests are answered through the run's request cache, count
    in its budget and usage, and a second eval pays nothing again."""
    import sqlite3

    from pipeline.config import EvalConfig, RunConfig, TeacherConfig
    from pipeline.runs.stages import run_stages

    sim = sims()
    cfg = RunConfig(teacher=TeacherConfig(backend="openai", model="sim-teacher", base_url=sim.url, api_key_env=""),
                    tune=_cfg(tiny_model, max_steps=2, save_steps=100),
                    eval=EvalConfig(max_new_tokens=6, batch_size=4, judge=True))
    run = tmp_path / "judged"
    run_stages(cfg, run, stages=["export"])  # a run whose dataset is the fixture's rows
    (run / "dataset" / "messages.jsonl").write_bytes((run_dir / "dataset" / "messages.jsonl").read_bytes())
    m = run_stages(cfg, run, stages=["tune", "eval"])
    ev = m["stages"]["eval"]
    # 6 held-out rows, each judged in both orders unless base and tuned gave the same answer
    n = 2 * (6 - ev["judge"]["tuned"]["identical_answers"])
    assert n > 0 and ev["teacher_model"] == "sim-teacher" and ev["usage"]["requests"] == n == sim.stats()["requests"]
    assert m["sessions"][-1]["usage"]["requests"] == n and m["spent"]["requests"] == n
    with sqlite3.connect(run / "cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == n
    (run / "eval" / ".done").unlink()
    m = run_stages(cfg, run, stages=["tune", "eval"])
    assert m["stages"]["eval"]["usage"]["cache_hits"] == n and sim.stats()["requests"] == n


def _conversations(n: int = 12) -> list[dict]:
    rows = []
    for k in range(n):
        a, b = WORDS[k % len(WORDS)], WORDS[(k + 5) % len(WORDS)]
        rows.append({"messages": [
            {"role": "user", "content": f"Spell the word {a} backwards."},
            {"role": "assistant", "content": a[::-1]},
            {"role": "user", "content": f"And the word {b}?"},
            {"role": "assistant", "content": b[::-1]},
        ] + ([{"role": "user", "content": f"Now {a} in capitals."}, {"role": "assistant", "content": a.upper()}]
             if k % 2 else [])})
    return rows


def test_multi_turn_rows_train_on_every_assistant_turn_token_by_token(tiny_model, tmp_path):
    from pipeline.errors import InputError
    from pipeline.train.tune import build_trainer, check_turn_labels, load_examples, split_examples

    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _conversations()))
    examples, _ = load_examples(path)
    assert all(e.is_multi_turn for e in examples)
    train, held = split_examples(examples, 0.2, 7)
    trainer, tok, info = build_trainer(train, held, tmp_path / "out", _cfg(tiny_model), tiny_model)
    report = info["labels"]
    assert report["multi_turn"] and report["assistant_turns_trained"] == sum(
        sum(m["role"] == "assistant" for m in e.messages) for e in train)
    for ex, row in zip(train, trainer.train_dataset):
        ids, labels = row["input_ids"], row["labels"]
        # the expected labels, built independently: render every message and label the assistant ones
        expected: list[int] = []
        text = tok.apply_chat_template(ex.messages, tokenize=False)
        for chunk in text.split("<|im_start|>")[1:]:
            chunk_ids = tok("<|im_start|>" + chunk, add_special_tokens=False)["input_ids"]
            head = len(tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
            if chunk.startswith("assistant\n"):
                expected += [-100] * head + chunk_ids[head:]
            else:
                expected += [-100] * len(chunk_ids)
        assert labels == expected
        runs = [tok.decode([t for t in labels[s:e]]) for s, e in _runs(labels)]
        assert runs == [m["content"] + "<|im_end|>\n" for m in ex.messages if m["role"] == "assistant"]
    # a label on a user turn is caught
    rows = [dict(r) for r in trainer.train_dataset]
    rows[0]["labels"] = list(rows[0]["input_ids"])
    with pytest.raises(InputError, match="multi-turn label check"):
        check_turn_labels(rows, tok, tok.convert_tokens_to_ids("<|im_end|>"), train, 128)


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    out, start = [], None
    for k, lab in enumerate(labels + [-100]):
        if lab != -100 and start is None:
            start = k
        elif lab == -100 and start is not None:
            out.append((start, k))
            start = None
    return out


def test_alpaca_history_rows_are_conversations_and_train(tiny_model, tmp_path):
    from pipeline.train.tune import load_examples, train

    path = tmp_path / "train.jsonl"
    rows = [{"instruction": f"And the word {WORDS[k + 1]}?", "input": "", "output": WORDS[k + 1][::-1],
             "history": [[f"Spell the word {WORDS[k]} backwards.", WORDS[k][::-1]]]} for k in range(10)]
    rows.append({"instruction": "Spell the word apple backwards.", "input": "", "output": "elppa"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, _ = load_examples(path)
    assert examples[0].messages[1] == {"role": "assistant", "content": WORDS[0][::-1]} and examples[0].is_multi_turn
    assert not examples[-1].is_multi_turn
    meta = train(path, tmp_path / "out", _cfg(tiny_model, max_steps=2, save_steps=100))
    assert meta["labels"]["multi_turn"] and meta["trainer"]["global_step"] == 2
    assert meta["trainer"]["first_loss"] > 0
