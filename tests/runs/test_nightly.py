"""A nightly run survives kills, flaky teachers, budgets and locks, and never leaks its API key.

They run in the default suite (about 4 minutes on 2 cores), except the 30%-fault run, which waits out real
timeouts and is marked slow (`make test-slow`)."""
from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli
from tests.fault_proxy import FaultProxy, summary

PIPELINE = str(Path(sys.executable).parent / "pipeline")
# Small: one generation request per step. Deterministic although sampled: every request carries its own seed.
SMALL = ["--set", "bootstrap.request_batch_size=1", "--set", "bootstrap.new_per_request=8", "--no-report"]


def _cache_rows(run: Path) -> int:
    """Answers committed to the run's request cache (0 while the cache is still being created)."""
    try:
        with sqlite3.connect(run / "cache.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _data_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*.jsonl"))}


def _kill_sessions(cmd: list[str], most: int, trigger, linger=lambda: 0.0) -> int:
    """Start ``cmd`` again and again (a run resuming itself) and SIGKILL each session once the check made by
    ``trigger()`` at its start holds, after ``linger()`` more seconds; stop after ``most`` kills or when a session
    finishes first. Returns the kills."""
    kills = 0
    for _ in range(12):
        ready = trigger()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not ready():
            time.sleep(0.02)
        try:
            proc.wait(timeout=linger())
            break  # it finished before the kill
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        if kills >= most:
            break
    return kills


@pytest.mark.slow  # minutes of the embedded model; the same through the openai backend runs by default
def test_killed_runs_resume_to_the_same_dataset(tmp_path):
    """SIGKILL a real run at random points, several times; resume each time; compare with an uninterrupted run."""
    args = ["run", "--target", "2", *SMALL]
    ref = tmp_path / "reference"
    r = run_cli(*args, "--out", str(ref))
    assert r.returncode == 0, r.stderr[-2000:]
    # --no-report: the dataset without its card or the HTML report, as the flag's help says.
    assert (ref / "dataset" / "train.jsonl").is_file()
    assert not (ref / "dataset" / "README.md").exists() and not (ref / "report.html").exists()

    run = tmp_path / "killed"
    rng = random.Random(7)
    # Kill once a session has made progress (a new answer committed), after a random further while: on a busy
    # machine the model's start alone can outlast a fixed delay, and a session that did nothing tests nothing.
    def committed_an_answer():
        before = _cache_rows(run)
        return lambda: _cache_rows(run) > before

    kills = _kill_sessions([PIPELINE, *args, "--out", str(run)], 3, committed_an_answer,
                           linger=lambda: rng.uniform(0.0, 6.0))
    assert kills >= 2
    rows_before = _cache_rows(run)
    final = run_cli(*args, "--out", str(run))
    assert final.returncode == 0, final.stderr[-2000:]
    m = _manifest(run)
    assert m["status"] == "complete"
    last = m["sessions"][-1]
    print(f"kills survived: {kills}; sessions: {len(m['sessions'])}; last session: "
          f"{last['usage']['cache_hits']} answered from the cache (not resent), {last['usage']['requests']} sent")
    # Nothing that already succeeded was sent again: every request of the last session is a new cache row.
    assert last["usage"]["cache_hits"] > 0
    assert _cache_rows(run) == rows_before + last["usage"]["requests"]
    # The same data as the uninterrupted run, byte for byte: no duplicate, no loss.
    assert _data_files(run) == _data_files(ref)
    kept = [json.loads(line) for line in (run / "bootstrap" / "kept.jsonl").read_text().splitlines()]
    assert len({k["id"] for k in kept}) == len(kept)


