import asyncio, json, os, resource, subprocess, sys, time
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import openai, httpx2
N = int(os.environ.get("N", 3000)); C = int(os.environ.get("C", 256))
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

async def v_create(base, shards=1):
    per = max(1, C // shards)
    clients = [openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0, http_client=openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=per, max_keepalive_connections=per))) for _ in range(shards)]
    async def send(i):
        r = await clients[i % shards].chat.completions.create(**kw(i))
        return r.choices[0].message.content
    res = await drive(send)
    for c in clients: await c.close()
    return res

async def v_post(base, shards=1):
    per = max(1, C // shards)
    clients = [openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0, http_client=openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=per, max_keepalive_connections=per))) for _ in range(shards)]
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
    srv = subprocess.Popen([sys.executable, "/work/main/bench/sim_teacher.py", "--latency-model", "zero", "--latency", "0", "--slots", "1024", "--port", "0"], stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
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
main()
