"""End-to-end runs with real teachers: the embedded model in-process, and the same GGUF behind a real
llama.cpp OpenAI-compatible server."""
import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import run_cli

KEPT_FIELDS = {"id", "instruction", "input", "output", "is_classification", "source", "task_id", "nearest_id",
               "nearest_instruction", "rouge_l", "teacher_model"}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_run_dir(run: Path, min_tasks: int) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    kept = _lines(run / "bootstrap" / "kept.jsonl")
    rejected = _lines(run / "bootstrap" / "rejected.jsonl")
    stage = manifest["stages"]["bootstrap"]
    assert stage["kept"] == len(kept) and stage["rejected"] == len(rejected)
    assert stage["rejected_by_reason"] == dict(Counter(r["reason"] for r in rejected))
    assert stage["tasks_kept"] == len({r["task_id"] for r in kept}) >= min_tasks
    assert stage["usage"]["prompt_tokens"] > 0 and stage["usage"]["completion_tokens"] > 0
    for r in kept:
        assert KEPT_FIELDS <= r.keys() and r["source"] == "bootstrap" and r["output"].strip()
        assert isinstance(r["is_classification"], bool) and 0.0 <= r["rouge_l"] <= 0.7
    assert len({r["id"] for r in kept}) == len(kept)
    assert all(r["reason"] and "details" in r for r in rejected)
    for r in rejected:
        if r["reason"] == "rouge_duplicate":
            assert r["details"]["rouge_l"] > 0.7 and r["details"]["nearest_id"]
    # The exported dataset reads as is with Hugging Face datasets.
    from datasets import load_dataset

    # The final filter chain re-checks everything generated; the dataset is what it kept.
    final = _lines(run / "filter" / "kept.jsonl")
    filtered = manifest["stages"]["filter"]
    assert filtered["input"] == len(kept) and filtered["kept"] == len(final) <= len(kept)
    assert filtered["kept"] + filtered["rejected"] == len(kept)
    assert {r["id"] for r in final} <= {r["id"] for r in kept}
    cache = str(run.parent / "hf-cache")  # not the shared cache: pytest reuses temporary paths across sessions
    alpaca = load_dataset("json", data_files=str(run / "dataset" / "train.jsonl"), split="train", cache_dir=cache)
    assert alpaca.column_names == ["instruction", "input", "output"] and len(alpaca) == len(final)
    chat = load_dataset("json", data_files=str(run / "dataset" / "messages.jsonl"), split="train", cache_dir=cache)
    assert len(chat) == len(final)
    assert [m["role"] for m in chat[0]["messages"]] == ["user", "assistant"]
    return manifest


def test_embedded_run_writes_a_complete_run_dir(tmp_path):
    run = tmp_path / "run"
    r = run_cli("run", "--out", str(run), "--target", "3", "--set", "bootstrap.request_batch_size=2")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = check_run_dir(run, min_tasks=3)
    assert manifest["config"]["teacher"]["backend"] == "llamacpp"
    assert manifest["versions"]["llama-cpp-python"]
    assert manifest["stages"]["export"]["kept"] == manifest["stages"]["filter"]["kept"]
    # Running again on a finished run resumes it: nothing to do, nothing sent, nothing changed.
    before = {p: p.read_bytes() for p in run.rglob("*.jsonl")}
    again = run_cli("run", "--out", str(run), "--target", "3", "--set", "bootstrap.request_batch_size=2")
    assert again.returncode == 0, again.stderr
    assert {p: p.read_bytes() for p in run.rglob("*.jsonl")} == before
    # A different config is refused unless forced.
    other = run_cli("run", "--out", str(run), "--target", "4")
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert ("cannot resume: changed since the run started: config bootstrap.request_batch_size, "
            "bootstrap.target_instructions" in other.stderr), other.stderr


def test_openai_backend_run_from_published_seeds(llama_server, published_seeds, tmp_path):
    run = tmp_path / "run"
    r = run_cli("run", "--config", "configs/llamacpp_server.toml", "--base-url", llama_server, "--out", str(run),
                "--target", "2", "--set", f'seed_files=["{published_seeds}"]', "--set",
                "bootstrap.request_batch_size=2")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = check_run_dir(run, min_tasks=2)
    assert manifest["config"]["teacher"]["backend"] == "openai"
    assert manifest["seeds"]["tasks"] == 175


@pytest.mark.slow
def test_demo_reaches_fifty_instructions(tmp_path):
    """README command 1, as is: the embedded demo with its default target of 50 instructions."""
    run = tmp_path / "run"
    r = run_cli("run", "--out", str(run), timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    check_run_dir(run, min_tasks=50)
