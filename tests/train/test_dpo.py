"""LoRA DPO (``pipeline tune --method dpo``): preference rows, the split, DPOTrainer runs, resume, the CLI, DPO on
top of an SFT adapter.

Fast tests use test_tune.py's tiny randomly initialised Llama with its locally trained ChatML tokenizer (no
download). The slow test DPO-tunes the embedded SmolLM2-135M-Instruct and checks that the loss falls.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

from tests.train.test_tune import WORDS, _cfg, _rows, tiny_model  # noqa: F401  (tiny_model: the fixture)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _pairs(n: int = 12) -> list[dict]:
    """Hand-written pairs: the right answer against a wrong one, conversational and plain-string rows mixed."""
    rows = []
    for i, w in enumerate(WORDS[:n]):
        if i % 3 == 0:  # plain strings: a user message and assistant answers
            rows.append({"prompt": f"Spell the word {w} backwards.", "chosen": w[::-1], "rejected": w,
                         "lineage": f"spell-{w}", "margin": 1.0})
        else:
            rows.append({"prompt": [{"role": "user", "content": f"Repeat the word {w} three times."}],
                         "chosen": [{"role": "assistant", "content": f"{w} {w} {w}"}],
                         "rejected": [{"role": "assistant", "content": f"{w}"}],
                         "id": f"pair-{i}", "lineage": f"repeat-{w}", "margin": 0.75})
    return rows


def _write(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture()
def prefs_run(tmp_path) -> Path:
    d = tmp_path / "run"
    _write(d / "dataset" / "preferences.jsonl", _pairs())
    return d


def _dcfg(tiny_model: Path, **kw):
    from pipeline.config import DpoConfig

    dpo = DpoConfig(**{"learning_rate": 5e-3, "beta": 0.1, **kw.pop("dpo", {})})
    return _cfg(tiny_model, **{"max_steps": 4, "save_steps": 2, "eval_fraction": 0.25, **kw}, dpo=dpo)


def _log(out: Path) -> list[dict]:
    with open(out / "train_log.csv") as fh:
        return list(csv.DictReader(fh))


def _stop_at(step: int):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                control.should_training_stop = True

    return StopAt()


def test_pairs_rows_drops_and_errors(tmp_path, prefs_run):
    from pipeline.errors import InputError
    from pipeline.runs.read import default_dpo_dir, resolve_preferences
    from pipeline.train.dpo import load_pairs
    from pipeline.train.tune import split_examples

    path = resolve_preferences(prefs_run)
    assert path == prefs_run / "dataset" / "preferences.jsonl"
    assert default_dpo_dir(prefs_run, path) == prefs_run / "tune_dpo"
    assert default_dpo_dir(path, path) == path.parent / "tune_dpo"
    pairs, dropped = load_pairs(path)
    assert len(pairs) == 12 and not dropped
    assert pairs[0].prompt == [{"role": "user", "content": "Spell the word apple backwards."}]
    assert pairs[0].chosen == [{"role": "assistant", "content": "elppa"}] and pairs[0].id == "preferences.jsonl:1"
    assert pairs[1].id == "pair-1" and pairs[1].group == "repeat-river" and pairs[1].margin == 0.75
    train, held = split_examples(pairs, 0.25, seed=7)  # by lineage, seeded, like SFT
    assert len(held) == 3 and len(train) == 9 and not {p.id for p in train} & {p.id for p in held}

    same = {"prompt": "Say hi.", "chosen": "hi", "rejected": " hi "}
    empty = {"prompt": "Say hi.", "chosen": "", "rejected": "hello"}
    no_prompt = {"prompt": [{"role": "user", "content": "  "}], "chosen": "a", "rejected": "b"}
    mixed = _write(tmp_path / "mixed.jsonl", [_pairs(1)[0], same, empty, no_prompt])
    pairs, dropped = load_pairs(mixed)
    assert len(pairs) == 1 and dict(dropped) == {"identical": 1, "empty_chosen": 1, "empty_prompt": 1}

    bad_rows = [
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen"),
        ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "bot"}]},
         r"rejected\[0\]\.role"),
        ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, r"chosen\[0\]\.role"),
        ({"prompt": "q", "rejected": "b"}, "chosen"),
        ({"prompt": "q", "chosen": [], "rejected": "b"}, "chosen"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "high"}, "margin"),
        ({"prompt": [{"role": "assistant", "content": "q"}], "chosen": "a", "rejected": "b"}, "prompt"),
    ]
    for row, field in bad_rows:
        bad = _write(tmp_path / "bad.jsonl", [_pairs(1)[0], row])
        with pytest.raises(InputError, match=rf"bad.jsonl:2: {field}") as e:
            load_pairs(bad)
        assert e.value.line == 2 and "\n" not in str(e.value)
    with pytest.raises(InputError, match="bad.jsonl:1: invalid JSON"):
        load_pairs(_write(tmp_path / "bad.jsonl", ["{not json"]))
    with pytest.raises(InputError, match="no usable pairs"):
        load_pairs(_write(tmp_path / "none.jsonl", [same]))
    with pytest.raises(InputError, match="preferences file not found"):
        resolve_preferences(tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"dataset/preferences.jsonl: preferences file not found"):
        resolve_preferences(tmp_path)


def test_check_pairs_refuses_same_tokens_and_missing_end_of_turn():
    from pipeline.errors import InputError
    from pipeline.train.dpo import check_pairs

    class Tok:
        def decode(self, ids):
            return " ".join(map(str, ids))

    eot = 9
    good = {"prompt_ids": [1, 2], "chosen_ids": [3, eot], "rejected_ids": [4, eot]}
    report = check_pairs([good, good], Tok(), eot, max_length=64)
    assert report["pairs"] == report["with_end_of_turn"] == 2 and report["truncated"] == 0
    old_trl = {"prompt_input_ids": [1], "chosen_input_ids": [3, eot], "rejected_input_ids": [4, eot]}
    assert check_pairs([old_trl], Tok(), eot, 64)["pairs"] == 1
    with pytest.raises(InputError, match="same tokens"):
        check_pairs([good, {"prompt_ids": [1], "chosen_ids": [3, eot], "rejected_ids": [3, eot]}], Tok(), eot, 64)
    with pytest.raises(InputError, match="no end-of-turn token in the rejected completion"):
        check_pairs([{"prompt_ids": [1], "chosen_ids": [3, eot], "rejected_ids": [4]}], Tok(), eot, 64)
    # cut by max_length: the end-of-turn token is not required, but the answers must differ before the cut
    long = {"prompt_ids": [1, 2], "chosen_ids": [3, 5, 6, eot], "rejected_ids": [4, 5, 6, eot]}
    assert check_pairs([long], Tok(), eot, max_length=3)["truncated"] == 1
    with pytest.raises(InputError, match="tune.max_length"):
        check_pairs([long], Tok(), eot, max_length=2)


def test_dpo_trains_and_writes_outputs(tiny_model, prefs_run, tmp_path):
    from pipeline.train.dpo import train_dpo

    out = tmp_path / "dpo"
    meta = train_dpo(prefs_run / "dataset" / "preferences.jsonl", out, _dcfg(tiny_model, save_steps=100))
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json",
                 "loss.png", "train_log.csv", "train_log.jsonl", "heldout.jsonl", "split.json", "tune_meta.json",
                 "checkpoints/checkpoint-4/trainer_state.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "tune_meta.json").read_text())
    assert saved["method"] == meta["method"] == "dpo" and saved["beta"] == 0.1 and saved["sft_adapter"] is None
    tr = saved["trainer"]
    assert tr["global_step"] == 4 and tr["tokens"] > 0 and tr["tokens_per_s"] > 0
    for key in ("first_loss", "last_loss", "eval_loss", "train_loss", "rewards_margins", "rewards_accuracies",
                "eval_rewards_margins", "eval_rewards_accuracies"):
        assert tr[key] is not None and math.isfinite(tr[key]), key
    assert tr["first_loss"] == pytest.approx(math.log(2), abs=1e-3)  # the new adapter starts as the reference
    assert saved["train_rows"] == 9 and saved["heldout_rows"] == 3 and saved["pair_check"]["pairs"] == 9
    assert saved["pair_check"]["with_end_of_turn"] == 9 and saved["settings"]["dpo"]["learning_rate"] == 5e-3
    log = _log(out)
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]
    assert {"rewards/margins", "rewards/accuracies", "eval_rewards/accuracies"} <= set(log[0])
    assert all(math.isfinite(float(r["loss"])) for r in log)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    split = json.loads((out / "split.json").read_text())
    assert split["method"] == "dpo" and len(split["dataset_sha256"]) == 16 and len(split["heldout_ids"]) == 3
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert [h["id"] for h in held] == split["heldout_ids"] and "chosen" in held[0]
    live = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in live)
    # the adapter loads with peft on the base model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(out / "adapter"))


def test_dpo_resume_continues_and_refuses_a_changed_file(tiny_model, prefs_run, tmp_path):
    from pipeline.errors import InputError
    from pipeline.train.dpo import train_dpo

    data = prefs_run / "dataset" / "preferences.jsonl"
    out = tmp_path / "dpo"
    cfg = _dcfg(tiny_model)
    first = train_dpo(data, out, cfg, callbacks=[_stop_at(2)])
    assert first["trainer"]["global_step"] == 2 and (out / "checkpoints" / "checkpoint-2").is_dir()
    with pytest.raises(InputError, match="--resume last"):
        train_dpo(data, out, cfg)  # a fresh run must not mix into an earlier one's checkpoints
    meta = train_dpo(data, out, cfg, resume="last")
    assert meta["resumed_from"].endswith("checkpoint-2") and meta["trainer"]["global_step"] == 4
    assert meta["trainer"]["steps_this_call"] == 2
    assert [int(r["step"]) for r in _log(out)] == [1, 2, 3, 4]
    with open(data, "a") as fh:
        fh.write(json.dumps(_pairs()[1]) + "\n")
    with pytest.raises(InputError, match="dataset_sha256 changed"):
        train_dpo(data, out, cfg, resume="last")


def test_cli_tune_method_dpo(tiny_model, prefs_run, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.main import app

    runner = CliRunner()
    out = tmp_path / "cli_dpo"
    r = runner.invoke(app, ["tune", str(prefs_run / "dataset" / "preferences.jsonl"), "--method", "dpo", "--out",
                            str(out), "--max-steps", "2", "--base-model", str(tiny_model), "--beta", "0.2",
                            "--lr", "1e-3", "--max-length", "96", "--set", "tune.num_threads=1"])
    assert r.exit_code == 0, r.output
    assert "DPO-tuned" in r.output
    meta = json.loads((out / "tune_meta.json").read_text())
    assert meta["method"] == "dpo" and meta["beta"] == 0.2 and meta["trainer"]["global_step"] == 2
    assert meta["settings"]["dpo"]["learning_rate"] == 1e-3 and meta["settings"]["learning_rate"] == 2e-4
    # a run directory without preferences, and a bad row: exit 2, one line naming the file (and line, field)
    r = runner.invoke(app, ["tune", str(tmp_path), "--method", "dpo"])
    assert r.exit_code == 2 and "preferences.jsonl" in r.output and "Traceback" not in r.output
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": 1, "rejected": "b"}])
    r = runner.invoke(app, ["tune", str(bad), "--method", "dpo", "--base-model", str(tiny_model)])
    assert r.exit_code == 2 and "bad.jsonl:1: chosen:" in r.output
    r = runner.invoke(app, ["tune", str(prefs_run), "--method", "dpo", "--out", str(tmp_path / "lt"), "--base-model",
                            str(tiny_model), "--max-steps", "1", "--set", "tune.dpo.loss_type=nope"])
    assert r.exit_code == 2 and "tune.dpo.loss_type: Unknown loss type" in r.output, r.output
    r = runner.invoke(app, ["tune", str(bad), "--beta", "0.2"])  # SFT takes no beta
    assert r.exit_code == 2 and "only with --method dpo" in r.output


def test_dpo_from_an_sft_adapter(tiny_model, tmp_path):
    from pipeline.errors import InputError
    from pipeline.train.dpo import train_dpo
    from pipeline.train.tune import train

    sft_data = _write(tmp_path / "run" / "dataset" / "messages.jsonl", _rows())
    prefs = _write(tmp_path / "run" / "dataset" / "preferences.jsonl", _pairs())
    sft = train(sft_data, tmp_path / "run" / "tune", _cfg(tiny_model, max_steps=2, save_steps=100))
    assert sft["trainer"]["global_step"] == 2
    adapter = tmp_path / "run" / "tune" / "adapter"
    out = tmp_path / "run" / "tune_dpo"
    meta = train_dpo(prefs, out, _dcfg(tiny_model, max_steps=2, save_steps=100, dpo={"sft_adapter": str(adapter)}))
    assert meta["sft_adapter"] == str(adapter) and meta["adapter_applies_to"].startswith("base_model + sft_adapter")
    assert json.loads((out / "tune_meta.json").read_text())["settings"]["dpo"]["sft_adapter"] == str(adapter)
    assert json.loads((out / "split.json").read_text())["sft_adapter"] == str(adapter.resolve())
    tr = meta["trainer"]
    assert tr["global_step"] == 2 and math.isfinite(tr["first_loss"]) and math.isfinite(tr["last_loss"])
    # the reference is the SFT model: the new adapter starts equal to it, so the first loss is log 2
    assert tr["first_loss"] == pytest.approx(math.log(2), abs=1e-3)
    # a tune output directory works too (its adapter/); the policy is the SFT model, not the base model: the
    # first step's log-probabilities are those of the SFT run above and differ from a run on the base model
    meta = train_dpo(prefs, tmp_path / "d2", _dcfg(tiny_model, max_steps=1, save_steps=100,
                                                     dpo={"sft_adapter": str(tmp_path / "run" / "tune")}))
    assert meta["sft_adapter"] == str(adapter)
    train_dpo(prefs, tmp_path / "d_base", _dcfg(tiny_model, max_steps=1, save_steps=100))

    def first_logps(d: Path) -> float:
        rows = [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()]
        return next(r["logps/chosen"] for r in rows if r["step"] == 1 and "logps/chosen" in r)

    assert first_logps(tmp_path / "d2") == pytest.approx(first_logps(out), abs=1e-5)
    assert abs(first_logps(tmp_path / "d_base") - first_logps(out)) > 1e-3
    with pytest.raises(InputError, match="tune.dpo.sft_adapter: not an SFT adapter"):
        train_dpo(prefs, tmp_path / "d3", _dcfg(tiny_model, dpo={"sft_adapter": str(tmp_path / "nowhere")}))

    # eval puts a DPO-on-SFT adapter on the SFT model: both adapters active equal the merged SFT model + DPO
    import torch
    from peft import PeftModel

    from pipeline.config import EvalConfig
    from pipeline.train.evaluate import EvalTask, Students
    from pipeline.train.model import load_model

    students = Students(tiny_model, tiny_model, {"max_length": 128}, EvalConfig(max_new_tokens=6, batch_size=2))
    task = [EvalTask("t", [{"role": "user", "content": "Spell the word apple backwards."}], "elppa")]
    stacked = students.answer(task, out / "adapter", under=adapter)[0]
    merged = PeftModel.from_pretrained(load_model(tiny_model, "fp32"), str(adapter)).merge_and_unload()
    reference = Students(tiny_model, tiny_model, {"max_length": 128}, EvalConfig(max_new_tokens=6, batch_size=2))
    reference.base = merged
    expected = reference.answer(task, out / "adapter")[0]
    assert stacked["text"] == expected["text"] and stacked["nll"][0] == pytest.approx(expected["nll"][0], rel=1e-4)
    plain = students.answer(task, out / "adapter")[0]  # the DPO adapter on the bare base: another model
    assert plain["nll"][0] != pytest.approx(expected["nll"][0], rel=1e-4)
    base = students.answer(task, None)[0]
    with torch.no_grad():
        assert base == students.answer(task, None)[0]  # the base weights came back untouched


@pytest.mark.slow  # the embedded SmolLM2-135M on the CPU: about a minute or two idle, more on a busy machine
def test_smollm2_dpo_loss_falls(tmp_path):
    from pipeline.config import DpoConfig, TuneConfig
    from pipeline.train.dpo import train_dpo

    facts = [("What is 2 + 3?", "5", "7"), ("What colour is the sky on a clear day?", "Blue.", "Green."),
             ("What is the capital of France?", "Paris.", "Berlin."), ("How many legs does a spider have?", "Eight.",
                                                                       "Six."),
             ("What is 10 minus 4?", "6", "5"), ("Which planet is closest to the Sun?", "Mercury.", "Mars."),
             ("What do bees make?", "Honey.", "Milk."), ("What is the opposite of hot?", "Cold.", "Warm.")]
    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
             "rejected": [{"role": "assistant", "content": bad}], "lineage": f"q{i}"}
            for i, (q, good, bad) in enumerate(facts)]
    data = _write(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "dpo"
    meta = train_dpo(data, out, TuneConfig(max_steps=20, batch_size=4, max_length=128, eval_fraction=0.0,
                                           save_steps=100, lr_scheduler="constant", num_threads=2,
                                           dpo=DpoConfig(learning_rate=5e-5, beta=0.1)))
    tr = meta["trainer"]
    print(f"SmolLM2 DPO loss: first {tr['first_loss']:.4f} last {tr['last_loss']:.4f}; reward margin "
          f"{tr['rewards_margins']:.4f} accuracy {tr['rewards_accuracies']:.2f}; {tr['tokens_per_s']} tokens/s")
    assert meta["end_of_turn_token"] == "<|im_end|>" and meta["pair_check"]["with_end_of_turn"] == 8
    assert tr["global_step"] == 20 and tr["last_loss"] < tr["first_loss"]
    assert tr["rewards_margins"] > 0
