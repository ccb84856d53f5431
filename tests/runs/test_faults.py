"""Every fault a teacher server or the network can produce, in the default suite: a fault-injecting proxy on
127.0.0.1 in front of the simulated teacher (answers at once, short timeouts), and the run must still give exactly
the dataset of a run without faults, with every failure counted in the manifest."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.fault_proxy import FaultProxy


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _data_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*.jsonl"))}


def test_a_run_through_every_kind_of_fault_gives_the_dataset_of_a_clean_run(tmp_path, sims):
    sim = sims()
    args = ["run", "--teacher", "openai", "--model", "sim-teacher", "--target", "40", "--no-report",
            "--set", 'teacher.api_key_env=""', "--set", 'bootstrap.classification="teacher"',
            "--set", "bootstrap.request_batch_size=4", "--set", "teacher.concurrency=8",
            "--set", "teacher.timeout_s=1.0", "--set", "teacher.max_retries=8"]
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    r = run_cli(*args, "--base-url", sim.url, "--out", str(clean))
    assert r.returncode == 0, r.stderr[-2000:]
    # 30% of the requests fail, the kinds in turn: 429 (Retry-After), 500, 503, reset, no answer within the
    # timeout, a body cut short, invalid JSON.
    with FaultProxy(sim.url, rate=0.3, hang_s=1.5, cycle=True) as proxy:
        r = run_cli(*args, "--base-url", proxy.url, "--out", str(faulty))
        print("faults injected:", dict(proxy.injected))
    assert r.returncode == 0, r.stderr[-2000:]
    m, ref = _manifest(faulty), _manifest(clean)
    assert m["status"] == "complete" and m["stages"]["bootstrap"]["tasks_kept"] == 40
    assert _data_files(faulty) == _data_files(clean)  # every stage file and the dataset, byte for byte
    usage = m["sessions"][-1]["usage"]
    kinds = usage["retries_by_kind"]
    assert set(kinds) == {"http_429", "http_500", "http_503", "connection", "timeout", "truncated",
                          "malformed_response"}, kinds
    assert usage["retries"] == sum(kinds.values()) and usage["requests"] == ref["sessions"][-1]["usage"]["requests"]
    # The tries a paid server may have billed (it answered too late, or its answer was cut or unreadable) are
    # in what the run spent, over the clean run's figures.
    billed = kinds["timeout"] + kinds["truncated"] + kinds["malformed_response"]
    assert m["spent"]["billed_failures"] == billed > 0
    assert m["spent"]["requests"] == ref["spent"]["requests"] + billed
    assert m["spent"]["prompt_tokens"] > ref["spent"]["prompt_tokens"]
