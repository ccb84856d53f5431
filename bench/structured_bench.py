"""Structured outputs on the embedded teacher: how many Self-Instruct generation answers can be read, free text
against a grammar-constrained JSON answer, with the same seeds, prompts and sampling seeds.

It runs the bootstrap stage's own generation step (``bootstrap._prompt`` and ``bootstrap._decide``: the same
prompts, parser, filters and ROUGE-L novelty check, windows of ``request_batch_size`` requests decided in order)
for a fixed number of generation requests per variant, without the instance requests (which structured outputs
do not change), and prints per variant:

  unparseable   generation answers with no readable instruction (``unparseable_response``) / answers
  parsed/resp   instructions read per answer;   usable/resp: of those, accepted into the pool per answer
  truncated     answers whose last item the length limit cut;   json: answers read by the JSON parser

Variants: ``off`` (today: free text), ``grammar`` (the format's GBNF: the numbered list the prompt asks for),
``json_schema`` (the format's JSON schema through llama.cpp's schema-to-grammar; the prompt asks for JSON),
``json_schema-list`` (the same schema, today's numbered-list prompt).

  python bench/structured_bench.py                               # off vs grammar, 24 requests each
  python bench/structured_bench.py --requests 40 --variants off,grammar,json_schema,json_schema-list
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.filters.heuristics import InstructionFilters  # noqa: E402
from pipeline.io.readers import load_seeds  # noqa: E402
from pipeline.stages import bootstrap  # noqa: E402
from pipeline.teachers import make_engine  # noqa: E402

VARIANTS = {  # name: (teacher.structured, bootstrap.json_prompt)
    "off": ("off", True),
    "grammar": ("grammar", True),
    "json_schema": ("json_schema", True),
    "json_schema-list": ("json_schema", False),
}


def measure(variant: str, requests: int, config: str | None, sets: list[str]) -> dict:
    structured, json_prompt = VARIANTS[variant]
    cfg = load_config(config, sets=[*sets, f"teacher.structured={structured!r}".replace("'", '"'),
                                    f"bootstrap.json_prompt={str(json_prompt).lower()}"])
    seeds = load_seeds([cfg.resolve_path(p) for p in cfg.seed_files])
    state = bootstrap.BootstrapState.start(seeds, cfg.filter)
    filters = InstructionFilters(cfg.filter)
    engine = make_engine(cfg.teacher)
    window = cfg.bootstrap.request_batch_size
    t0 = time.time()
    try:
        for start in range(0, requests, window):
            batch = range(start, min(start + window, requests))
            reqs = [bootstrap._prompt(state, cfg.bootstrap, g, engine.structured) for g in batch]
            for g, req, c in zip(batch, reqs, engine.generate(reqs, kind="generate")):
                bootstrap._decide(state, filters, cfg.filter, g, req, c, engine.model_name)
                state.pool_sizes.append(len(state.machine_instructions))
    finally:
        engine.close()
    n, s = state.stats["responses"], state.stats
    return {"variant": variant, "responses": n,
            "unparseable": s["rejected:unparseable_response"] / n,
            "parsed_per_response": s["parsed_instructions"] / n,
            "usable_per_response": len(state.machine_instructions) / n,
            "truncated": s["rejected:truncated"] / n, "json": s["parsed_as_json"] / n,
            "completion_tokens": engine.usage.completion_tokens, "wall_s": time.time() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=24, help="generation requests per variant")
    ap.add_argument("--variants", default="off,grammar", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--config", default=None, help="a run config (default: the embedded demo defaults)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE config override")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    rows = []
    for variant in args.variants.split(","):
        row = measure(variant.strip(), args.requests, args.config, args.sets)
        rows.append(row)
        print(f"... {variant}: {row['responses']} answers in {row['wall_s']:.0f} s", file=sys.stderr, flush=True)
    header = f"{'variant':<14}{'answers':>8}{'unparseable':>13}{'parsed/resp':>13}{'usable/resp':>13}" \
             f"{'truncated':>11}{'json':>7}{'tokens':>8}{'wall_s':>8}"
    print(header)
    for r in rows:
        print(f"{r['variant']:<14}{r['responses']:>8}{r['unparseable']:>13.1%}{r['parsed_per_response']:>13.2f}"
              f"{r['usable_per_response']:>13.2f}{r['truncated']:>11.1%}{r['json']:>7.0%}"
              f"{r['completion_tokens']:>8}{r['wall_s']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
