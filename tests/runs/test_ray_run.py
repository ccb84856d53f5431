"""``pipeline run`` with ``[scale] engine = "ray"``: the same run directory and the same data as the local engine,
kills resumed from the request cache, and configs/ray_local.toml end to end on two real llama.cpp replicas.

The CLI runs join the session's local Ray cluster (127.0.0.1 only, ``ray_cluster``) through ``scale.address``,
so a killed run leaves no cluster of its own behind."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.runs.test_nightly import _cache_rows, _data_files, _kill_sessions, _manifest

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _args(urls: list[str], address: str, engine: str = "ray") -> list[str]:
    args = ["run", "--config", "configs/ray_local.toml", "--no-report",
            "--set", 'teacher.model="sim-teacher"', "--set", 'teacher.structured="auto"',
            "--set", "bootstrap.target_instructions=24", "--set", 'bootstrap.classification="teacher"',
            "--set", "scale.launch_llamacpp=0", "--set", f"scale.engine={json.dumps(engine)}"]
    if engine == "ray":
        args += ["--set", f"scale.replicas={json.dumps(urls)}", "--set", f"scale.address={json.dumps(address)}"]
    else:
        args += ["--set", f"teacher.base_url={json.dumps(urls[0])}"]
    return args


def test_a_ray_run_writes_the_local_engines_data(ray_cluster, sims, tmp_path):
    a, b = sims("--latency", "0.02", "--latency-model", "fixed"), sims("--latency", "0.02", "--latency-model", "fixed")
    address = ray_cluster["gcs_address"]
    local = run_cli(*_args([a.url], address, engine="local"), "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-2000:]
    on_ray = run_cli(*_args([a.url, b.url], address), "--out", str(tmp_path / "ray"))
    assert on_ray.returncode == 0, on_ray.stderr[-2000:]
    assert "Traceback" not in on_ray.stderr
    # Two loops (bootstrap.shards = 2 in the config), merged: the same records whichever engine sent the requests.
    assert _data_files(tmp_path / "ray") == _data_files(tmp_path / "local")
    m = _manifest(tmp_path / "ray")
    stage = m["stages"]["bootstrap"]
    assert m["status"] == "complete" and stage["tasks_kept"] == 24 and len(stage["shards"]) == 2
    assert stage["engine"]["backend"]["engine"] == "ray" and stage["engine"]["backend"]["replicas"] == 2
    assert b.stats()["requests"] > 0 and (tmp_path / "ray" / "dataset" / "train.jsonl").is_file()
    # The scale section is connection settings: not in the fingerprint, so a run may move between engines.
    assert m["fingerprint"] == _manifest(tmp_path / "local")["fingerprint"]


@pytest.mark.slow  # several Ray sessions of about a minute each on 2 cores
def test_killed_ray_runs_resume_to_the_same_dataset_without_asking_twice(ray_cluster, sims, tmp_path):
    sim = sims("--latency", "0.05", "--latency-model", "fixed")
    args = _args([sim.url], ray_cluster["gcs_address"])
    ref = tmp_path / "reference"
    r = run_cli(*args, "--out", str(ref))
    assert r.returncode == 0, r.stderr[-2000:]
    total = sim.stats()["requests"]

    run = tmp_path / "killed"
    rng = random.Random(5)

    def answered_a_share():
        stop_at = sim.stats()["requests"] + rng.randint(total // 5, total // 3)
        return lambda: sim.stats()["requests"] >= stop_at

    before = sim.stats()["requests"]
    kills = _kill_sessions([PIPELINE, *args, "--out", str(run)], 2, answered_a_share)
    assert kills >= 1
    rows_before = _cache_rows(run)
    final = run_cli(*args, "--out", str(run))
    assert final.returncode == 0, final.stderr[-2000:]
    last = _manifest(run)["sessions"][-1]
    assert last["usage"]["cache_hits"] > 0
    assert _cache_rows(run) == rows_before + last["usage"]["requests"]  # nothing answered before was asked again
    assert _data_files(run) == _data_files(ref)
    asked = sim.stats()["requests"] - before
    print(f"kills: {kills}; requests of an uninterrupted run: {total}; asked across the killed sessions and the "
          f"resume: {asked} (answered but never delivered at a kill: {asked - _cache_rows(run)})")


@pytest.mark.slow  # two llama.cpp replicas of the embedded model: about 4 minutes on 2 cores
def test_ray_local_config_runs_end_to_end_on_two_llamacpp_replicas(tmp_path):
    out = tmp_path / "run"
    r = run_cli("run", "--config", "configs/ray_local.toml", "--out", str(out), "--set",
                "bootstrap.target_instructions=4", timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    m = _manifest(out)
    assert m["status"] == "complete" and m["stages"]["bootstrap"]["tasks_kept"] == 4
    assert m["stages"]["bootstrap"]["engine"]["backend"]["replicas"] == 2
    logs = sorted((out / "replicas").glob("replica-*.log"))
    assert len(logs) == 2 and all("/v1/chat/completions" in p.read_text() for p in logs)
    assert (out / "dataset" / "train.jsonl").is_file() and (out / "report.html").is_file()
    # The replicas are stopped with the run.
    time.sleep(1)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "pipeline.teachers.replicas" not in ps
