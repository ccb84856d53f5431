"""Portable against native llama.cpp: the embedded teacher's speed with each build, in the same run.

``make bench-llama`` builds llama-cpp-python a second time with ``-DGGML_NATIVE=ON`` (kept apart, never installed
in the venv), installs both builds into folders of their own, and runs this script, which times the same work
with each build in fresh child processes, alternating builds round by round so machine noise hits both alike:

- prompt processing and generation tokens/s, from llama.cpp's own counters, over six ~400-token chat prompts like
  the bootstrap's, each answered with up to 256 tokens (three greedy, three with the bootstrap's sampling);
- the same requests end to end through llama-cpp-python: prompt plus completion tokens per second of wall time.

It prints each build's CPU features (llama.cpp's system info), the medians, and portable/native ratios.
    python bench/llama_build_bench.py --portable DIR --native DIR [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
import llama_cpp
model, threads = sys.argv[1], int(sys.argv[2])
llm = llama_cpp.Llama(model_path=model, n_ctx=2048, n_threads=threads, n_batch=512, seed=0, verbose=False)
tasks = ["Summarise a news article in two sentences.", "List three uses of vinegar in cleaning.",
         "Translate a short greeting into French.", "Explain why the sky looks blue at noon.",
         "Write a haiku about a rainy bus stop.", "Give a recipe for a quick tomato soup.",
         "Classify a tweet as positive or negative.", "Suggest names for a grey kitten."]
def prompt(k):
    lines = "\n".join(f"{i + 1}. {t} (variant {k}, step {i})" for i, t in enumerate(tasks * 3))
    return [{"role": "user", "content": "Here are some tasks people ask an assistant to do:\n" + lines +
             "\nContinue the list with ten new, different tasks, one per line, numbered."}]
ctx = llm._ctx.ctx
llm.create_chat_completion(messages=prompt(0), max_tokens=8, temperature=0.0)  # warm-up
# llama.cpp's own counters split prompt processing from generation: fresh prompts (no KV reuse), greedy and then
# the bootstrap's sampling, up to 256 tokens each.
llama_cpp.llama_perf_context_reset(ctx)
t0, total = time.perf_counter(), 0
for k in range(1, 7):
    llm.reset()
    sampling = dict(temperature=0.0) if k <= 3 else dict(temperature=0.7, top_p=0.5, presence_penalty=2.0, seed=k)
    out = llm.create_chat_completion(messages=prompt(k), max_tokens=256, **sampling)
    total += out["usage"]["total_tokens"]
wall = time.perf_counter() - t0
perf = llama_cpp.llama_perf_context(ctx)
res = {"prompt_tok_s": perf.n_p_eval / (perf.t_p_eval_ms / 1000), "gen_tok_s": perf.n_eval / (perf.t_eval_ms / 1000),
       "mix_tok_s": total / wall}
info = llama_cpp.llama_print_system_info()
res["system_info"] = info.decode() if isinstance(info, bytes) else str(info)
print(json.dumps(res))
"""

METRICS = [("prompt_tok_s", "prompt processing tok/s"), ("gen_tok_s", "generation tok/s"),
           ("mix_tok_s", "end-to-end tok/s")]


def run_once(site: Path, model: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_WAIT_POLICY": "passive"}  # as the pipeline runs it
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(threads)], capture_output=True, text=True,
                          env=env, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"the build in {site} failed (exit {proc.returncode}): "
                         f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from pipeline.teachers.embedded import cpu_features, embedded_model_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--portable", type=Path, required=True, help="site folder holding the portable build")
    ap.add_argument("--native", type=Path, required=True, help="site folder holding the native build")
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: the embedded SmolLM2-135M)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    model = args.model or embedded_model_path()
    builds = {"portable": args.portable, "native": args.native}
    results: dict[str, list[dict]] = {b: [] for b in builds}
    for r in range(args.rounds):
        order = list(builds) if r % 2 == 0 else list(reversed(builds))
        for b in order:
            results[b].append(run_once(builds[b], model, args.threads))
            print(f"round {r + 1}/{args.rounds} {b:<8} " +
                  " ".join(f"{k}={results[b][-1][k]:.1f}" for k, _ in METRICS), flush=True)
    print(f"\nmodel {model.name}, {args.threads} threads, {args.rounds} rounds, medians; machine: "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    for b in builds:
        print(f"  {b:<8} CPU features: {' '.join(cpu_features(results[b][0]['system_info']))}")
    print(f"\n{'metric':<26}{'portable':>10}{'native':>10}{'ratio':>8}")
    for key, label in METRICS:
        p = statistics.median(x[key] for x in results["portable"])
        n = statistics.median(x[key] for x in results["native"])
        print(f"{label:<26}{p:>10.1f}{n:>10.1f}{p / n:>8.2f}")


if __name__ == "__main__":
    main()
