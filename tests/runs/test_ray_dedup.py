"""ROUGE-L dedup on Ray Data (runs/ray_dedup.py): exactly ``novelty.dedup``'s decisions and duplicate matches in
exact mode, exactly the pure ``sharded_dedup``'s result in MinHash mode (the band keys agree across processes),
and a local cluster that listens on 127.0.0.1 only."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

if importlib.util.find_spec("ray") is None:  # not importorskip: ray is first imported by the cluster fixture,
    pytest.skip("the ray extra is not installed", allow_module_level=True)  # after its loopback settings

from pipeline.filters import sharded  # noqa: E402
from pipeline.filters.novelty import dedup  # noqa: E402
from pipeline.runs.ray_dedup import ray_dedup  # noqa: E402
from tests.filters.test_sharded import assert_same, variant_records  # noqa: E402

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def records():
    return variant_records(2000, seed=7, n_reference=40)


def test_exact_mode_equals_novelty_dedup(ray_cluster, records):
    reference, ids, texts = records
    want = dedup(texts, ids, reference=reference, threshold=0.7)
    got = ray_dedup(texts, ids, reference=reference, threshold=0.7)
    assert_same(got, want)
    assert got.stats["mode"] == "exact" and got.stats["duplicates"] == sum(want.duplicate)
    print(f"\nray exact: {got.stats['candidate_pairs']} candidate pairs, {got.stats['verified_pairs']} verified, "
          f"{got.stats['seconds']:.1f} s")


def test_exact_mode_other_settings_and_excludes(ray_cluster, records):
    reference, ids, texts = records
    texts = texts[:300] + ["写一首关于大海的诗", "写一首关于大海的短诗"]
    ids = ids[:300] + ["zh0", "zh1"]
    excludes = [{ids[k - 1]} if k % 7 == 0 else None for k in range(len(texts))]
    kw = dict(reference=reference[:10], threshold=0.5, use_stemmer=True, unicode=True, excludes=excludes)
    assert_same(ray_dedup(texts, ids, **kw), dedup(texts, ids, **kw))


def test_minhash_mode_equals_the_pure_parts(ray_cluster, records):
    """Band keys hashed in Ray's worker processes are those of the driver: the same verified pairs, so the same
    decisions and every match (kept texts included) as the single-process composition."""
    reference, ids, texts = records
    got = ray_dedup(texts, ids, reference=reference, num_perm=256, rows_per_band=5, seed=3, min_score=0.3)
    pure = sharded.sharded_dedup(texts, ids, reference=reference, num_perm=256, rows_per_band=5, seed=3,
                                 min_score=0.3)
    assert got.duplicate == pure.duplicate
    assert [(m.nearest_id, m.score) for m in got.matches] == [(m.nearest_id, m.score) for m in pure.matches]
    assert got.stats["candidate_pairs"] == pure.stats["candidate_pairs"]
    want = dedup(texts, ids, reference=reference)
    differ = sum(a != b for a, b in zip(got.duplicate, want.duplicate))
    print(f"\nray minhash 256x5: {differ} decisions differ from the exact filter")
    assert differ <= 0.01 * len(texts)


def test_edge_inputs(ray_cluster):
    assert ray_dedup([]).duplicate == []
    res = ray_dedup(["", "!!", "a b c d", "写诗", "A B C D."])
    assert res.duplicate == [False, False, False, False, True] and res.matches[4].nearest_id == "2"
    res = ray_dedup(["Write a poem about the sea"], reference=[("r0", "write a poem about the sea!")])
    assert res.duplicate == [True] and (res.matches[0].nearest_id, res.matches[0].score) == ("r0", 1.0)


def _descendants(root: int) -> set[int]:
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in out]
        out.update(kids)
        frontier += kids
    return out


def _cluster_pids(temp_dir: str) -> set[int]:
    """This process, its descendants, and any process whose command line names the cluster's temp folder."""
    pids = _descendants(os.getpid())
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if temp_dir.encode() in (d / "cmdline").read_bytes():
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


def test_cluster_listens_on_loopback_only(ray_cluster):
    ray_dedup(["a b c d", "a b c d e"])  # workers up
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    pids = _cluster_pids(ray_cluster["temp_dir"])
    listeners = []
    for line in out.splitlines():
        m = re.search(r"pid=(\d+)", line)
        if not m or int(m.group(1)) not in pids:
            continue
        local = line.split()[4]
        host = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
        listeners.append((host, line))
    assert len(listeners) >= 3, out  # GCS, raylet, workers at least
    assert [line for host, line in listeners if host not in LOOPBACK] == []
    assert ray_cluster["node_ip_address"] == "127.0.0.1"
