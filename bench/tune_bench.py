"""Benchmark: our tune stage against a plain trl SFTTrainer script, same data, model and settings, same run.

    python bench/tune_bench.py                       # CPU default: SmolLM2-135M, 20 steps, max_length 256, batch 4
    python bench/tune_bench.py --dataset outputs/<run> --steps 50 --repeats 2
    python bench/tune_bench.py --base-model /models/Qwen2.5-1.5B-Instruct --steps 100 --batch-size 16   # on a GPU

Each contender runs in its own child process (so peak memory is its own), ``--repeats`` times, alternating the
order. Measured around ``trainer.train()`` only (model loading and dataset preparation excluded):

- trained tokens per second: non-padding tokens through the model (prompt and completion; trl/transformers
  ``include_num_input_tokens_seen="non_padding"``) divided by the train wall time;
- peak memory: the process's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, model loading included) and,
  on CUDA, ``torch.cuda.max_memory_allocated()``;
- on CUDA, model FLOPs utilisation: ``MFU = tokens/s x (4N + 12 L T d) / peak``, N the base model's parameters, L
  its layers, d its width, T the mean trained sequence length (LoRA: forward 2N + backward through activations 2N,
  no weight gradients for the frozen base; attention 12 L T d). Peak: dense bf16 tensor-core FLOP/s from the
  vendor sheets (H100/H200 SXM 989 TFLOP/s, H100 PCIe 756, A100 312, L40S 362, L4 121, A10G 125, RTX 4090 165);
  fp32 training uses the fp32 non-tensor peak (H100/H200 67, A100 19.5). ``--peak-tflops`` overrides.

The data: a run directory or dataset file (``--dataset``), by default the project's seed tasks exported as a
dataset (``seed_tasks/seed_tasks.jsonl`` through ``pipeline.io.readers`` and ``pipeline.stages.export``). The plain script reads
``messages.jsonl`` with ``datasets``, turns each row into prompt/completion, and builds SFTConfig/LoraConfig with
the same settings we use; its only additions are ``use_cpu``/``bf16`` for the device and the token counter.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

PEAK_TFLOPS = {  # dense, no sparsity: (bf16/fp16 tensor core, fp32 non-tensor)
    "H200": (989.0, 67.0), "H100 PCIe": (756.0, 51.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6), "L4": (121.0, 30.3), "A10G": (125.0, 31.2), "RTX 4090": (165.0, 82.6),
}


def build_seed_dataset(dest: Path) -> Path:
    from pipeline.io.readers import load_seed_file
    from pipeline.stages.export import to_alpaca, to_messages

    records = load_seed_file(ROOT / "seed_tasks" / "seed_tasks.jsonl")
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "train.jsonl", "w", encoding="utf-8") as a, open(dest / "messages.jsonl", "w",
                                                                       encoding="utf-8") as m:
        for rec in records:
            a.write(json.dumps(to_alpaca(rec), ensure_ascii=False) + "\n")
            m.write(json.dumps(to_messages(rec), ensure_ascii=False) + "\n")
    return dest / "messages.jsonl"


def _messages_file(dataset: Path, workdir: Path) -> Path:
    """Both contenders read the same messages.jsonl (an Alpaca file is converted once, here)."""
    from pipeline.runs.read import resolve_dataset
    from pipeline.train.tune import load_examples

    path = resolve_dataset(dataset)
    examples, _ = load_examples(path)
    out = workdir / "messages.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for e in examples:
            fh.write(json.dumps({"messages": e.prompt + e.completion}, ensure_ascii=False) + "\n")
    return out


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------------ contenders


def worker_ours(a: argparse.Namespace) -> dict:
    from pipeline.config import TuneConfig
    from pipeline.train.tune import train

    cfg = TuneConfig(base_model=a.base_model, max_steps=a.steps, batch_size=a.batch_size, grad_accum=a.grad_accum,
                     max_length=a.max_length, learning_rate=a.lr, lora_r=a.lora_r, lora_alpha=2 * a.lora_r,
                     lora_dropout=0.05, eval_fraction=0.0, seed=a.seed, save_steps=a.steps,
                     num_threads=a.threads)
    meta = train(Path(a.data), Path(a.workdir) / "ours", cfg)
    tr = meta["trainer"]
    # train_s: wall time around trainer.train(), measured the same way as for the plain script
    return {"tokens": tr["tokens"], "train_s": tr["train_s"], "steps": tr["global_step"],
            "sequences": a.steps * a.batch_size * a.grad_accum, "precision": meta["precision"]}


def worker_plain(a: argparse.Namespace) -> dict:
    """What a user would write with trl directly."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if a.threads:
        torch.set_num_threads(a.threads)
    gpu = torch.cuda.is_available()
    bf16 = gpu and torch.cuda.is_bf16_supported()
    ds = load_dataset("json", data_files=a.data, split="train")
    ds = ds.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                remove_columns=["messages"])
    tok = AutoTokenizer.from_pretrained(a.base_model)
    model = AutoModelForCausalLM.from_pretrained(a.base_model, dtype=torch.bfloat16 if bf16 else torch.float32)
    ckpt = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ \
        else "gradient_checkpointing"
    args = SFTConfig(output_dir=str(Path(a.workdir) / "plain"), max_steps=a.steps,
                     per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=a.grad_accum, learning_rate=a.lr, max_length=a.max_length,
                     seed=a.seed, logging_steps=1, save_steps=a.steps, report_to="none", use_cpu=not gpu, bf16=bf16,
                     include_num_input_tokens_seen="non_padding", **{ckpt: False})
    lora = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.05, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    return {"tokens": trainer.state.num_input_tokens_seen, "train_s": round(train_s, 3),
            "steps": trainer.state.global_step, "sequences": a.steps * a.batch_size * a.grad_accum,
            "precision": "bf16" if bf16 else "fp32"}


