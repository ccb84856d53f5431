"""Smaller holes a night must not have: credentials inside URLs never shown or recorded, unexpected errors as
one line plus a log file, a filter result replaced as one unit, renames made durable."""
from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.io import files
from pipeline.runs import stages as run_stages_mod
from pipeline.runs.store import write_filter_result
from tests.conftest import free_port, run_cli


def test_credentials_in_the_base_url_reach_neither_the_error_nor_the_manifest(tmp_path):
    url = f"http://alice:sk-sekret-123@127.0.0.1:{free_port()}/v1"  # nobody listens there
    r = run_cli("run", "--out", str(tmp_path / "run"), "--teacher", "openai", "--model", "m", "--base-url", url,
                "--set", "teacher.max_retries=1", "--set", "teacher.api_key_env=\"\"", "--no-report", timeout=120)
    assert r.returncode == 1, r.stderr
    assert "127.0.0.1" in r.stderr and "sk-sekret-123" not in r.stderr and "alice" not in r.stderr
    leaked = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and b"sk-sekret-123" in p.read_bytes()]
    assert leaked == []
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["teacher"]["base_url"].startswith("http://***@127.0.0.1:")


def test_an_unexpected_error_is_one_line_naming_the_log_that_holds_the_traceback(tmp_path, monkeypatch):
    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(run_stages_mod, "run_filter", disk_full)
    r = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "run"), "--set", 'stages=["filter"]', "--no-report"])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "unexpected OSError" in lines[0] and "No space left on device" in lines[0], r.output
    logs = list((tmp_path / "run" / "logs").glob("error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0].replace("\n", "")
    assert "Traceback" in logs[0].read_text() and "disk_full" in logs[0].read_text()


def test_a_filter_result_is_replaced_as_one_unit(tmp_path):
    out = tmp_path / "out"
    write_filter_result(out, [{"id": "a"}], [{"id": "b"}], {"run": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def rejected():
        yield {"id": "c"}
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        write_filter_result(out, [{"id": "new"}], rejected(), {"run": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old result, whole
    write_filter_result(out, [{"id": "new"}], [], {"run": 2})
    assert json.loads((out / "stats.json").read_text())["run"] == 2
    assert (out / "kept.jsonl").read_text() == '{"id": "new"}\n' and (out / "rejected.jsonl").read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_a_filter_result_never_replaces_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not a filter result"):
        write_filter_result(tmp_path, [], [], {})
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_replaced_file_is_followed_by_an_fsync_of_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)
    monkeypatch.setattr(files.os, "fsync", fsync)
    files.write_text_atomic(tmp_path / "a.txt", "x")
    assert synced == [False, True]  # the file's data, then the directory's entry
