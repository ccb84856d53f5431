"""Request scheduling against an OpenAI-compatible server: drive the real ``pipeline run`` CLI against the simulated
teacher (``bench/sim_teacher.py``) and report how busy the server's slots were.

slot occupancy = busy slot-seconds / (slots x active wall), active wall = first request to last answer (for the
429 storm: of the ``refuse_above`` limit). Scenarios:

  fixed    256 slots, every request takes --latency seconds (2 s)
  heavy    256 slots, median --latency, a seeded --tail-frac (5%) of the requests take --tail-mult (10x) as long
  ceiling  answers at once: the requests/s the client sustains (teacher.concurrency = --ceiling-concurrency)
  storm    256 slots, --latency, 429 + Retry-After above --storm-limit (64) in flight
           (teacher.concurrency = --storm-concurrency, so the client pushes past the limit)

Each scenario starts its own server (pinned to one core), writes a config from the checkout's shipped
``configs/vllm_server.toml`` (base_url -> the server, target, stages bootstrap/evolve/filter/export, evolve rounds),
runs ``pipeline run --config ... --out <tmp>`` (pinned to another core), then reads the server's /stats and the run's
manifest. ``--code DIR`` (repeatable) runs the same scenarios against another checkout (``PYTHONPATH=DIR``, cwd DIR,
so its package shadows the installed one); the first code listed is "new", ratios new/old are printed.

  python bench/teacher_bench.py --target 200 --latency 0.5                 # quick check, this checkout
  python bench/teacher_bench.py --code /tmp/base                           # issue figures: this vs a worktree
  python bench/teacher_bench.py --skip-current --code /tmp/base --scenarios fixed,storm
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIM = Path(__file__).resolve().parent / "sim_teacher.py"
SCENARIOS = ("fixed", "heavy", "ceiling", "storm")


# ---------------------------------------------------------------------------------------------------------------
# TOML writing (stdlib has a reader only)

def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) and k.isascii() else json.dumps(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(data: dict, prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict) and v:
            tables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        out += f"\n[{name}]\n" + dump_toml(v, name)
    return out


def merge(into: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v
    return into


def dotted(key: str, value) -> dict:
    out: dict = {}
    node = out
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def parse_set(item: str) -> dict:
    key, _, raw = item.partition("=")
    try:
        return tomllib.loads(f"{key.strip()} = {raw.strip()}")
    except tomllib.TOMLDecodeError:
        return dotted(key.strip(), raw.strip())


# ---------------------------------------------------------------------------------------------------------------
# Processes

def _pin(cpu: int | None):
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None

    def fn():
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    return fn


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process started with start_new_session=True (its group id is its pid), by that id only."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class SimServer:
    def __init__(self, args: list[str], cpu: int | None, log: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(SIM), "--port", "0", *args], stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, start_new_session=True, preexec_fn=_pin(cpu))
        self.port = self._ready(timeout=30.0)
        self.base = f"http://127.0.0.1:{self.port}"

    def _ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if r:
                line = self.proc.stdout.readline()
                if line.startswith("READY "):
                    return int(line.split()[1])
                if not line and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"sim server did not start (see {self.log.name})")

    def get(self, path: str, method: str = "GET") -> dict:
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        kill_group(self.proc)
        self.log.close()


# ---------------------------------------------------------------------------------------------------------------
# One scenario

def code_label(code: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no",
                                "--", "pipeline", "prompts", "configs"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "?", ""
    name = "current" if code.resolve() == REPO else code.name
    return f"{name}@{sha or '?'}{'+' if dirty else ''}"


def scenario_server_args(name: str, a) -> list[str]:
    common = ["--slots", str(a.slots), "--seed", str(a.seed)]
    if a.workdir and a.trace:
        common += ["--trace", str(Path(a.workdir) / f"{name}.trace.tsv")]
    if name == "fixed":
        return common + ["--latency-model", "fixed", "--latency", str(a.latency)]
    if name == "heavy":
        return common + ["--latency-model", "heavy", "--latency", str(a.latency), "--tail-frac", str(a.tail_frac),
                         "--tail-mult", str(a.tail_mult)]
    if name == "ceiling":
        return common + ["--latency-model", "zero", "--latency", "0"]
    if name == "storm":
        return common + ["--latency-model", "fixed", "--latency", str(a.latency), "--refuse-above",
                         str(a.storm_limit), "--retry-after", str(a.retry_after)]
    raise ValueError(name)


def scenario_config(name: str, a) -> dict:
    over: dict = {}
    if name == "ceiling":
        merge(over, dotted("teacher.concurrency", a.ceiling_concurrency))
    if name == "storm":
        merge(over, dotted("teacher.concurrency", a.storm_concurrency))
    return over


def build_config(code: Path, base_url: str, name: str, a) -> dict:
    base = Path(a.config) if a.config else code / "configs" / "vllm_server.toml"
    if not base.is_absolute() and not base.exists():
        base = code / base
    cfg = tomllib.loads(base.read_text(encoding="utf-8"))
    merge(cfg, {
        "stages": [s.strip() for s in a.stages.split(",") if s.strip()],
        "teacher": {"backend": "openai", "base_url": base_url, "api_key_env": ""},
        "bootstrap": {"target_instructions": a.target},
        "evolve": {"rounds": a.rounds},
    })
    merge(cfg, scenario_config(name, a))
    for item in a.set or []:
        merge(cfg, parse_set(item))
    for item in a.scenario_set or []:
        scen, _, rest = item.partition(":")
        if scen == name:
            merge(cfg, parse_set(rest))
    return cfg


def seed_paths(cfg: dict, code: Path) -> list[str]:
    out = []
    for p in cfg.get("seed_files", ["seed_tasks/seed_tasks.jsonl"]):
        path = Path(p).expanduser()
        if not path.is_absolute():
            path = code / path
        if path.exists():
            out.append(str(path))
    return out


def count_dataset(run_dir: Path) -> tuple[int, int]:
    """(rows, distinct instructions) of dataset/train.jsonl."""
    path = run_dir / "dataset" / "train.jsonl"
    if not path.exists():
        return 0, 0
    rows, instr = 0, set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                instr.add(json.loads(line)["instruction"])
                rows += 1
            except (ValueError, KeyError):
                continue
    return rows, len(instr)


def run_scenario(code: Path, name: str, a, cpus: tuple[int | None, int | None], work: Path) -> dict:
    label = code_label(code)
    tag = f"{label.split('@')[0]}-{name}-{time.strftime('%H%M%S')}"
    out_dir = work / f"run-{tag}"  # always a new run directory: an existing one would be resumed
    cfg_path = work / f"{tag}.toml"
    load_before = os.getloadavg()
    res: dict = {"code": label, "code_dir": str(code), "scenario": name, "load_before": load_before}
    server = None
    try:
        base_cfg = build_config(code, "http://127.0.0.1:0/v1", name, a)
        server = SimServer(scenario_server_args(name, a) + sum((["--seed-file", p] for p in seed_paths(base_cfg, code)),
                                                               []), cpus[0], work / f"{tag}.server.log")
        cfg = build_config(code, f"{server.base}/v1", name, a)
        cfg_path.write_text(dump_toml(cfg), encoding="utf-8")
        mod, _, attr = a.entry.partition(":")
        boot = f"import sys; from {mod} import {attr or 'app'} as _app; sys.argv[0] = 'pipeline'; _app()"
        cmd = [a.python, "-c", boot, "run", "--config", str(cfg_path), "--out", str(out_dir),
               *shlex.split(a.cli_args)]
        env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "120"}
        env.pop("OPENAI_API_KEY", None)
        t0 = time.monotonic()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(work / f"{tag}.pipeline.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=str(code), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_pin(cpus[1]))
            try:
                rc = proc.wait(timeout=a.timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                rc = "timeout"
        res["wall_s"] = round(time.monotonic() - t0, 1)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pipeline process (and its children) only
        res["client_cpu_s"] = round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 1)
        res["rc"] = rc
        res["stats"] = server.get("/stats")
    except Exception as e:  # noqa: BLE001 - one failed scenario must not stop the others
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        if server is not None:
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            server.stop()
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            res["server_cpu_s"] = round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 1)
    res["load_after"] = os.getloadavg()
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text(encoding="utf-8"))
        res["status"] = m.get("status")
        res["stopped_because"] = m.get("stopped_because")
        usage = [s.get("usage") or {} for s in m.get("sessions", [])]
        res["client_requests"] = sum(u.get("requests", 0) for u in usage)
        res["retries"] = sum(u.get("retries", 0) for u in usage)
        res["retries_by_kind"] = {k: sum((u.get("retries_by_kind") or {}).get(k, 0) for u in usage)
                                  for k in {k for u in usage for k in (u.get("retries_by_kind") or {})}}
        # the engine is the run's one: each stage's manifest entry shows its totals when that stage ended
        res["hedged"] = max([(v.get("engine") or {}).get("hedged", 0) for v in m.get("stages", {}).values()] or [0])
        res["stages"] = {s: {"kept": v.get("kept"), "rejected": v.get("rejected"),
                             "rejected_by_reason": v.get("rejected_by_reason", {}),
                             "wall_s": v.get("wall_s"), **({"tasks_kept": v["tasks_kept"]} if "tasks_kept" in v else {})}
                         for s, v in m.get("stages", {}).items()}
    res["dataset_rows"], res["dataset_instructions"] = count_dataset(out_dir)
    res["log"] = str(work / f"{tag}.pipeline.log")
    return res


# ---------------------------------------------------------------------------------------------------------------
# Report

def _f(v, fmt="{:.2f}", none="-"):
    return none if v is None else fmt.format(v)


def row(r: dict) -> list[str]:
    s = r.get("stats") or {}
    status = r.get("status") or r.get("error") or f"rc={r.get('rc')}"
    share = s.get("machine_prompt_share")
    instant = (s.get("config") or {}).get("latency_model") == "zero"  # no slot time: occupancy means nothing
    return [
        r["code"], r["scenario"], "-" if instant else _f(s.get("occupancy"), "{:.3f}"),
        "-" if instant or s.get("cancelled_slot_s") is None else
        f"{s['cancelled_slot_s'] / max(s['busy_slot_s'], 1e-9):.3f}/{r.get('hedged', '-')}",
        "-" if instant else f"{_f(s.get('mean_in_flight'), '{:.1f}')}/{s.get('peak_in_flight', '-')}",
        str(s.get("requests", "-")), _f(s.get("requests_per_s"), "{:.1f}"),
        f"{s.get('refused_429', '-')}/{r.get('retries', '-')}",
        "-" if share is None else f"{share:.2f} ({_f(s.get('machine_slot_share'), '{:.2f}')})",
        _f(r.get("wall_s"), "{:.0f}"), _f(s.get("active_wall_s"), "{:.0f}"),
        f"{_f(r.get('client_cpu_s'), '{:.0f}')}/{_f(r.get('server_cpu_s'), '{:.0f}')}",
        _f(s["requests"] / r["client_cpu_s"] if s.get("requests") and r.get("client_cpu_s") else None, "{:.0f}"),
        str(r.get("dataset_instructions", "-")), f"{r['load_before'][0]:.1f}", str(status)[:40],
    ]


HEAD = ["code", "scenario", "occup", "lost-race share/hedges", "inflight mean/peak", "reqs", "req/s", "429/retries",
        "machine-in-prompt (slots)", "wall s", "active s", "cpu s cli/srv", "req/cli-cpu-s", "dataset instr",
        "load1", "status"]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEAD)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*HEAD), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def reasons_line(r: dict) -> str:
    parts = []
    for stage, v in (r.get("stages") or {}).items():
        top = ", ".join(f"{k} {n}" for k, n in list(v.get("rejected_by_reason", {}).items())[:6])
        extra = f" tasks {v['tasks_kept']}" if "tasks_kept" in v else ""
        parts.append(f"{stage}: kept {v.get('kept')}{extra}, rejected {v.get('rejected')}" + (f" ({top})" if top else ""))
    s = r.get("stats") or {}
    kinds = ", ".join(f"{k} {n}" for k, n in (s.get("by_kind") or {}).items())
    cut = s.get("finish_length_by_kind") or {}
    after = s.get("machine_prompt_share_after_first")
    return (f"  {r['code']} {r['scenario']}: " + "; ".join(parts) + f"\n    server requests by kind: {kinds}"
            + (f"; generation prompts {s.get('generation_prompts')}, with machine instructions once any exist: "
               f"{after:.2f}" if after is not None else "")
            + (f"; cut by max_tokens: {cut}" if cut else "")
            + (f"\n    stopped: {r['stopped_because']}" if r.get("stopped_because") else ""))


def ratios(results: list[dict]) -> list[str]:
    codes = list(dict.fromkeys(r["code"] for r in results))
    if len(codes) < 2:
        return []
    new = {r["scenario"]: r for r in results if r["code"] == codes[0]}
    out = []
    for old_code in codes[1:]:
        for r in results:
            if r["code"] != old_code or r["scenario"] not in new:
                continue
            n, o = new[r["scenario"]].get("stats") or {}, r.get("stats") or {}

            def q(k):
                return f"{n[k] / o[k]:.2f}x" if n.get(k) and o.get(k) else "-"
            wall = (f"{new[r['scenario']]['wall_s'] / r['wall_s']:.2f}x"
                    if new[r["scenario"]].get("wall_s") and r.get("wall_s") else "-")
            out.append(f"  {r['scenario']:<8} {codes[0]} / {old_code}: occupancy {q('occupancy')}, "
                       f"req/s {q('requests_per_s')}, mean in flight {q('mean_in_flight')}, wall {wall}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    p.add_argument("--target", type=int, default=2000, help="bootstrap.target_instructions")
    p.add_argument("--latency", type=float, default=2.0, help="seconds per request (median for heavy)")
    p.add_argument("--slots", type=int, default=256)
    p.add_argument("--tail-frac", type=float, default=0.05)
    p.add_argument("--tail-mult", type=float, default=10.0)
    p.add_argument("--storm-limit", type=int, default=64, help="storm: 429 above this many in flight")
    p.add_argument("--storm-concurrency", type=int, default=256, help="storm: teacher.concurrency")
    p.add_argument("--retry-after", type=float, default=1.0, help="storm: Retry-After seconds")
    p.add_argument("--ceiling-concurrency", type=int, default=1024, help="ceiling: teacher.concurrency")
    p.add_argument("--rounds", type=int, default=1, help="evolve.rounds")
    p.add_argument("--stages", default="bootstrap,evolve,filter,export")
    p.add_argument("--seed", type=int, default=0, help="sim server seed (answers and the heavy tail)")
    p.add_argument("--config", help="base config (default: <code>/configs/vllm_server.toml)")
    p.add_argument("--set", action="append", help="KEY=VALUE (TOML) override for every scenario (repeatable)")
    p.add_argument("--scenario-set", action="append", help="SCENARIO:KEY=VALUE override for one scenario")
    p.add_argument("--code", action="append", type=Path, default=[], help="another checkout to measure (repeatable)")
    p.add_argument("--skip-current", action="store_true", help="measure only the --code checkouts")
    p.add_argument("--entry", default="pipeline.cli:app", help="MODULE:ATTR of the CLI app (typer)")
    p.add_argument("--cli-args", default="--no-report", help="extra arguments after `run` (default --no-report)")
    default_py = REPO / ".venv" / "bin" / "python"
    p.add_argument("--python", default=str(default_py if default_py.exists() else sys.executable))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per pipeline run")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and client to separate cores")
    p.add_argument("--workdir", help="keep configs, logs and runs here (default: a temporary directory, removed)")
    p.add_argument("--trace", action="store_true", help="with --workdir: the server writes <scenario>.trace.tsv there "
                   "(kind, start s, latency s, id of every started request)")
    p.add_argument("--json", help="write all results as JSON here")
    a = p.parse_args(argv)

    names = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [s for s in names if s not in SCENARIOS]
    if bad:
        p.error(f"unknown scenario {bad[0]}")
    codes = ([] if a.skip_current else [REPO]) + [c.resolve() for c in a.code]
    if not codes:
        p.error("nothing to measure (--skip-current without --code)")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pins = (cpus[0], cpus[1]) if len(cpus) >= 2 and not a.no_pin else (None, None)

    tmp = None
    if a.workdir:
        work = Path(a.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="teacher_bench-")
        work = Path(tmp.name)
    print(f"# teacher_bench: target {a.target}, latency {a.latency}s, slots {a.slots}, tail {a.tail_frac}x"
          f"{a.tail_mult}, storm limit {a.storm_limit}, evolve rounds {a.rounds}; cpus {cpus} pins "
          f"server={pins[0]} client={pins[1]}; load {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    try:
        for name in names:  # scenario-major: the codes of one scenario run back to back, under similar load
            for code in codes:
                r = run_scenario(code, name, a, pins, work)
                results.append(r)
                print(table([row(r)]).splitlines()[-1], flush=True)
    finally:
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        if tmp is not None:
            tmp.cleanup()
    print()
    print(table([row(r) for r in results]))
    print("\nrejections per stage (top reasons):")
    for r in results:
        print(reasons_line(r))
    rat = ratios(results)
    if rat:
        print("\nratios new/old:")
        print("\n".join(rat))
    print("\noccupancy = busy slot-seconds / (slots x active wall); storm: of the 429 limit. lost-race share: of the "
          "busy slot-seconds, those of copies cancelled because another copy of the request answered first (hedging "
          "waste, counted in occupancy); hedges: copies sent. machine-in-prompt: share "
          "of generation prompts showing a machine-generated instruction (share of in-context slots). cpu s: CPU "
          "seconds of the pipeline process / the sim server; req/cli-cpu-s: requests per CPU-second of the client "
          "(the one-core ceiling, independent of other load on the machine).")
    return 0 if all(r.get("status") == "complete" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
