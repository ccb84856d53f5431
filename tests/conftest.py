"""Shared fixtures: real parts only (the embedded GGUF, a real llama.cpp server on 127.0.0.1, real files)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # llama.cpp servers the tests start: see teachers/embedded.py
ROOT = Path(__file__).resolve().parent.parent
PUBLISHED_SEEDS = ROOT.parent / "shared" / "reference" / "self_instruct_seed_tasks.jsonl"
OUR_SEEDS = ROOT / "seed_tasks" / "seed_tasks.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 900, cwd: Path | None = None):
    """Run the real `pipeline` console script in a subprocess."""
    return subprocess.run([str(Path(sys.executable).parent / "pipeline"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    from pipeline.teachers.llamacpp import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="session")
def published_seeds() -> Path:
    if not PUBLISHED_SEEDS.is_file():
        pytest.skip(f"{PUBLISHED_SEEDS} is not present beside this checkout")
    return PUBLISHED_SEEDS


@pytest.fixture(scope="session")
def llama_server(gguf_path, tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server serving the embedded GGUF on 127.0.0.1."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    server_env = dict(os.environ)
    if "MIN_VERSIONS_PATH" in server_env:  # `make test-min-versions` puts old libraries in front of the venv's; the
        server_env["PYTHONPATH"] = str(ROOT)  # server (its own fastapi, pydantic-settings) runs on the venv's own
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--model_alias",
             "SmolLM2-135M-Instruct", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
            stdout=fh, stderr=subprocess.STDOUT, env=server_env)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base_url}/models", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"llama.cpp server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield base_url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


class Sim:
    """The simulated OpenAI-compatible teacher (``bench/sim_teacher.py``) as a subprocess on 127.0.0.1: its URL,
    its counters, its batch settings. It answers each request from the request's own seed, so runs against it are
    deterministic. Later ``args`` override the defaults (answers at once)."""

    def __init__(self, tmp: Path, *args: str):
        port_file = tmp / f"sim-port-{time.monotonic_ns()}"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "sim_teacher.py"), "--port", "0", "--port-file", str(port_file),
                                      "--latency-model", "zero", "--max-seconds", "600", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text()):
            assert self.proc.poll() is None and time.time() < deadline, "the simulated teacher did not start"
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{port_file.read_text()}"
        self.url = f"{self.base}/v1"

    def stats(self) -> dict:
        return json.loads(urllib.request.urlopen(f"{self.base}/stats", timeout=5).read())

    def batch(self) -> dict:
        return self.stats()["batch"]

    def set(self, **settings) -> None:
        req = urllib.request.Request(f"{self.base}/sim/batch-config", data=json.dumps(settings).encode(),
                                     method="POST")
        urllib.request.urlopen(req, timeout=5).read()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def sims(tmp_path):
    started: list[Sim] = []

    def start(*args: str) -> Sim:
        started.append(Sim(tmp_path, *args))
        return started[-1]

    yield start
    for s in started:
        s.close()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session (2 CPUs, no dashboard), listening on 127.0.0.1 only
    (``pipeline.ray_cluster.init_local_ray``), in a short temporary folder under /tmp; shut down and removed at
    the end. Yields ``{"temp_dir": ..., **ray.init's address info}``. Skipped when the ``ray`` extra is missing."""
    import importlib.util
    import shutil
    import tempfile

    if importlib.util.find_spec("ray") is None:  # find_spec: ray must not be imported before init_local_ray
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    from pipeline.ray_cluster import init_local_ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    info = init_local_ray(num_cpus=2, temp_dir=temp_dir)
    import ray

    yield info
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
