"""The Batch API teacher (``teacher.mode = "batch"``) against the simulated teacher's Files and Batches endpoints
(``bench/sim_teacher.py``, a real server on 127.0.0.1): real ``pipeline run`` processes, real files, kills.

The simulated teacher answers each request from its own seed, so a batch-mode run, an online run and a killed and
resumed batch-mode run must all produce the same dataset, byte for byte. The server counts every line it is given:
``duplicate_lines`` (a request submitted again while its answer was already made or still coming) must stay 0."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import Price, RunConfig, load_config
from pipeline.errors import InputError
from pipeline.teachers import make_backend
from tests.conftest import Sim, run_cli

PIPELINE = str(Path(sys.executable).parent / "pipeline")
PRICES = ["--set", 'prices."sim-teacher"={input_per_mtok=2.0, output_per_mtok=4.0}']


def run_args(sim: Sim, mode: str = "batch", *extra: str) -> list[str]:
    return ["run", "--teacher", "openai", "--model", "sim-teacher", "--base-url", sim.url, "--target", "3",
            "--no-report", "--set", 'teacher.api_key_env=""', "--set", f'teacher.mode="{mode}"',
            "--set", "teacher.batch_poll_s=0.1", "--set", "teacher.batch_flush_idle_s=0.2", *extra]


def data_files(run: Path) -> dict[str, bytes]:
    """The run's records and dataset (not the Batch API's own files)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*.jsonl"))
            if p.relative_to(run).parts[0] != "batches"}


def ledger(run: Path) -> list[dict]:
    path = run / "batches" / "ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def events(run: Path, event: str) -> list[dict]:
    return [row for row in ledger(run) if row["event"] == event]


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def assert_each_batch_once(sim: Sim, run: Path) -> None:
    """Every intent of the ledger was uploaded once and made one batch; the server holds no other batch and was
    never given a request twice."""
    stats = sim.batch()
    assert stats["duplicate_lines"] == 0, stats
    intents = [b["metadata"]["pipeline_intent"] for b in stats["batches"]]
    assert len(intents) == len(set(intents)) == stats["batches_created"]
    created = {row["intent"]: row["batch_id"] for row in events(run, "created")}
    assert sorted(created) == sorted(intents)
    assert {b["id"] for b in stats["batches"]} == set(created.values())
    uploads = [row["intent"] for row in events(run, "uploaded")]
    assert len(uploads) == len(set(uploads))


