"""inspect, report and the dataset card on real run directories made by the embedded teacher: one run with
bootstrap, evolve, filter and export, and one run that accepted nothing."""
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("inspect") / "run"
    r = run_cli("run", "--out", str(run), "--target", "3",
                "--set", 'stages=["bootstrap", "evolve", "filter", "export"]',
                "--set", "bootstrap.request_batch_size=2", "--set", "evolve.rounds=1",
                "--set", 'evolve.source="bootstrap"')
    assert r.returncode == 0, r.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory) -> Path:
    """A real run in which every candidate instruction is rejected (too short for min_words=200)."""
    run = tmp_path_factory.mktemp("inspect") / "empty"
    r = run_cli("run", "--out", str(run), "--target", "3", "--set", "filter.min_words=200",
                "--set", "bootstrap.max_generation_requests=2", "--set", "bootstrap.request_batch_size=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _lines(run / "bootstrap" / "kept.jsonl") == []
    return run


def _inspect_json(*args: str) -> dict:
    r = run_cli("inspect", *args, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_inspect_counts_equal_the_files(real_run):
    summary = _inspect_json(str(real_run))
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["bootstrap", "evolve", "filter", "export"]
    for name in ("bootstrap", "evolve", "filter"):
        kept, rejected = _lines(real_run / name / "kept.jsonl"), _lines(real_run / name / "rejected.jsonl")
        assert stages[name]["kept"] == len(kept) and stages[name]["rejected"] == len(rejected)
        assert stages[name]["rejected_by_reason"] == dict(Counter(r["reason"] for r in rejected))
        assert stages[name]["done"] is True
    assert stages["bootstrap"]["kept"] >= 3
    rows = len(_lines(real_run / "dataset" / "train.jsonl"))
    assert stages["export"]["kept"] == summary["overview"]["dataset_rows"] == rows
    assert summary["final_stage"] == "filter" and summary["diversity"]["records"] == rows
    manifest = json.loads((real_run / "manifest.json").read_text())
    assert summary["overview"]["prompt_tokens"] == manifest["tokens"]["prompt"] > 0
    assert summary["diversity"]["unique_verbs"] >= 1  # spaCy parsed the instructions
    assert 0 < summary["diversity"]["rouge_l_to_nearest_seed"]["max"] <= 1


def test_inspect_browses_records_by_reason_and_query(real_run):
    rejected = [r for s in ("bootstrap", "evolve", "filter") for r in _lines(real_run / s / "rejected.jsonl")]
    reason, count = Counter(r["reason"] for r in rejected).most_common(1)[0]
    shown = _inspect_json(str(real_run), "--rejected", reason, "--sample", "2")
    assert shown["total"] == count and shown["shown"] == min(2, count)
    assert all(r["reason"] == reason and "instruction" in r for r in shown["records"])
    everything = _inspect_json(str(real_run), "--rejected", "all", "--sample", "1000")
    assert everything["total"] == len(rejected)

    kept = _lines(real_run / "filter" / "kept.jsonl")
    longer = [r for r in kept if len(r["output"].split()) > 20]
    q = _inspect_json(str(real_run), "--kept", "--query", "output_words > 20", "--sample", "1000")
    assert q["total"] == len(longer)
    assert sorted(r["id"] for r in q["records"]) == sorted(r["id"] for r in longer)
    evolved = _inspect_json(str(real_run), "--kept", "--stage", "evolve", "--sample", "1000")
    assert evolved["total"] == len(_lines(real_run / "evolve" / "kept.jsonl"))
    assert all(r["parent_id"] and r["root_id"] and r["operation"] for r in evolved["records"])

    # Tables for people: a rich table with the reason's rows.
    table = run_cli("inspect", str(real_run), "--rejected", reason, "--sample", "1")
    assert table.returncode == 0 and reason in table.stdout and f"of {count}" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--query", "output_words >"], "--query: SyntaxError"),
    (["--query", "no_such_column > 1"], "--query: "),
    (["--rejected", "no_such_reason"], "no rejected records with reason 'no_such_reason'"),
    (["--kept", "--stage", "tune"], "--stage: no kept records for stage 'tune'"),
])
def test_inspect_bad_arguments_exit_2_in_one_line(real_run, args, message):
    r = run_cli("inspect", str(real_run), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_inspect_a_directory_that_is_not_a_run(tmp_path):
    r = run_cli("inspect", str(tmp_path))
    assert r.returncode == 2 and "not a run directory (no manifest.json)" in r.stderr


def test_inspect_compares_two_runs(real_run, empty_run):
    out = _inspect_json(str(real_run), str(empty_run))
    rows = {r["figure"]: r for r in out["compare"]}
    rows_a = len(_lines(real_run / "dataset" / "train.jsonl"))
    assert rows["dataset_rows"]["a"] == rows_a and rows["dataset_rows"]["b"] == 0
    assert rows["dataset_rows"]["delta"] == -rows_a
    too_short = len([r for r in _lines(empty_run / "bootstrap" / "rejected.jsonl") if r["reason"] == "too_short"])
    assert rows["bootstrap.rejected:too_short"]["b"] == too_short > 0
    assert "diversity.unique_instructions" in rows
    table = run_cli("inspect", str(real_run), str(empty_run))
    assert table.returncode == 0 and "dataset_rows" in table.stdout


def test_dataset_card_describes_the_export(real_run, tmp_path):
    card = (real_run / "dataset" / "README.md").read_text()
    rows = len(_lines(real_run / "dataset" / "train.jsonl"))
    assert card.startswith("---\n") and "config_name: alpaca" in card and "data_files: messages.jsonl" in card
    assert f"{rows} instruction-following examples" in card
    assert "SmolLM2-135M-Instruct" in card and "seed_tasks/seed_tasks.jsonl" in card
    for stage in ("bootstrap", "evolve", "filter"):
        assert f"**{stage}**" in card
    assert "## License note" in card and "Apache-2.0" in card
    # The card's front matter is what `datasets` reads for a dataset directory. A cache of this test's own: the
    # shared one is keyed by the folder's path, and pytest reuses temporary paths across sessions.
    from datasets import load_dataset

    cache = str(tmp_path / "hf-cache")
    assert len(load_dataset(str(real_run / "dataset"), "alpaca", split="train", cache_dir=cache)) == rows
    assert len(load_dataset(str(real_run / "dataset"), "messages", split="train", cache_dir=cache)) == rows


def _screenshot(html: Path, png: Path, height: int = 4200) -> None:
    profile = png.parent / f"{png.stem}-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size=1200,{height}",
           f"--screenshot={png}", html.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.exists() and png.stat().st_size > 10_000, "chromium wrote no screenshot"


def _chart_pixels(png: Path) -> dict[str, int]:
    """Pixels of the charts' palette colours in a screenshot: the bars, wedges and histograms as drawn."""
    from PIL import Image

    from pipeline.report.plots import PALETTE

    img = Image.open(png).convert("RGB")
    counts = {color: n for n, color in img.getcolors(maxcolors=1 << 24)}
    out = {}
    for hexcolor in PALETTE[:4]:
        target = tuple(int(hexcolor[i:i + 2], 16) for i in (1, 3, 5))
        out[hexcolor] = sum(n for c, n in counts.items() if max(abs(a - b) for a, b in zip(c, target)) <= 6)
    return out


def _assert_self_contained(html: str) -> None:
    assert "<script" not in html  # nothing runs, nothing is fetched
    for attr in ('src="http', "src='http", 'href="http', "url(http", "@import"):
        assert attr not in html


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_report_renders_its_charts_in_headless_chromium(real_run, tmp_path):
    report = real_run / "report.html"  # `pipeline run` wrote it at the end
    html = report.read_text()
    _assert_self_contained(html)
    assert html.count("<svg") >= 5  # verbs, seed similarity, lengths, rejections, evolve
    for heading in ("Stages", "Rejections", "Diversity", "Evolve", "Sample of kept records"):
        assert f"<h2>{heading}</h2>" in html
    kept = _lines(real_run / "filter" / "kept.jsonl")
    assert kept[0]["id"] in html or len(kept) > 25
    png = tmp_path / "report.png"
    _screenshot(report, png)
    pixels = _chart_pixels(png)
    assert pixels["#4e79a7"] > 2000 and pixels["#f28e2b"] > 500, pixels  # chart marks, not only text
    shutil.copy(png, real_run / "report.png")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_a_run_with_nothing_accepted_still_gets_a_readable_report(empty_run, tmp_path):
    report = empty_run / "report.html"
    html = report.read_text()
    _assert_self_contained(html)
    assert "This run kept no records" in html and "No kept records." in html
    assert "too_short" in html  # the reasons say why
    r = run_cli("report", str(empty_run), "--out", str(tmp_path / "again.html"))
    assert r.returncode == 0 and (tmp_path / "again.html").read_text().count("<svg") == html.count("<svg")
    png = tmp_path / "empty.png"
    _screenshot(report, png, height=1600)
    assert _chart_pixels(png)["#4e79a7"] > 500  # the rejection-reason bars are drawn


def test_without_spacy_the_report_says_so_and_charts_first_words(real_run, monkeypatch):
    from pipeline.report import html as report
    from pipeline.runs.read import RunData

    monkeypatch.setattr(report, "verb_objects", lambda texts: None)  # as if the report extra were not installed
    ctx = report.build_context(RunData.open(real_run))
    assert "spaCy is not installed" in ctx["verb_note"] and "unique_verbs" not in ctx["diversity"]
    assert ctx["charts"]["verbs"].startswith("<svg") and "top 20 first words" in ctx["charts"]["verbs"]


def test_verb_parsing_samples_large_runs():
    from pipeline.report.verbs import verb_objects

    texts = [f"Write a poem about topic number {i}." for i in range(50)]
    assert verb_objects(texts[:3]) == [("write", "poem")] * 3
    assert len(verb_objects(texts, limit=20)) == 20


def test_inspect_and_report_read_a_pipeline_filter_output(real_run, tmp_path):
    out = tmp_path / "filtered"
    r = run_cli("filter", str(real_run / "bootstrap" / "kept.jsonl"), "--out", str(out),
                "--reference", "seed_tasks/seed_tasks.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = _inspect_json(str(out), "--no-verbs")
    [stage] = summary["stages"]
    rejected = _lines(out / "rejected.jsonl")
    assert stage["stage"] == "filter" and stage["kept"] == len(_lines(out / "kept.jsonl"))
    assert stage["rejected"] == len(rejected)
    assert stage["rejected_by_reason"] == dict(Counter(x["reason"] for x in rejected))
    assert summary["diversity"]["rouge_l_to_nearest_seed"]["max"] > 0  # the reference file is the seed set
    report = run_cli("report", str(out))
    assert report.returncode == 0 and (out / "report.html").read_text().count("<svg") >= 3


def test_record_text_is_shown_as_text_not_markup(tmp_path):
    rows = [{"instruction": "Explain what the [/INST] tag marks in a chat prompt.", "input": "",
             "output": "It ends the user turn: [/INST] comes before the answer, and arr[i] = arr[j] stays as is."},
            {"instruction": "Name three [bold]primary colours[/bold] for a child.", "input": "",
             "output": "Red, yellow and blue are the three primary colours of paint."}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "filtered"
    assert run_cli("filter", str(src), "--out", str(out)).returncode == 0
    r = run_cli("inspect", str(out), "--kept", "--sample", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    text = " ".join(r.stdout.split())
    assert "[/INST] comes before" in text and "arr[i] = arr[j]" in text and "[bold]primary" in text


def test_a_torn_last_line_is_not_counted(real_run, tmp_path):
    """A run killed while writing (or still running) ends in half a line: inspect skips it, as resuming does."""
    run = tmp_path / "torn"
    shutil.copytree(real_run, run)
    kept = run / "bootstrap" / "kept.jsonl"
    complete = len(_lines(kept))
    with open(kept, "a") as fh:
        fh.write('{"id": "bs-999999-0", "instruction": "half a rec')
    summary = _inspect_json(str(run), "--no-verbs")
    assert {s["stage"]: s for s in summary["stages"]}["bootstrap"]["kept"] == complete
    assert run_cli("report", str(run)).returncode == 0
