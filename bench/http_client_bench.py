"""Client CPU per chat request: the ``openai`` SDK against plain aiohttp, on the simulated teacher answering at once.

    python bench/http_client_bench.py create create16 post post16 aio_sdk aiohttp     # N=3000 C=256 by default

Variants: ``create`` the SDK's ``chat.completions.create`` with one httpx pool of C connections (what the backend
used before); ``create16`` the same over C/16 clients of 16 connections (httpx's pool scans every connection for
each request); ``post``/``post16`` the SDK's raw ``post`` (no parameter transform); ``aio_sdk`` the SDK over its
aiohttp transport (needs ``httpx-aiohttp``); ``aiohttp`` plain aiohttp with json (what the backend uses now).
The server is pinned to core 0, the client to core 1; figures are requests per client CPU-second and per second.
"""
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai

N = int(os.environ.get("N", 3000))
C = int(os.environ.get("C", 256))
msg = [{"role": "user", "content": "Come up with a series of tasks:\n" + "\n".join(f"{i}. Write a poem about item number {i} in the list of things." for i in range(1, 9)) + "\n9."}]
def cpu(): r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

async def drive(send):
    sem = asyncio.Semaphore(C)
    async def one(i):
        async with sem:
            return await send(i)
    t0, c0 = time.monotonic(), cpu()
    out = await asyncio.gather(*(one(i) for i in range(N)))
    dt, dc = time.monotonic() - t0, cpu() - c0
    assert all(isinstance(x, str) and x for x in out), out[:3]
    return N / dc, N / dt

def kw(i): return dict(model="sim", messages=msg, temperature=0.7, top_p=0.5, max_tokens=384, seed=i, presence_penalty=0.0, frequency_penalty=0.0)

def _clients(base: str, shards: int) -> list:
    """``shards`` SDK clients sharing the C connections between them."""
    per = max(1, C // shards)
    limits = httpx2.Limits(max_connections=per, max_keepalive_connections=per)
    return [openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0,
                               http_client=openai.DefaultAsyncHttpxClient(limits=limits)) for _ in range(shards)]


async def v_create(base, shards=1):
    clients = _clients(base, shards)
    async def send(i):
        r = await clients[i % shards].chat.completions.create(**kw(i))
        return r.choices[0].message.content
    res = await drive(send)
    for c in clients: await c.close()
    return res

async def v_post(base, shards=1):
    clients = _clients(base, shards)
    async def send(i):
        r = await clients[i % shards].post("/chat/completions", body=kw(i), cast_to=httpx2.Response)
        return json.loads(r.content)["choices"][0]["message"]["content"]
    res = await drive(send)
    for c in clients: await c.close()
    return res

async def v_aio_sdk(base):
    c = openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0, http_client=openai.DefaultAioHttpClient())
    async def send(i):
        r = await c.chat.completions.create(**kw(i))
        return r.choices[0].message.content
    res = await drive(send); await c.close(); return res

async def v_aiohttp(base):
    import aiohttp
    s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=C))
    url = base + "/chat/completions"
    async def send(i):
        async with s.post(url, data=json.dumps(kw(i)), headers={"content-type": "application/json", "authorization": "Bearer x"}) as r:
            body = await r.read()
        return json.loads(body)["choices"][0]["message"]["content"]
    res = await drive(send); await s.close(); return res

def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    srv = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "sim_teacher.py"), "--latency-model", "zero", "--latency", "0", "--slots", "1024", "--port", "0"], stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    port = None
    while port is None:
        line = srv.stdout.readline()
        if line.startswith("READY"): port = int(line.split()[1])
    os.sched_setaffinity(0, {1})
    base = f"http://127.0.0.1:{port}/v1"
    for name in sys.argv[1:]:
        fn = {"create": lambda: v_create(base), "create16": lambda: v_create(base, C // 16), "post": lambda: v_post(base),
              "post16": lambda: v_post(base, C // 16), "aio_sdk": lambda: v_aio_sdk(base), "aiohttp": lambda: v_aiohttp(base)}[name]
        per_cpu, per_s = asyncio.run(fn())
        print(f"{name:10s} {per_cpu:8.0f} req/client-cpu-s {per_s:8.0f} req/s", flush=True)
    srv.terminate()

if __name__ == "__main__":
    main()
