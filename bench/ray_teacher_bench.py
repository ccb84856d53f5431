"""Teacher requests through Ray Data (``[scale] engine = "ray"``) against the local engine, on simulated replicas.

    python bench/ray_teacher_bench.py                       # N=1500 requests, 1 s each, 64 slots per replica
    python bench/ray_teacher_bench.py --n 3000 --latency 2 --replicas 1 2 4

One flat round of N distinct answer requests (what the instance, evolve, judge, conversation and preference stages
send at once) is sent through:
  - the local engine (this process's aiohttp client, concurrency fixed at the replica's slots) to one replica;
  - the Ray engine (ray.data.llm's HTTP processor per replica, round-robin) to 1, 2 and 4 replicas.
Each replica is ``bench/sim_teacher.py`` with ``--slots`` parallel slots and a fixed ``--latency``; a GPU server
would be the same from the client's side. Printed per variant: wall seconds, requests per second, the ratio to the
Ray engine on one replica and to the local engine, and the client CPU per request: every CPU-second the machine
spent during the round (``/proc/stat``) less the simulated servers' own (``/proc/<pid>/stat``), so Ray's driver,
actors and workers all count. Then the fixed cost of a wave (one request answered at once, through Ray), and a
paper estimate of a 1M-instruction night from the measured client cost and the issue's GPU figure.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICK  # all but idle and iowait


def proc_cpu_s(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK  # utime + stime


def start_sims(n: int, slots: int, latency: float) -> list[tuple[subprocess.Popen, str]]:
    sims = []
    for _ in range(n):
        port_file = Path(tempfile.mkstemp(prefix="sim-port")[1])
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "sim_teacher.py"), "--port", "0", "--port-file",
                                 str(port_file), "--slots", str(slots), "--latency", str(latency),
                                 "--max-seconds", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not port_file.read_text():
            time.sleep(0.05)
        sims.append((proc, f"http://127.0.0.1:{port_file.read_text()}/v1"))
    return sims


def requests(n: int, tag: str):
    from pipeline.config import Decoding
    from pipeline.teachers import ChatRequest

    dec = Decoding(temperature=0.7, top_p=0.9, max_tokens=200)
    return [ChatRequest(messages=[{"role": "user", "content": f"Answer the following task in a few sentences. "
                                   f"Task {i}: describe a place you would like to visit and why ({tag})."}],
                        decoding=dec, sample_key=f"{tag}-{i}") for i in range(n)]


def measure(engine, reqs, sims) -> dict:
    busy0, sim0, t0 = machine_busy_s(), sum(proc_cpu_s(p.pid) for p, _ in sims), time.perf_counter()
    out = engine.generate(reqs)
    wall = time.perf_counter() - t0
    client = (machine_busy_s() - busy0) - (sum(proc_cpu_s(p.pid) for p, _ in sims) - sim0)
    assert len(out) == len(reqs) and all(c.text for c in out)
    return {"wall": wall, "rps": len(reqs) / wall, "cpu_ms": 1000 * client / len(reqs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()

    from pipeline.config import ScaleConfig, TeacherConfig
    from pipeline.ray_cluster import init_local_ray
    from pipeline.teachers import make_backend, make_engine

    sims = start_sims(max(args.replicas), args.slots, args.latency)
    results: dict[str, dict] = {}
    try:
        tcfg = TeacherConfig(backend="openai", model="sim-teacher", base_url=sims[0][1], api_key_env="",
                             concurrency=args.slots, structured="off")
        engine = make_engine(tcfg)
        try:
            results["local, 1 replica"] = measure(engine, requests(args.n, "local"), sims[:1])
        finally:
            engine.close()
        print(f"local engine: {results['local, 1 replica']}", flush=True)

        init_local_ray(num_cpus=args.num_cpus)
        for r in args.replicas:
            scale = ScaleConfig(engine="ray", replicas=[u for _, u in sims[:r]], concurrency_per_replica=args.slots)
            engine = make_engine(tcfg, backend=make_backend(tcfg, scale=scale))
            try:
                engine.generate(requests(1, f"warm{r}"))  # the cluster is up and the processors built
                t = time.perf_counter()
                engine.generate(requests(1, f"one{r}"))
                one = time.perf_counter() - t
                results[f"ray, {r} replica{'s' if r > 1 else ''}"] = {**measure(engine, requests(args.n, f"ray{r}"),
                                                                               sims[:r]), "one": one}
            finally:
                engine.close()
            print(f"ray, {r} replicas: {results[list(results)[-1]]}", flush=True)
    finally:
        for p, _ in sims:
            p.terminate()

    ideal = args.slots / args.latency
    base_ray = next(v for k, v in results.items() if k.startswith("ray, 1 "))["rps"] if 1 in args.replicas else None
    local = results["local, 1 replica"]["rps"]
    print(f"\n{args.n} requests, {args.latency:g} s each, {args.slots} slots per replica "
          f"(a replica's ceiling: {ideal:.0f} req/s); {os.cpu_count()} cores on this machine")
    print(f"{'variant':<18} {'wall s':>7} {'req/s':>7} {'x ray-1':>8} {'x local':>8} {'client CPU ms/req':>18} "
          f"{'1-request wave s':>17}")
    for name, v in results.items():
        ratio = f"{v['rps'] / base_ray:.2f}" if base_ray else "-"
        one = f"{v['one']:.2f}" if "one" in v else "-"
        print(f"{name:<18} {v['wall']:>7.1f} {v['rps']:>7.1f} {ratio:>8} {v['rps'] / local:>8.2f} "
              f"{v['cpu_ms']:>18.2f} {one:>17}")

    # A 1M-instruction night, on paper. Requests per kept instruction: Self-Instruct with a strong teacher asks
    # about 1 generation request per 5 kept tasks and 2.5 instance requests per task (classification by rules,
    # inputs, answers): ~2.7; the judge adds 1. The GPU side is the figure for an 8B model on one H100.
    per_instr, night_h, gpu_rate = 3.7, 8.0, 70_000
    reqs = 1_000_000 * per_instr
    ray_cpu = max(v["cpu_ms"] for k, v in results.items() if k.startswith("ray"))
    print(f"\n1M instructions in an {night_h:g} h night: ~{reqs / 1e6:.1f}M requests ({per_instr} per instruction), "
          f"{reqs / (night_h * 3600):.0f} req/s.")
    print(f"  GPU replicas: {reqs:.0f} / ({gpu_rate} per GPU-hour x {night_h:g} h) = "
          f"{reqs / (gpu_rate * night_h):.1f} H100s serving an 8B model.")
    print(f"  client: {ray_cpu:.1f} ms CPU per request through Ray (measured above, worst variant) = "
          f"{reqs * ray_cpu / 1000 / 3600:.1f} CPU-hours = {reqs * ray_cpu / 1000 / (night_h * 3600):.1f} cores "
          f"busy all night, spread over Ray workers; the local engine ({results['local, 1 replica']['cpu_ms']:.2f} "
          f"ms/request) would need "
          f"{reqs * results['local, 1 replica']['cpu_ms'] / 1000 / (night_h * 3600):.2f} cores in one process.")


if __name__ == "__main__":
    main()
