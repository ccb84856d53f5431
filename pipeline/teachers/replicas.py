"""Teacher replicas on this machine: llama-cpp-python's OpenAI-compatible server, started N times on 127.0.0.1
(``[scale] launch_llamacpp = N``), so the Ray engine can be run end to end with nothing else installed. On a
cluster, list real servers (vLLM, one per GPU or node) in ``scale.replicas`` instead."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import TeacherError
from .embedded import embedded_model_path

START_TIMEOUT_S = 180.0
STOP_GRACE_S = 3.0


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all bound at once while they are picked, so none is handed out twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LlamaServers:
    """``n`` llama.cpp servers of ``gguf`` ("" = the embedded model) named ``alias``, each with its own port, log
    (``log_dir/replica-<k>.log``) and ``threads`` generation threads. Ready when constructed; ``close`` stops them."""

    def __init__(self, n: int, gguf: str = "", *, alias: str, n_ctx: int = 4096, threads: int = 1,
                 log_dir: Path | None = None):
        try:
            import llama_cpp.server  # noqa: F401  (its extra: fastapi, uvicorn, sse-starlette)
        except ImportError as e:
            raise TeacherError(f"scale.launch_llamacpp needs llama-cpp-python's server ({e}): "
                               "pip install -e '.[ray]'") from None
        model = Path(gguf).expanduser() if gguf else embedded_model_path()
        if not model.is_file():
            raise TeacherError(f"scale.launch_gguf: no model file at {model}")
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="replicas"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_WAIT_POLICY": "passive"}
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        try:
            for k, port in enumerate(_free_ports(n)):
                with open(self.log_dir / f"replica-{k}.log", "w") as log:
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-m", __name__, str(os.getpid()), "--model", str(model),
                         "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
                         "--n_threads", str(threads)],
                        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
                self.urls.append(f"http://127.0.0.1:{port}/v1")
            for k, (proc, url) in enumerate(zip(self.procs, self.urls)):
                self._wait(k, proc, url)
        except BaseException:
            self.close()
            raise

    def _wait(self, k: int, proc: subprocess.Popen, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                if proc.poll() is None:  # ours answered (not some other server on the port)
                    return
                raise OSError("exited")
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.log_dir / f"replica-{k}.log").read_text(errors="replace")[-1500:]
                    raise TeacherError(f"llama.cpp replica {k} did not start:\n{tail}") from None
                time.sleep(0.3)

    def close(self) -> None:
        """Stop the servers: SIGTERM, and SIGKILL for one still up after ``STOP_GRACE_S`` (uvicorn would wait for
        the requests it is answering; nobody wants those answers any more)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def _serve() -> None:
    """``python -m pipeline.teachers.replicas <parent pid> <llama_cpp.server arguments>``: the server, stopped when
    the process that started it is gone (a pipeline killed with SIGKILL leaves no replica behind)."""
    import runpy
    import threading

    parent = int(sys.argv.pop(1))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _serve()
