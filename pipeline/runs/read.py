"""Read a finished (or stopped) run directory: its manifest and the kept and rejected records of every stage, for
``inspect`` and ``report``; and find the dataset and the tune output a run holds, for ``tune`` and ``eval``. The
layout itself is ``runs.store``'s::

    RUN_DIR/manifest.json
    RUN_DIR/<stage>/kept.jsonl, RUN_DIR/<stage>/rejected.jsonl     (bootstrap, evolve, filter)
                                                                    (also templatize, judge, select, conversation,
                                                                     preferences: its rows are pairs)
    RUN_DIR/dataset/train.jsonl, messages.jsonl, README.md          (export)
    RUN_DIR/dataset/preferences.jsonl                               (export, after the preferences stage)
    RUN_DIR/eval/table.json, results.jsonl                          (pipeline eval: base vs the tuned adapter)
    RUN_DIR/compare/table.json, results.jsonl                       (pipeline compare-data: one adapter a selection)

Counts always come from the files themselves (a line is a record), so what ``inspect`` prints equals what is on
disk even for a run that was killed before it could update its manifest.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import PROJECT_ROOT
from ..errors import InputError
from ..io.files import count_lines, read_jsonl
from .store import (CARD, DATASET_DIR, DATASET_FILES, EVAL_DIR, FILTER_FILES, FILTER_STATS, GENERATING_STAGES,
                    DPO_DIR, EXPORT_INPUT_STAGES, MANIFEST, PREFERENCES_FILE, RECORD_STAGES, REPORT, TUNE_DIR, is_done, stage_path)

# The evaluations a run may hold, each a folder with the files ``pipeline.train.evaluate.evaluate_models`` writes
# (named here so that reading a run loads neither train/ nor torch): ``pipeline eval``'s and ``pipeline
# compare-data``'s (``runs.compare.COMPARE_DIR``).
EVALUATIONS = {"eval": EVAL_DIR, "compare": "compare"}
EVAL_TABLE, EVAL_RESULTS = "table.json", "results.jsonl"
# The record stages export may read, in run order (``Run.stage_input("export")``): the last of them in the run.


@dataclass
class RunData:
    dir: Path
    flat: bool = False  # the output of ``pipeline filter``: kept.jsonl, rejected.jsonl, stats.json in one folder

    @classmethod
    def open(cls, run_dir: str | Path) -> "RunData":
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise InputError(str(run_dir), "no such run directory")
        if (run_dir / MANIFEST).exists():
            data = cls(run_dir)
        elif (run_dir / FILTER_STATS).exists() and (run_dir / FILTER_FILES["kept"]).exists():
            data = cls(run_dir, flat=True)
        else:
            raise InputError(str(run_dir), "not a run directory (no manifest.json) nor a `pipeline filter` output "
                             "(no stats.json)")
        data.manifest  # noqa: B018  (fail now, with a clear message, on a broken manifest)
        return data

    @cached_property
    def manifest(self) -> dict[str, Any]:
        path = self.dir / (FILTER_STATS if self.flat else MANIFEST)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(str(path), f"unreadable {path.name} ({e})") from None
        return _filter_manifest(self.dir, data) if self.flat else data

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.dir.name)

    def stages(self) -> list[str]:
        """Stages in the order they ran (the manifest's), then any record stage found only on disk."""
        names = list(self.manifest.get("stages", {}))
        names += [s for s in RECORD_STAGES if s not in names and (self.dir / s).is_dir()]
        return names

    def record_stages(self) -> list[str]:
        if self.flat:
            return ["filter"]
        return [s for s in self.stages() if s in RECORD_STAGES and (self.dir / s).is_dir()]

    def path(self, stage: str, kind: str) -> Path:
        """``kind``: "kept" or "rejected"."""
        if self.flat:
            return self.dir / FILTER_FILES[kind]
        return stage_path(self.dir, stage, kind)

    def is_done(self, stage: str) -> bool:
        return self.flat or is_done(self.dir, stage)

    @property
    def dataset_file(self) -> Path:
        """The exported dataset in Alpaca format (``dataset/train.jsonl``)."""
        return self.dir / DATASET_FILES["alpaca"]

    @property
    def card_path(self) -> Path:
        return self.dir / CARD

    @property
    def report_path(self) -> Path:
        return self.dir / REPORT

    def count(self, stage: str, kind: str) -> int:
        if self.flat and stage == "export":
            return 0
        if stage == "export" and kind == "kept":
            return count_lines(self.dataset_file)
        return count_lines(self.path(stage, kind))

    def rows(self, stage: str, kind: str) -> list[dict[str, Any]]:
        path = self.path(stage, kind)
        return list(read_jsonl(path, complete_only=True)) if path.exists() else []

    def frame(self, stage: str, kind: str) -> pd.DataFrame:
        return records_frame(self.rows(stage, kind), stage)

    def eval_path(self, kind: str, name: str = EVAL_TABLE) -> Path:
        """``kind``: "eval" or "compare" (``EVALUATIONS``); ``name``: ``EVAL_TABLE`` or ``EVAL_RESULTS``."""
        return self.dir / EVALUATIONS[kind] / name

    def eval_table(self, kind: str = "eval") -> dict[str, Any] | None:
        """The table.json of an evaluation (``kind``: "eval" or "compare"), None when the run has none."""
        path = self.eval_path(kind)
        if self.flat or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(str(path), f"unreadable {path.name} ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise InputError(str(path), "not an evaluation table (no \"models\" object)")
        return data

    def eval_samples(self, kind: str = "eval", n: int = 5, seed: int = 0) -> list[dict[str, Any]]:
        """A few rows of an evaluation's results.jsonl (random, seeded, in file order): answers of the tuned
        models, each with the base model's answer to the same task and the judge's verdicts when there are any."""
        path = self.eval_path(kind, EVAL_RESULTS)
        if self.flat or not path.is_file():
            return []
        rows = [row for row in read_jsonl(path, complete_only=True) if row.get("model") != "base"]
        if len(rows) > n:
            keep = set(random.Random(seed).sample(range(len(rows)), n))
            rows = [row for i, row in enumerate(rows) if i in keep]
        return rows

    def stage_stats(self, stage: str) -> dict[str, Any]:
        """The manifest's figures of one stage ({} when the run has none)."""
        return (self.manifest.get("stages") or {}).get(stage) or {}

    def export_stage(self) -> str | None:
        """The record stage whose kept records export writes, as ``Run.stage_input("export")`` decides: the last of
        filter, judge, select and conversation that the run's config lists or that finished; None when there is
        none (export then reads the generated records: templatize's, bootstrap's and evolve's)."""
        if self.flat:
            return "filter"
        configured = set((self.manifest.get("config") or {}).get("stages") or [])
        for stage in reversed(EXPORT_INPUT_STAGES):
            if stage in configured or self.is_done(stage):
                return stage
        return None

    def final_stage(self) -> str | None:
        """The stage whose kept records make the dataset (``export_stage``) when it has written them; else, for a
        run stopped before it, the last stage of that chain that wrote its kept file; else the generating stages
        that did ("templatize+bootstrap" when several); None when nothing was kept."""
        stage = self.export_stage()
        if stage and self.path(stage, "kept").exists():
            return stage
        for stage in reversed(EXPORT_INPUT_STAGES):
            if self.path(stage, "kept").exists():
                return stage
        return "+".join(s for s in GENERATING_STAGES if self.path(s, "kept").exists()) or None

    def final_files(self) -> list[Path]:
        """The kept files behind the exported dataset (``Run.final_files``), those that exist."""
        stage = self.final_stage()
        return [self.path(s, "kept") for s in stage.split("+")] if stage else []

    def final_rows(self) -> list[dict[str, Any]]:
        """The records export writes as the dataset's rows, in its order, with all their metadata (source, turns,
        the template's ``meta``), unlike dataset/train.jsonl."""
        return [row for p in self.final_files() for row in read_jsonl(p, complete_only=True)]

    @property
    def preferences_file(self) -> Path:
        """The exported preference pairs (``dataset/preferences.jsonl``, trl's DPO form)."""
        return self.dir / PREFERENCES_FILE

    def seed_files(self) -> list[Path]:
        """The seed (or evolve input) files the run started from, where they can still be found."""
        seeds = self.manifest.get("seeds", {})
        names = list(seeds.get("paths") or seeds.get("files", []))  # absolute paths when the run recorded them
        if "input" in self.manifest and self.manifest["input"].get("file"):
            names.append(self.manifest["input"]["file"])
        found = []
        for name in names:
            p = Path(name).expanduser()
            for candidate in (p, PROJECT_ROOT / p):
                if candidate.exists():
                    found.append(candidate)
                    break
        return found


_COLUMNS = ["id", "instruction", "input", "output", "source", "stage", "reason"]


def records_frame(rows: list[dict[str, Any]], stage: str) -> pd.DataFrame:
    """Records as a DataFrame with a few derived columns that make ``--query`` and the report easy:
    ``stage``, ``reason`` ("" for kept records), ``instruction_words``, ``input_words``, ``output_words``."""
    df = pd.DataFrame(rows)
    for col in _COLUMNS:
        if col not in df.columns:
            df[col] = "" if col != "stage" else stage
    df["stage"] = df["stage"].fillna(stage).replace("", stage)
    df["reason"] = df["reason"].fillna("")
    for col in ("instruction", "input", "output"):
        df[col] = df[col].fillna("").astype(str)
        df[f"{col}_words"] = df[col].str.split().str.len().astype(int)
    return df


def _filter_manifest(folder: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """A run manifest's view of ``pipeline filter``'s stats.json: one finished stage, "filter"."""
    return {
        "run_id": folder.name,
        "status": "complete",
        "config": {"filter": stats.get("config", {})},
        "seeds": {"files": stats.get("reference", [])},
        "stages": {"filter": {"kept": stats.get("kept_records"), "rejected": stats.get("rejected_records"),
                              "rejected_by_reason": stats.get("rejected_by_reason", {}),
                              "wall_s": (stats.get("timing") or {}).get("wall_s"),
                              "input": stats.get("input_records")}},
        "wall_s": (stats.get("timing") or {}).get("wall_s"),
    }


def has_dataset(run_dir: str | Path) -> bool:
    """Whether the run has exported a dataset (so it gets a dataset card)."""
    return (Path(run_dir) / DATASET_DIR).is_dir()


_DATASET_CANDIDATES = (DATASET_FILES["messages"], DATASET_FILES["alpaca"], "messages.jsonl", "train.jsonl")


def resolve_dataset(source: Path) -> Path:
    """A run directory (its ``dataset/messages.jsonl``, else ``dataset/train.jsonl``) or a dataset file."""
    source = Path(source)
    if source.is_dir():
        for name in _DATASET_CANDIDATES:
            if (source / name).is_file():
                return source / name
        raise InputError(str(source / _DATASET_CANDIDATES[0]), "dataset file not found (the run directory has "
                         "neither dataset/messages.jsonl nor dataset/train.jsonl; run the export stage first)")
    if not source.is_file():
        raise InputError(str(source), "dataset file not found")
    return source


def default_tune_dir(source: Path, dataset: Path) -> Path:
    """Where ``pipeline tune SOURCE`` writes without ``--out``: ``<run>/tune``, or ``tune/`` beside the file."""
    return source / TUNE_DIR if source.is_dir() else dataset.parent / TUNE_DIR


def resolve_preferences(source: Path) -> Path:
    """A run directory (its ``dataset/preferences.jsonl``) or a preferences JSONL file."""
    source = Path(source)
    if source.is_dir():
        path = source / PREFERENCES_FILE
        if not path.is_file():
            raise InputError(str(path), "preferences file not found (run the preferences stage first, or give a "
                             "preferences JSONL)")
        return path
    if not source.is_file():
        raise InputError(str(source), "preferences file not found")
    return source


def default_dpo_dir(source: Path, pairs_path: Path) -> Path:
    """Where ``pipeline tune SOURCE --method dpo`` writes without ``--out``: ``<run>/tune_dpo``, or ``tune_dpo/``
    beside the file."""
    return Path(source) / DPO_DIR if Path(source).is_dir() else Path(pairs_path).parent / DPO_DIR


def resolve_tune_dir(source: Path) -> Path:
    """A tune output directory (with tune_meta.json), or a run directory holding one in ``tune/``."""
    source = Path(source)
    for cand in (source, source / TUNE_DIR):
        if (cand / "tune_meta.json").is_file():
            return cand
    if not source.exists():
        raise InputError(str(source), "not found (expected a run directory or a `pipeline tune` output directory)")
    raise InputError(str(source / "tune_meta.json"), "not found: run `pipeline tune` on this run first")


def default_eval_dir(tune_dir: Path) -> Path:
    return tune_dir.parent / EVAL_DIR if tune_dir.name == TUNE_DIR else tune_dir / EVAL_DIR
