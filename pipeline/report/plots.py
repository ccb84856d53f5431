"""The report's charts, drawn with matplotlib and returned as inline SVG text (the report needs no network and no
side files). Each function takes plain figures and returns an ``<svg>`` string, or None when there is nothing to
draw, so the report can say so instead."""
from __future__ import annotations

import functools
import io
import math
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The report's style, applied per chart (no change to matplotlib's global settings, which tune's loss plot uses).
STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
         "figure.dpi": 96}
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]


def _styled(chart: Callable[..., str | None]) -> Callable[..., str | None]:
    @functools.wraps(chart)
    def draw(*args, **kwargs) -> str | None:
        with plt.rc_context(STYLE):
            return chart(*args, **kwargs)
    return draw


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML


@_styled
def verb_sunburst(top: list[tuple[str, int, list[tuple[str, int]]]], title: str) -> str | None:
    """Inner ring: the most common verbs; outer ring: each verb's most common direct objects."""
    if not top:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    inner_sizes = [c for _, c, _ in top]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(top))]
    outer_sizes, outer_labels, outer_colors = [], [], []
    for (verb, count, objects), color in zip(top, colors):
        rest = count
        for obj, n in objects:
            outer_sizes.append(n)
            outer_labels.append(obj)
            outer_colors.append(matplotlib.colors.to_rgba(color, 0.55))
            rest -= n
        if rest > 0:  # the verb's other objects (or none): a blank wedge keeps the rings aligned
            outer_sizes.append(rest)
            outer_labels.append("")
            outer_colors.append((1, 1, 1, 0))
    wedge = {"edgecolor": "white", "linewidth": 0.8}
    total = sum(inner_sizes)
    ax.pie(outer_sizes, radius=1.0, colors=outer_colors, wedgeprops={**wedge, "width": 0.32},
           labels=[lab if n / total > 0.006 else "" for lab, n in zip(outer_labels, outer_sizes)],
           labeldistance=0.84, rotatelabels=True, textprops={"fontsize": 7})
    ax.pie(inner_sizes, radius=0.68, colors=colors, wedgeprops={**wedge, "width": 0.38},
           labels=[v if c / total > 0.012 else "" for v, c, _ in top], labeldistance=0.72, rotatelabels=True,
           textprops={"fontsize": 8, "fontweight": "bold", "color": "white"})
    ax.set(aspect="equal")
    ax.set_title(title)
    return _svg(fig)


@_styled
def histograms(series: dict[str, list[float]], title: str, xlabel: str, bins: int = 30,
               log: bool = False) -> str | None:
    """One small histogram per named series (lengths of instructions, inputs, outputs ...)."""
    series = {k: v for k, v in series.items() if len(v)}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 2.8), squeeze=False)
    for ax, (name, values), color in zip(axes[0], series.items(), PALETTE):
        ax.hist(values, bins=bins, color=color, log=log)
        ax.set_title(f"{name} (n={len(values)}, median {sorted(values)[len(values) // 2]:g})")
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel("records")
    fig.suptitle(title)
    fig.tight_layout()
    return _svg(fig)


@_styled
def similarity_histogram(scores: list[float], threshold: float, title: str) -> str | None:
    if not scores:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    ax.hist(scores, bins=[i / 40 for i in range(41)], color=PALETTE[0])
    ax.axvline(threshold, color=PALETTE[3], linestyle="--", linewidth=1)
    ax.text(threshold, ax.get_ylim()[1] * 0.92, f" threshold {threshold}", color=PALETTE[3], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROUGE-L F to the nearest seed instruction")
    ax.set_ylabel("records")
    ax.set_title(title)
    return _svg(fig)


@_styled
def reason_bars(stages: list[dict[str, Any]], title: str) -> str | None:
    """Rejections by reason, one bar per reason, stacked by stage."""
    reasons: dict[str, dict[str, int]] = {}
    for row in stages:
        for reason, n in row.get("rejected_by_reason", {}).items():
            reasons.setdefault(reason, {})[row["stage"]] = n
    if not reasons:
        return None
    order = sorted(reasons, key=lambda r: sum(reasons[r].values()))
    stage_names = [row["stage"] for row in stages if row.get("rejected_by_reason")]
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.26 * len(order)))
    left = [0] * len(order)
    for stage, color in zip(stage_names, PALETTE):
        widths = [reasons[r].get(stage, 0) for r in order]
        ax.barh(order, widths, left=left, color=color, label=stage)
        left = [a + b for a, b in zip(left, widths)]
    for y, total in enumerate(left):
        ax.text(total, y, f" {total}", va="center", fontsize=8)
    ax.set_xlabel("rejected records")
    ax.legend(loc="lower right", frameon=False)
    ax.set_title(title)
    return _svg(fig)


@_styled
def evolve_bars(stats: dict[str, Any] | None) -> str | None:
    """Evolve pass rate per round and per operation, with the mean growth in words of the passes."""
    if not stats or not stats.get("rounds"):
        return None
    rounds = stats["rounds"]
    ops = stats.get("by_operation", {})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.0), gridspec_kw={"width_ratios": [1, 1.6]})
    a1.bar([str(r["round"]) for r in rounds], [r["pass_rate"] or 0 for r in rounds], color=PALETTE[0])
    for i, r in enumerate(rounds):
        a1.text(i, (r["pass_rate"] or 0), f"{r['passes']}/{r['attempts']}", ha="center", va="bottom", fontsize=8)
    a1.set(ylim=(0, 1.1), xlabel="round", ylabel="pass rate", title="per round")
    names = list(ops)
    a2.bar(names, [ops[n]["pass_rate"] or 0 for n in names], color=PALETTE[1])
    for i, n in enumerate(names):
        growth = ops[n].get("mean_growth_words")
        label = f"{ops[n]['passes']}/{ops[n]['attempts']}"
        if growth is not None and not (isinstance(growth, float) and math.isnan(growth)):
            label += f"\n{growth:+.0f} w"
        a2.text(i, ops[n]["pass_rate"] or 0, label, ha="center", va="bottom", fontsize=7)
    a2.set(ylim=(0, 1.25), ylabel="pass rate", title="per operation (passes/attempts, mean growth in words)")
    a2.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return _svg(fig)


