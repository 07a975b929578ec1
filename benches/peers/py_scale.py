"""Python `websockets` peer for the scale scenario: N heartbeating clients on one asyncio loop.

python3 py_scale.py URL N INTERVAL_MS  -> one JSON line (same fields as the `scale` binary).
"""
import asyncio
import json
import os
import sys
import time

import websockets


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def cpu_s():
    t = os.times()
    return t.user + t.system


url, n, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000.0
st = {"open": 0, "pongs": 0, "misses": 0, "lost": 0}
rtts = []


async def client():
    try:
        async with websockets.connect(url, ping_interval=None, max_size=1 << 20, compression=None) as ws:
            st["open"] += 1
            sent = None
            nxt = time.monotonic() + interval
            while True:
                try:
                    m = await asyncio.wait_for(ws.recv(), max(0.0, nxt - time.monotonic()))
                    if m == "pong" and sent is not None:
                        rtts.append(int((time.monotonic() - sent) * 1e6))
                        st["pongs"] += 1
                        sent = None
                    elif m == "ping":
                        await ws.send("pong")
                except asyncio.TimeoutError:
                    if sent is not None:
                        st["misses"] += 1
                    await ws.send("ping")
                    sent = time.monotonic()
                    nxt += interval
    except Exception:
        st["lost"] += 1


async def main():
    rss0 = rss_kib()
    t0 = time.monotonic()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(client()))
        while st["open"] + 512 < i + 1:
            await asyncio.sleep(0.001)
    while st["open"] < n:
        await asyncio.sleep(0.01)
    connect_s = time.monotonic() - t0
    p0, c0, w0 = st["pongs"], cpu_s(), time.monotonic()
    while st["pongs"] < p0 + 2 * n or time.monotonic() - w0 < 2 * interval:
        await asyncio.sleep(0.02)
    c1, w1, rss1 = cpu_s(), time.monotonic(), rss_kib()
    r = sorted(rtts)

    def pct(p):
        return r[min(len(r) - 1, round((len(r) - 1) * p))] if r else 0

    print(json.dumps({
        "client": "python-websockets " + websockets.__version__, "conns": n,
        "interval_ms": int(interval * 1000), "kib_per_conn": round((rss1 - rss0) / n, 3),
        "rss0_kib": rss0, "rss1_kib": rss1, "threads": len(os.listdir("/proc/self/task")),
        "cpu_pct": round((c1 - c0) / (w1 - w0) * 100, 2), "rtt_p50_us": pct(0.5),
        "rtt_p99_us": pct(0.99), "pongs": st["pongs"], "false_misses": st["misses"],
        "lost": st["lost"], "connect_s": round(connect_s, 2)}), flush=True)
    os._exit(0)


asyncio.run(main())
