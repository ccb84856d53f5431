"""The installed llama.cpp runs on any x86-64 CPU with AVX2, and a build that does not is caught with one clear line
instead of killing `pipeline` with a bare "Illegal instruction"."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import TeacherError
from pipeline.teachers import embedded
from tests.conftest import run_cli

# What our portable build may use on x86-64; a native build on these AVX-512/AMX machines adds AVX512*, AMX_*.
PORTABLE_X86 = {"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "LLAMAFILE", "OPENMP", "REPACK"}

# A stand-in llama_cpp whose every generation dies the way a native build does on a CPU that refuses its code.
FAKE_NATIVE_LLAMA = """
import os, signal
def llama_print_system_info():
    return b"CPU : AVX512 = 1 | AMX_INT8 = 1 |"
class Llama:
    def __init__(self, *a, **k):
        os.kill(os.getpid(), signal.SIGILL)
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 build flags")
def test_installed_build_uses_only_portable_instructions():
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    result = embedded.ProbeResult(text="", tokens=0, seconds=0.0,
                                  system_info=info.decode() if isinstance(info, bytes) else str(info))
    used = set(result.features())
    assert "AVX2" in used and "FMA" in used, result.system_info
    assert used <= PORTABLE_X86, f"built for this CPU, not portably: {sorted(used - PORTABLE_X86)}"


def test_probe_generates_with_the_embedded_model(gguf_path):
    result = embedded.probe(gguf_path)
    assert result.tokens >= 1 and result.text.strip()
    assert "AVX2" in result.features() or platform.machine() not in ("x86_64", "AMD64")


def test_probe_turns_a_signal_death_into_one_line(gguf_path):
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
    with pytest.raises(TeacherError) as e:
        embedded.probe(gguf_path, child_code=kill_self, rebuild_hint="make rebuild-llama")
    msg = str(e.value)
    assert "SIGILL (Illegal instruction)" in msg and "make rebuild-llama" in msg and "\n" not in msg


def test_a_success_is_remembered(gguf_path, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    embedded.ensure_runs(gguf_path)
    assert len(list((tmp_path / "instruct-pipeline" / "llama-ok").iterdir())) == 1

    def must_not_probe(*a, **k):
        raise AssertionError("probed again although the build, CPU and model are unchanged")

    monkeypatch.setattr(embedded, "probe", must_not_probe)
    embedded.ensure_runs(gguf_path)


def test_pipeline_reports_a_crashing_build_in_one_line(tmp_path):
    fake = tmp_path / "fake" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_NATIVE_LLAMA)
    env = {"PYTHONPATH": str(fake.parent), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = run_cli("check-teacher", env=env, timeout=120)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "SIGILL (Illegal instruction)" in lines[0] and "rebuild" in lines[0] and "Traceback" not in r.stderr
    # the setup's own check says the same and exits 1
    r = subprocess.run([sys.executable, "-m", "pipeline.teachers.embedded"], capture_output=True, text=True,
                       env={**__import__("os").environ, **env}, timeout=120, cwd=Path(__file__).parents[1])
    assert r.returncode == 1 and r.stderr.startswith("setup check failed:") and "Illegal instruction" in r.stderr


def test_setup_check_passes_on_the_real_build():
    r = subprocess.run([sys.executable, "-m", "pipeline.teachers.embedded"], capture_output=True, text=True,
                       timeout=300, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("setup check: the embedded teacher generated")