def run_worker(a: argparse.Namespace) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = worker_ours(a) if a.worker == "ours" else worker_plain(a)
    result["tokens_per_s"] = round(result["tokens"] / result["train_s"], 1)
    result["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    if torch.cuda.is_available():
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["device"] = torch.cuda.get_device_name(0)
    else:
        result["device"] = f"cpu x{torch.get_num_threads()} threads"
    Path(a.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------------ main


def _peak_flops(device: str, precision: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"--peak-tflops {override}"
    for name, (half, fp32) in PEAK_TFLOPS.items():
        if name.lower() in device.lower():
            value = fp32 if precision == "fp32" else half
            return value * 1e12, f"{name} {'fp32' if precision == 'fp32' else 'bf16 dense'} {value} TFLOP/s"
    return None, "unknown GPU: pass --peak-tflops"


def _model_shape(model_dir: Path) -> tuple[int, int, int]:
    """(parameters, layers, width) from config.json and the safetensors headers (no weights loaded)."""
    import struct

    cfg = json.loads((model_dir / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    n = 0
    for f in model_dir.glob("*.safetensors"):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for k, v in header.items():
            if k != "__metadata__":
                count = 1
                for s in v["shape"]:
                    count *= s
                n += count
    return n, int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="", help="Run directory or dataset file (default: the seed tasks).")
    p.add_argument("--base-model", default="", help="Local HF model dir or .gguf (default: embedded SmolLM2-135M).")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU peak for MFU, in TFLOP/s.")
    p.add_argument("--json", default="", help="Also write the results here.")
    p.add_argument("--worker", choices=["ours", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        run_worker(a)
        return

    from pipeline.train.model import resolve_base_model

    base = resolve_base_model(a.base_model)  # convert the GGUF once, before timing anything
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        tmp = Path(tmp)
        src = Path(a.dataset) if a.dataset else build_seed_dataset(tmp / "seed-dataset")
        data = _messages_file(src, tmp)
        rows = sum(1 for _ in open(data))
        print(f"data: {src} ({rows} rows); model: {base}; {a.steps} steps, batch {a.batch_size} x "
              f"{a.grad_accum}, max_length {a.max_length}, LoRA r {a.lora_r} all-linear", flush=True)
        results: dict[str, list[dict]] = {"plain": [], "ours": []}
        for rep in range(a.repeats):
            order = ["plain", "ours"] if rep % 2 == 0 else ["ours", "plain"]
            for who in order:
                work = tmp / f"{who}-{rep}"
                work.mkdir()
                res_file = work / "result.json"
                cmd = [sys.executable, __file__, "--worker", who, "--data", str(data), "--workdir", str(work),
                       "--result", str(res_file), "--base-model", str(base), "--steps", str(a.steps),
                       "--batch-size", str(a.batch_size), "--grad-accum", str(a.grad_accum),
                       "--max-length", str(a.max_length), "--lr", str(a.lr), "--lora-r", str(a.lora_r),
                       "--seed", str(a.seed), "--threads", str(a.threads)]
                t0 = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{who} failed:\n{proc.stderr[-4000:]}")
                r = json.loads(res_file.read_text())
                r["process_wall_s"] = round(time.time() - t0, 1)
                results[who].append(r)
                print(f"  {who:5} rep {rep}: {r['tokens_per_s']:8.1f} tokens/s ({r['tokens']} tokens in "
                      f"{r['train_s']:.1f} s), peak RSS {r['peak_rss_mib']:.0f} MiB"
                      + (f", CUDA peak {r['cuda_max_allocated_mib']:.0f} MiB" if "cuda_max_allocated_mib" in r else "")
                      + f", process {r['process_wall_s']} s", flush=True)

    def med(who, key):
        vals = [r[key] for r in results[who] if key in r]
        return statistics.median(vals) if vals else None

    summary = {who: {k: med(who, k) for k in ("tokens_per_s", "tokens", "train_s", "peak_rss_mib",
                                              "cuda_max_allocated_mib", "process_wall_s")} for who in results}
    summary["ratio_tokens_per_s"] = round(summary["ours"]["tokens_per_s"] / summary["plain"]["tokens_per_s"], 3)
    summary["ratio_peak_rss"] = round(summary["ours"]["peak_rss_mib"] / summary["plain"]["peak_rss_mib"], 3)
    device = results["ours"][0]["device"]
    summary["device"] = device
    if "cuda_max_allocated_mib" in results["ours"][0]:
        n, layers, width = _model_shape(base)
        for who in ("plain", "ours"):
            r = results[who][0]
            seq = r["tokens"] / r["sequences"]
            flops_per_token = 4 * n + 12 * layers * seq * width
            peak, peak_note = _peak_flops(device, r["precision"], a.peak_tflops)
            summary[who]["mfu"] = round(summary[who]["tokens_per_s"] * flops_per_token / peak, 4) if peak else None
            summary["mfu_peak"] = peak_note
        summary["ratio_cuda_peak"] = round(summary["ours"]["cuda_max_allocated_mib"]
                                           / summary["plain"]["cuda_max_allocated_mib"], 3)
    print(f"\n{device}, median of {a.repeats}:")
    print(f"{'':6} {'tokens/s':>10} {'peak RSS MiB':>13}" + (f" {'CUDA MiB':>9} {'MFU':>7}" if "mfu_peak" in summary
                                                             else ""))
    for who in ("plain", "ours"):
        s = summary[who]
        line = f"{who:6} {s['tokens_per_s']:>10.1f} {s['peak_rss_mib']:>13.0f}"
        if "mfu_peak" in summary:
            line += f" {s['cuda_max_allocated_mib']:>9.0f} {s['mfu'] if s['mfu'] is not None else '-':>7}"
        print(line)
    print(f"ours / plain: tokens/s x{summary['ratio_tokens_per_s']}, peak RSS x{summary['ratio_peak_rss']}"
          + (f", CUDA peak x{summary['ratio_cuda_peak']}; MFU peak: {summary['mfu_peak']}" if "mfu_peak" in summary
             else ""))
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": vars(a), "runs": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