def test_killed_runs_through_the_openai_backend_resume_to_the_same_dataset(tmp_path, sims):
    """The same through the streaming engine and the OpenAI-compatible backend: the simulated teacher on 127.0.0.1
    (8 slots, 50 ms a request, 5% of them 10x slower), bootstrap with teacher classification and two evolve rounds
    running at once, hedging on; SIGKILL at random points, resume, compare with an uninterrupted run."""
    sim = sims("--latency-model", "heavy", "--latency", "0.05", "--tail-frac", "0.05", "--slots", "8")
    args = ["run", "--teacher", "openai", "--model", "sim-teacher", "--base-url", sim.url, "--target", "120",
            "--no-report", "--set", 'teacher.api_key_env=""', "--set", "teacher.hedge=3.0",
            "--set", 'stages=["bootstrap", "evolve", "filter", "export"]', "--set", 'bootstrap.classification="teacher"',
            "--set", "bootstrap.request_batch_size=8", "--set", "evolve.rounds=2", "--set", "evolve.max_items=40"]
    ref = tmp_path / "reference"
    r = run_cli(*args, "--out", str(ref))
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((ref / "evolve" / "kept.jsonl").read_text().splitlines()) > 0
    total = sim.stats()["requests"]  # what an uninterrupted run asks

    # Kill each session once the server has answered a random share of that again: resumed sessions replay their
    # start from the cache, so the kills land at different points of the work, not of the clock.
    run = tmp_path / "killed"
    rng = random.Random(11)
    def answered_a_share():
        stop_at = sim.stats()["requests"] + rng.randint(total // 10, total // 5)
        return lambda: sim.stats()["requests"] >= stop_at

    kills = _kill_sessions([PIPELINE, *args, "--out", str(run)], 4, answered_a_share)
    assert kills >= 3
    rows_before = _cache_rows(run)
    final = run_cli(*args, "--out", str(run))
    assert final.returncode == 0, final.stderr[-2000:]
    last = _manifest(run)["sessions"][-1]
    assert last["usage"]["cache_hits"] > 0
    assert _cache_rows(run) == rows_before + last["usage"]["requests"]
    assert _data_files(run) == _data_files(ref)
    for stage in ("bootstrap", "evolve"):
        kept = [json.loads(line) for line in (run / stage / "kept.jsonl").read_text().splitlines()]
        assert len({k["id"] for k in kept}) == len(kept)


@pytest.mark.slow  # three real runs (51 s); the lock itself is also tested in-process (test_session.py)
def test_lock_refuses_a_second_run_and_a_dead_ones_lock_does_not_block(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([PIPELINE, "run", "--target", "1", *SMALL, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (run / "manifest.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = run_cli("run", "--target", "1", *SMALL, "--out", str(run))
        assert second.returncode == 4 and "in use by another live process" in second.stderr
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / ".lock").exists()  # stale lock file left by the killed process
    third = run_cli("run", "--target", "1", *SMALL, "--out", str(run))
    assert third.returncode == 0, third.stderr[-2000:]


@pytest.mark.slow
def test_run_survives_thirty_percent_faults(llama_server, tmp_path):
    run = tmp_path / "run"
    # 30% of the requests fail (every third or so), the kinds in turn so that every kind is seen; two per generation
    # request and short generations make enough requests (about 35) for a few of each.
    with FaultProxy(llama_server, rate=0.3, seed=3, hang_s=11.0, cycle=True) as proxy:
        r = run_cli("run", "--config", "configs/llamacpp_server.toml", "--base-url", proxy.url, "--out", str(run),
                    "--target", "10", *SMALL, "--set", "bootstrap.new_per_request=2",
                    "--set", "bootstrap.generation.max_tokens=96", "--set", "teacher.timeout_s=10.0",
                    "--set", "teacher.max_retries=10", "--set", "teacher.concurrency=1")
    print(summary(proxy))  # the figures for the record: faults injected by kind, requests forwarded
    assert r.returncode == 0, r.stderr[-2000:] + summary(proxy)
    m = _manifest(run)
    assert m["status"] == "complete" and m["stages"]["bootstrap"]["tasks_kept"] >= 10
    usage = m["sessions"][-1]["usage"]
    print("retries by kind:", usage["retries_by_kind"], "requests:", usage["requests"])
    # Every kind of fault was met, retried and counted by the run (invalid JSON is a malformed response, a reset
    # a connection error), and the ones a paid server may have billed are in what the run spent.
    kinds = usage["retries_by_kind"]
    assert usage["retries"] == sum(kinds.values()) >= 7
    assert set(kinds) == {"http_429", "http_500", "http_503", "connection", "timeout", "truncated",
                          "malformed_response"}
    assert m["spent"]["billed_failures"] == kinds["timeout"] + kinds["truncated"] + kinds["malformed_response"]


def test_teacher_down_for_good_exits_1_and_stays_resumable(llama_server, tmp_path):
    run = tmp_path / "run"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    r = run_cli("run", "--config", "configs/llamacpp_server.toml", "--base-url", dead, "--out", str(run),
                "--target", "2", *SMALL, "--set", "teacher.max_retries=2")
    assert r.returncode == 1
    assert "failed after 2 retries" in r.stderr and "Traceback" not in r.stderr
    assert _manifest(run)["status"] == "failed"
    # The same run, resumed once the teacher is back (the URL is not part of the config fingerprint).
    again = run_cli("run", "--config", "configs/llamacpp_server.toml", "--base-url", llama_server, "--out",
                    str(run), "--target", "2", *SMALL)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _manifest(run)["status"] == "complete"


def test_budget_stops_cleanly_and_a_larger_one_resumes(tmp_path):
    run = tmp_path / "run"
    r = run_cli("run", "--target", "1", *SMALL, "--out", str(run), "--set", "budget.max_requests=2")
    assert r.returncode == 3 and "request budget reached" in r.stderr
    m = _manifest(run)
    assert m["status"] == "budget_exhausted" and m["spent"]["requests"] == 2
    assert m["spent"]["cost_usd"].startswith("unknown")  # no price for this model: never reported as $0
    r = run_cli("run", "--target", "1", *SMALL, "--out", str(run), "--set", "budget.max_requests=500",
                "--set", 'prices."SmolLM2-135M-Instruct.Q4_1"={input_per_mtok=0.5, output_per_mtok=1.5}')
    assert r.returncode == 0, r.stderr[-2000:]
    m = _manifest(run)
    assert m["status"] == "complete" and m["sessions"][-1]["usage"]["cache_hits"] >= 2
    expected = (m["spent"]["prompt_tokens"] * 0.5 + m["spent"]["completion_tokens"] * 1.5) / 1e6
    assert m["spent"]["cost_usd"] == pytest.approx(expected, abs=1e-6)


def test_api_key_never_written(gguf_path, tmp_path):
    key = "sk-test-" + "9f2c4e7a1b3d5f6e8a0c2e4f6a8b0d1c"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host",
                               "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--api_key", key,
                               "--model_alias", "SmolLM2-135M-Instruct"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                                              headers={"Authorization": f"Bearer {key}"}), timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.5)
        run = tmp_path / "run"
        base = ["run", "--config", "configs/llamacpp_server.toml", "--base-url", f"http://127.0.0.1:{port}/v1",
                "--target", "1", *SMALL, "--set", 'teacher.api_key_env="PIPELINE_TEST_API_KEY"']
        r = run_cli(*base, "--out", str(run), env={"PIPELINE_TEST_API_KEY": key})
        assert r.returncode == 0, r.stderr[-2000:]  # the server checks the key, so it was sent
        wrong = run_cli(*base, "--out", str(tmp_path / "wrong"), env={"PIPELINE_TEST_API_KEY": key[::-1]})
        assert wrong.returncode == 1
    finally:
        server.terminate()
        server.wait(timeout=20)
    for text in (r.stdout, r.stderr, wrong.stdout, wrong.stderr):
        assert key not in text and key[::-1] not in text
    for path in [*run.rglob("*"), *(tmp_path / "wrong").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data and key[::-1].encode() not in data, path


def test_sigterm_stops_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([PIPELINE, "run", "--target", "50", *SMALL, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "manifest.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "resume with --out" in err, err[-2000:]
    assert _manifest(run)["status"] == "interrupted"