def wait_for(cond, what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted online run against the simulated teacher: what every batch-mode run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    sim = Sim(tmp)
    try:
        ref = tmp / "online"
        r = run_cli(*run_args(sim, "online"), *PRICES, "--out", str(ref))
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        sim.close()
    return ref


# -- configuration ------------------------------------------------------------------------------------------------
def test_batch_mode_needs_the_openai_backend_and_a_run_directory():
    with pytest.raises(InputError, match='needs backend = "openai"'):
        load_config(None, sets=['teacher.mode="batch"'])
    cfg = load_config(None, sets=['teacher.backend="openai"', 'teacher.model="m"', 'teacher.mode="batch"',
                             'teacher.api_key_env=""'])
    with pytest.raises(InputError, match="run directory"):
        make_backend(cfg.teacher)


def test_batch_settings_may_change_on_resume_but_not_the_mode():
    base = RunConfig()
    assert base.model_copy(update={"teacher": base.teacher.model_copy(update={"batch_poll_s": 1.0})}
                           ).fingerprint() == base.fingerprint()
    batch = base.teacher.model_copy(update={"mode": "batch", "backend": "openai"})
    online = base.teacher.model_copy(update={"backend": "openai"})
    assert (base.model_copy(update={"teacher": batch}).fingerprint()
            != base.model_copy(update={"teacher": online}).fingerprint())


def test_batch_prices_default_to_half_and_can_be_set():
    p = Price(input_per_mtok=2.0, output_per_mtok=4.0)
    assert p.rates("online") == (2.0, 4.0) and p.rates("batch") == (1.0, 2.0)
    assert Price(input_per_mtok=2.0, output_per_mtok=4.0, batch_input_per_mtok=0.5,
                 batch_output_per_mtok=3.0).rates("batch") == (0.5, 3.0)


# -- runs -----------------------------------------------------------------------------------------------------------
def test_batch_run_matches_online_and_pays_batch_prices(sims, tmp_path, reference):
    sim = sims("--batch-delay", "0.2")
    run = tmp_path / "batch"
    r = run_cli(*run_args(sim), *PRICES, "--out", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert data_files(run) == data_files(reference)
    assert_each_batch_once(sim, run)
    stats = sim.batch()
    m = manifest(run)
    backend = m["stages"]["bootstrap"]["engine"]["backend"]
    # Rounds: the first batch holds the generation request(s); the next ones the instance chains.
    assert stats["batches_created"] == backend["batches_created"] >= 2
    assert stats["lines_submitted"] == stats["lines_answered"] == backend["requests_submitted"] == m["spent"][
        "requests"]
    # Same tokens as online, at half the price (no batch prices given: the online ones times 0.5).
    online = manifest(reference)["spent"]
    assert (m["spent"]["prompt_tokens"], m["spent"]["completion_tokens"]) == (online["prompt_tokens"],
                                                                              online["completion_tokens"])
    expected = (m["spent"]["prompt_tokens"] * 1.0 + m["spent"]["completion_tokens"] * 2.0) / 1e6
    assert m["spent"]["cost_usd"] == pytest.approx(expected, abs=1e-9)
    assert online["cost_usd"] == pytest.approx(2 * expected, abs=1e-9)


def test_kill_between_upload_and_poll_resumes_without_submitting_twice(sims, tmp_path, reference):
    sim = sims("--batch-delay", "3.0")
    run = tmp_path / "killed"
    proc = subprocess.Popen([PIPELINE, *run_args(sim), *PRICES, "--out", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: events(run, "created"), "a batch was created", proc)
        assert [b["status"] for b in sim.batch()["batches"]] == ["in_progress"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not events(run, "finished")
    sim.set(delay=0.2)  # the batch already made keeps its 3 s; later ones are quick
    r = run_cli(*run_args(sim), *PRICES, "--out", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert data_files(run) == data_files(reference)
    assert_each_batch_once(sim, run)
    m = manifest(run)
    assert m["status"] == "complete" and len(m["sessions"]) == 2
    backend = m["stages"]["bootstrap"]["engine"]["backend"]
    assert backend["batches_resumed"] == 1  # the resumed session waited for the killed session's batch
    assert sim.batch()["lines_submitted"] == m["spent"]["requests"]


def test_kill_between_create_and_recording_the_id_finds_the_batch(sims, tmp_path, reference):
    """The API made the batch but the process died before it learned the id: the resumed run finds the batch by
    the intent id in its metadata instead of making a second one."""
    sim = sims("--batch-delay", "0.2", "--batch-create-delay", "3.0")
    run = tmp_path / "killed"
    proc = subprocess.Popen([PIPELINE, *run_args(sim), *PRICES, "--out", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sim.batch()["batches_created"] == 1, "the API made a batch", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(events(run, "uploaded")) == 1 and not events(run, "created")
    sim.set(create_delay=0.0)
    r = run_cli(*run_args(sim), *PRICES, "--out", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert data_files(run) == data_files(reference)
    assert_each_batch_once(sim, run)
    backend = manifest(run)["stages"]["bootstrap"]["engine"]["backend"]
    assert backend["batches_found"] == 1 and backend["batches_resumed"] == 1


def test_uploaded_but_never_created_is_created_from_the_recorded_file(sims, tmp_path, reference):
    """A batch creation the API refuses stops the run (exit 1) after the upload; the resumed run creates the batch
    from the file it recorded, without uploading it again."""
    sim = sims("--batch-delay", "0.2")
    sim.set(refuse_create=True)
    run = tmp_path / "refused"
    r = run_cli(*run_args(sim), "--out", str(run))
    assert r.returncode == 1 and "batch creation is not allowed" in r.stderr, r.stderr[-2000:]
    [uploaded] = events(run, "uploaded")
    assert sim.batch()["files_uploaded"] == 1 and not events(run, "created")
    sim.set(refuse_create=False)
    r = run_cli(*run_args(sim), "--out", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert data_files(run) == data_files(reference)
    assert_each_batch_once(sim, run)
    first = next(row for row in events(run, "created") if row["intent"] == uploaded["intent"])
    assert first["batch_id"] == sim.batch()["batches"][0]["id"]
    assert sim.batch()["files_uploaded"] == len(events(run, "uploaded"))  # the first file went up once


def test_refused_lines_are_rejected_and_expired_lines_sent_again(sims, tmp_path):
    sim = sims("--batch-delay", "0.1", "--batch-refuse-frac", "0.25", "--batch-expire-frac", "0.3")
    run = tmp_path / "faults"
    r = run_cli(*run_args(sim), "--target", "12", "--out", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    stats = sim.batch()
    assert stats["lines_refused"] > 0 and stats["lines_expired"] > 0
    assert stats["duplicate_lines"] == 0  # an expired line never ran: sending it again pays for it once
    rejected = [json.loads(line) for stage in ("bootstrap", "evolve") if (run / stage / "rejected.jsonl").exists()
                for line in (run / stage / "rejected.jsonl").read_text().splitlines()]
    refused = [row for row in rejected if row["reason"] == "teacher_refused"]
    assert refused and all("simulated: this request was refused" in json.dumps(row) for row in refused)
    m = manifest(run)
    backend = m["stages"]["bootstrap"]["engine"]["backend"]
    assert backend["lines_resubmitted"] == stats["lines_expired"]
    assert m["sessions"][-1]["usage"]["retries_by_kind"]["batch_expired"] == stats["lines_expired"]
    # Every refusal is counted; those of tasks past the target are dropped with their tasks, never written.
    assert m["stages"]["bootstrap"]["engine"]["refused"] == stats["lines_refused"] >= len(refused)