@_styled
def score_bars(histograms: dict[str, dict[str, int]] | None, title: str) -> str | None:
    """One bar chart per judge score: records per score value, "missing" (the judge's reply had no score) last."""
    if not histograms:
        return None
    fig, axes = plt.subplots(1, len(histograms), figsize=(4.2 * len(histograms), 2.8), squeeze=False)
    for ax, (name, hist), color in zip(axes[0], histograms.items(), PALETTE):
        keys = list(hist)
        x = list(range(len(keys)))  # positions, not the labels: matplotlib warns on number-like category names
        ax.bar(x, [hist[k] for k in keys], color=[color if k != "missing" else "#bab0ac" for k in keys])
        for i, k in enumerate(keys):
            ax.text(i, hist[k], f"{hist[k]}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, keys)
        ax.set(xlabel=name, ylabel="records")
    fig.suptitle(title)
    fig.tight_layout()
    return _svg(fig)


def _ci_bars(ax, names: list[str], scores: list[dict[str, Any] | None], color: str, digits: int) -> None:
    """Bars of ``{"value", "ci"}`` scores with their intervals as error bars (the base model's bar grey); a missing
    score is labelled "–"."""
    x = list(range(len(names)))
    values = [(s or {}).get("value") for s in scores]
    heights = [v or 0 for v in values]
    err = [[v - (s.get("ci") or [v, v])[0] if v is not None else 0 for s, v in zip(scores, values)],
           [(s.get("ci") or [v, v])[1] - v if v is not None else 0 for s, v in zip(scores, values)]]
    ax.bar(x, heights, color=[color if n != "base" else "#bab0ac" for n in names], yerr=err, capsize=4,
           error_kw={"elinewidth": 1, "ecolor": "#333"})
    for i, (v, top) in enumerate(zip(values, [h + e for h, e in zip(heights, err[1])])):
        ax.text(i, top, f"{v:.{digits}f}" if v is not None else "–", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names)  # positions, not the labels: matplotlib warns on number-like category names
    if len(names) > 3:
        ax.tick_params(axis="x", labelrotation=20)


@_styled
def eval_bars(models: list[dict[str, Any]], title: str) -> str | None:
    """Per model of an evaluation (``summary.eval_figures``'s rows): ROUGE-L against the references and, when the
    run was judged, the judge score against the base model, each with its 95% bootstrap interval."""
    if not models:
        return None
    judged = [m for m in models if (m.get("judge") or {}).get("value") is not None]
    fig, axes = plt.subplots(1, 2 if judged else 1, figsize=(9.5 if judged else 5.0, 3.0), squeeze=False,
                             gridspec_kw={"width_ratios": [len(models), max(len(judged), 1)]} if judged else None)
    a1 = axes[0][0]
    _ci_bars(a1, [m["model"] for m in models], [m.get("rouge_l") for m in models], PALETTE[0], 3)
    a1.set(ylabel="ROUGE-L F", title="ROUGE-L to the reference")
    a1.set_ylim(0, a1.get_ylim()[1] * 1.12)  # room for the labels
    if judged:
        a2 = axes[0][1]
        _ci_bars(a2, [m["model"] for m in judged], [m["judge"] for m in judged], PALETTE[1], 3)
        a2.axhline(0.5, color="#999", linestyle="--", linewidth=1)
        a2.set(ylim=(0, 1.1), ylabel="judge score", title="judge score vs base (0.5: as good)")
    fig.suptitle(title)
    fig.tight_layout()
    return _svg(fig)


@_styled
def count_bars(panels: list[tuple[str, dict[str, int], str, str]], title: str) -> str | None:
    """Side by side bar charts of counts, one per ``(panel title, {label: count}, x label, y label)``, bars in the
    counts' order (rows per source, turns per conversation, pairs per margin bin, ...), each labelled with its
    count. Empty panels are left out."""
    panels = [p for p in panels if p[1] and sum(p[1].values())]
    if not panels:
        return None
    widths = [max(2.0, min(0.55 * len(p[1]) + 1.2, 6.5)) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(sum(widths) + 0.6, 4.5), 3.0), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for k, (ax, (name, counts, xlabel, ylabel)) in enumerate(zip(axes[0], panels)):
        keys = list(counts)
        x = list(range(len(keys)))  # positions, not the labels: matplotlib warns on number-like category names
        ax.bar(x, [counts[key] for key in keys], color=PALETTE[k % len(PALETTE)])
        for i, key in enumerate(keys):
            ax.text(i, counts[key], f"{counts[key]}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, keys)
        if len(keys) > 4 or max(len(str(key)) for key in keys) > 10:
            ax.tick_params(axis="x", labelrotation=25)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
        ax.set_ylim(0, max(counts.values()) * 1.15)
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # counts: no 0.5 of a record
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    return _svg(fig)
