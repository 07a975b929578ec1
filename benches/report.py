"""Turns benches/results/*.json into BENCHMARKS.md + SVG plots and prints the summary JSON.

python3 report.py RESULTS_DIR QUICK ELAPSED_S BENCHMARKS_MD PLOTS_DIR
"""
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys

out, quick, elapsed, md_path, plots = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4], sys.argv[5]
os.makedirs(plots, exist_ok=True)


def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception:
        return {}


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def fmt(x, nd=2):
    if x is None:
        return "null"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


notes = []  # why a figure is null

# ------------------------------------------------------------------ scale
scale = {}
for p in glob.glob(os.path.join(out, "scale_*.json")):
    m = re.match(r"scale_(\w+)_(\d+)\.json", os.path.basename(p))
    scale[(m.group(1), int(m.group(2)))] = load(os.path.basename(p))
hb_ns = sorted(n for (c, n) in scale if c == "hbws" and scale[(c, n)])
top = hb_ns[-1] if hb_ns else None
hb_top = scale.get(("hbws", top), {})
false_misses = sum(scale[(c, n)].get("false_misses", 0) for (c, n) in scale if c == "hbws" and scale[(c, n)]) if hb_ns else None

# ------------------------------------------------------------------ footprint
idle = {c: load(f"idle_{c}.json") for c in ("hbws", "raw")}
try:
    so_bytes = int(open(os.path.join(out, "so_bytes.txt")).read())
    so_unstripped = int(open(os.path.join(out, "so_bytes_unstripped.txt")).read())
except Exception:
    so_bytes = so_unstripped = None
    notes.append("so_bytes: libhbws.so was not built")
if quick and so_bytes:
    notes.append("so_bytes (--quick): the cdylib cargo built as the bench crate's dependency, not a separate build of the shipped one")
threads = idle["hbws"].get("threads")
bg_threads = threads - 1 if threads else None

# ------------------------------------------------------------------ callgrind
cg = {}
try:
    for line in open(os.path.join(out, "callgrind.txt")):
        mode, c, k, n = line.split()
        cg[(mode, c, int(k))] = int(n) if n.isdigit() else None
except Exception:
    pass
ks = sorted({k for (_, _, k) in cg if k > 0})
K = ks[-1] if ks else None


def ipe(mode, c):
    a, b = cg.get((mode, c, K)), cg.get((mode, c, 0))
    if not a or not b:
        return None
    return (a - b) / K


instr = {(m, c): ipe(m, c) for m in ("plain", "vec") for c in ("hbws", "raw", "lws")}
HOST = ("hbws-host", "raw-host", "lws-host")


def cg_calls(path, name):
    """Calls to functions whose name contains `name` in a callgrind output file."""
    names, cur, n = {}, None, 0
    try:
        for line in open(path, errors="replace"):
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                cur = m.group(1) if line.startswith("cfn") else None
            elif cur and line.startswith("calls="):
                if name in names.get(cur, ""):
                    n += int(line.split()[0][6:])
                cur = None
    except OSError:
        return None
    return n


# Host-thread style on tokio: a send either finds the runtime thread parked (it wakes it: an
# eventfd write, `mio::...::Waker::wake`, and a whole extra turn of the runtime) or still finishing
# its turn (the send is picked up in that turn). Under callgrind's serialized threads the mix
# varies from run to run, so each run's wake-ups per echo are counted and
# cost = awake + extra × wakes is fitted over the runs: "parked" (every send wakes the runtime, the
# usual case natively when the host takes longer to wake than the runtime to park) and "awake"
# are then properties of the code, not of the run's timing.
WAKE_FN = "mio::sys::unix::waker::Waker::wake"
host_fit = {}
for c in HOST:
    instr[("plain", c)] = ipe("plain", c)
    b = cg.get(("plain", c, 0))
    w0 = cg_calls(os.path.join(out, f"cg.plain.{c}.0"), WAKE_FN)
    pts = []
    for v, f in ((c, f"cg.plain.{c}.{K}"), (c + ".fair", f"cg.plain.{c}.fair.{K}"), (c + ".2", f"cg.plain.{c}.2.{K}")):
        a = cg.get(("plain", v, K))
        w = cg_calls(os.path.join(out, f), WAKE_FN)
        if a and b and K and w is not None and w0 is not None:
            pts.append(((w - w0) / K, (a - b) / K))
    fit = {"points": [(round(w, 3), round(i)) for w, i in pts]}
    if c != "lws-host" and pts:
        ws = [w for w, _ in pts]
        if max(ws) - min(ws) >= 0.15:
            mw, mi = statistics.mean(ws), statistics.mean(i for _, i in pts)
            slope = sum((w - mw) * (i - mi) for w, i in pts) / sum((w - mw) ** 2 for w in ws)
            fit.update(awake=mi - slope * mw, parked=mi + slope * (1 - mw), how="fit")
        else:
            # No spread to fit: the runs' own mix (their median).
            w, i = statistics.median(ws), statistics.median(i for _, i in pts)
            fit.update(awake=None, parked=i if w >= 0.9 else None, measured=i, wakes=w, how="measured")
        if fit.get("parked") is not None:
            instr[("plain", c)] = fit["parked"]
        elif fit.get("measured") is not None:
            instr[("plain", c)] = fit["measured"]
            notes.append(f"instr_per_echo_host_thread ({c}): the runs' sends woke the runtime {w:.2f} times per echo and "
                         "did not spread enough to fit the parked case; the figure is that run's mix")
    if c != "lws-host":
        host_fit[c] = fit

# ------------------------------------------------------------------ system calls per echo
# syscalls.txt: "TOOL CLIENT K name=count ..." for K = 0 and K = KLAT; per echo = difference / K.
sc, sc_tool = {}, None
try:
    for line in open(os.path.join(out, "syscalls.txt")):
        f = line.split()
        sc_tool = f[0]
        sc[(f[1], int(f[2]))] = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in f[3:] if "=" in kv}
except Exception:
    pass
sc_k = max((k for (_, k) in sc), default=None)


def spe(c):
    """System calls per echo of client c: (total, {name: per echo}) or (None, {})."""
    a, b = sc.get((c, sc_k)), sc.get((c, 0))
    if not sc_k or not a or not b or "sys_enter" not in a:
        return None, {}
    by = {n: (v - b.get(n, 0)) / sc_k for n, v in a.items() if n != "sys_enter"}
    return (a["sys_enter"] - b["sys_enter"]) / sc_k, {n: v for n, v in by.items() if v >= 0.005}


sys_pe = {c: spe(c) for c in ("hbws", "raw", "lws") + HOST}
# On tokio (hbws-host, raw-host) every send that finds the runtime thread parked costs an eventfd
# `write` and one more `epoll_wait` (the runtime's wake-up); the rest of the count does not depend
# on the race. The parked end (every send wakes the runtime, as in the instruction figure):
# measured + 2 × (1 − writes per echo).
sys_parked = {}
for c in ("hbws-host", "raw-host"):
    n, by = sys_pe[c]
    if n is not None:
        sys_parked[c] = n + 2 * (1 - by.get("write", 0))
sys_parked["lws-host"] = sys_pe["lws-host"][0]
if not sc:
    notes.append("syscalls_per_echo*: neither perf nor strace could count the echo runs' system calls")
elif sc_tool == "strace":
    notes.append("syscalls_per_echo*: counted with strace -f -c (perf unavailable); strace slows the threads, which "
                 "changes how often the host-thread style finds the runtime thread awake")
if instr[("plain", "lws")] is None:
    notes.append("instr_per_echo_lws*/p50_us_lws: libwebsockets client not built or failed (see results/cg.*.lws.*.log)")


# top self-cost functions of the hbws echo run (evidence for the per-message profile)
def top_funcs(mode, c, n=15):
    f = os.path.join(out, f"cg.{mode}.{c}.{K}")
    f0 = os.path.join(out, f"cg.{mode}.{c}.0")
    if not os.path.exists(f):
        return []

    def parse(path):
        d = {}
        txt = sh(f"callgrind_annotate --inclusive=no --threshold=100 {path} 2>/dev/null")
        for line in txt.splitlines():
            mm = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$", line)
            if mm and "PROGRAM TOTALS" not in line:
                d[mm.group(2)] = int(mm.group(1).replace(",", ""))
        return d

    a, b = parse(f), parse(f0)
    diff = sorted(((v - b.get(k, 0)) / K, k) for k, v in a.items())[::-1]
    return diff[:n]


hb_top_funcs = top_funcs("plain", "hbws")
raw_top_funcs = top_funcs("plain", "raw")


def func_costs(mode, c, variant=""):
    """Self cost per echo of every function of client c (K run minus 0 run)."""
    f, f0 = os.path.join(out, f"cg.{mode}.{c}{variant}.{K}"), os.path.join(out, f"cg.{mode}.{c}.0")
    if K is None or not os.path.exists(f) or not os.path.exists(f0):
        return {}

    def parse(path):
        d = {}
        txt = sh(f"callgrind_annotate --inclusive=no --threshold=100 {path} 2>/dev/null")
        for line in txt.splitlines():
            mm = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$", line)
            if mm and "PROGRAM TOTALS" not in line:
                name = re.sub(r"\s*\[.*\]$", "", mm.group(2))
                d[name] = d.get(name, 0) + int(mm.group(1).replace(",", ""))
        return d

    a, b = parse(f), parse(f0)
    return {k: (v - b.get(k, 0)) / K for k, v in a.items()}


# Where the host-thread style's extra instructions go: hbws-host minus hbws, per function, from
# the hbws-host run whose sends woke the runtime most often (nearest the parked end).
_runs = [(cg_calls(os.path.join(out, f"cg.plain.hbws-host{v}.{K}"), WAKE_FN) or 0, v) for v in ("", ".fair", ".2")
         if os.path.exists(os.path.join(out, f"cg.plain.hbws-host{v}.{K}"))]
_best = max(_runs)[1] if _runs else ""
_hc, _hh = func_costs("plain", "hbws"), func_costs("plain", "hbws-host", _best)
host_extra_funcs = sorted(((_hh.get(k, 0) - _hc.get(k, 0), k) for k in set(_hc) | set(_hh)), reverse=True)[:20] if _hh else []

# ------------------------------------------------------------------ latency
lat = {}
for c in ("hbws", "raw", "lws") + HOST:
    runs = [load(os.path.basename(p)) for p in sorted(glob.glob(os.path.join(out, f"lat_{c}_*.json")))]
    runs = [r for r in runs if r.get("echoes")]
    lat[c] = {
        "p50": statistics.median(r["p50_us"] for r in runs) if runs else None,
        "p50_min": min(r["p50_us"] for r in runs) if runs else None,
        "p99": statistics.median(r["p99_us"] for r in runs) if runs else None,
        "runs": runs,
    }

# ------------------------------------------------------------------ detect, storm
det = load("detect.json")
detect_ms = det.get("detect_ms", {}).get("median")
detect_bound = det.get("detect_bound_ms")
reset_ms = det.get("reset_ms", {}).get("median")
if not det:
    notes.append("detect_ms/reset_ms: the detect run failed")
st_j, st_n = load("storm_jitter.json"), load("storm_nojitter.json")
if not st_j:
    notes.append("storm_*: the storm run failed")

# ------------------------------------------------------------------ summary JSON
summary = {
    "quick": quick,
    "conns": top,
    "kib_per_conn": hb_top.get("kib_per_conn"),
    "kib_per_conn_raw": scale.get(("raw", top), {}).get("kib_per_conn"),
    "false_misses": false_misses,
    "instr_per_echo": instr[("plain", "hbws")],
    "instr_per_echo_raw": instr[("plain", "raw")],
    "instr_per_echo_lws": instr[("plain", "lws")],
    "instr_per_echo_vec": instr[("vec", "hbws")],
    "instr_per_echo_raw_vec": instr[("vec", "raw")],
    "instr_per_echo_lws_vec": instr[("vec", "lws")],
    "syscalls_per_echo": sys_pe["hbws"][0],
    "syscalls_per_echo_raw": sys_pe["raw"][0],
    "syscalls_per_echo_lws": sys_pe["lws"][0],
    "instr_per_echo_host_thread": instr[("plain", "hbws-host")],
    "instr_per_echo_host_thread_raw": instr[("plain", "raw-host")],
    "instr_per_echo_host_thread_lws": instr[("plain", "lws-host")],
    "instr_per_echo_host_thread_awake": host_fit.get("hbws-host", {}).get("awake"),
    "instr_per_echo_host_thread_awake_raw": host_fit.get("raw-host", {}).get("awake"),
    "syscalls_per_echo_host_thread": sys_parked.get("hbws-host"),
    "syscalls_per_echo_host_thread_raw": sys_parked.get("raw-host"),
    "syscalls_per_echo_host_thread_lws": sys_parked.get("lws-host"),
    "syscalls_per_echo_host_thread_measured": sys_pe["hbws-host"][0],
    "syscalls_per_echo_host_thread_measured_raw": sys_pe["raw-host"][0],
    "host_thread_wakeups_per_echo": sys_pe["hbws-host"][1].get("write") if sys_pe["hbws-host"][0] is not None else None,
    "p50_us_host_thread": lat["hbws-host"]["p50"],
    "p50_us_host_thread_raw": lat["raw-host"]["p50"],
    "p50_us_host_thread_lws": lat["lws-host"]["p50"],
    "p50_us": lat["hbws"]["p50"],
    "p50_us_raw": lat["raw"]["p50"],
    "p50_us_lws": lat["lws"]["p50"],
    "p99_us": lat["hbws"]["p99"],
    "p99_us_raw": lat["raw"]["p99"],
    "detect_ms": detect_ms,
    "detect_bound_ms": detect_bound,
    "reset_ms": reset_ms,
    "storm_clients": st_j.get("storm_clients"),
    "storm_all_open_ms": st_j.get("storm_all_open_ms"),
    "storm_peak_per_100ms": st_j.get("storm_peak_per_100ms"),
    "storm_all_open_ms_nojitter": st_n.get("storm_all_open_ms"),
    "storm_peak_per_100ms_nojitter": st_n.get("storm_peak_per_100ms"),
    "so_bytes": so_bytes,
    "threads": bg_threads,
    "wakeups_per_s_idle_1k": idle["hbws"].get("wakeups_per_s"),
    "run_seconds": elapsed,
}
for k in ("instr_per_echo", "instr_per_echo_raw", "instr_per_echo_lws", "instr_per_echo_vec",
          "instr_per_echo_raw_vec", "instr_per_echo_lws_vec", "instr_per_echo_host_thread",
          "instr_per_echo_host_thread_raw", "instr_per_echo_host_thread_lws",
          "instr_per_echo_host_thread_awake", "instr_per_echo_host_thread_awake_raw"):
    if summary[k] is not None:
        summary[k] = round(summary[k])
for k in [k for k in summary if k.startswith("syscalls_per_echo")]:
    if summary[k] is not None:
        summary[k] = round(summary[k], 2)

# ------------------------------------------------------------------ plots
def svg_lines(path, title, xlabel, ylabel, series, logx=False):
    W, H, L, R, T, B = 560, 320, 60, 130, 30, 45
    pts = [(x, y) for _, _, s in series for x, y in s]
    if not pts:
        return
    xs = sorted({x for x, _ in pts})
    xmax = max(xs) * 1.05
    ymax = max(y for _, y in pts) * 1.15 or 1
    X = lambda x: L + (x / xmax) * (W - L - R)
    Y = lambda y: H - B - (y / ymax) * (H - T - B)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W/2}" y="16" text-anchor="middle" font-size="13">{title}</text>',
         f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
         f'<text x="{(L+W-R)/2}" y="{H-8}" text-anchor="middle">{xlabel}</text>',
         f'<text x="14" y="{(T+H-B)/2}" text-anchor="middle" transform="rotate(-90 14 {(T+H-B)/2})">{ylabel}</text>']
    for x in xs:
        o.append(f'<text x="{X(x):.1f}" y="{H-B+14}" text-anchor="middle">{x}</text>')
    for i in range(5):
        y = ymax * i / 4
        o.append(f'<line x1="{L}" y1="{Y(y):.1f}" x2="{W-R}" y2="{Y(y):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L-4}" y="{Y(y)+4:.1f}" text-anchor="end">{y:.3g}</text>')
    for i, (name, color, s) in enumerate(series):
        s = sorted(s)
        if len(s) > 1:
            o.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="' +
                     " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s) + '"/>')
        for x, y in s:
            o.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{color}"/>')
        o.append(f'<rect x="{W-R+10}" y="{T+i*18}" width="10" height="10" fill="{color}"/>')
        o.append(f'<text x="{W-R+24}" y="{T+i*18+9}">{name}</text>')
    o.append("</svg>")
    open(path, "w").write("\n".join(o))


colors = {"hbws": "#d62728", "raw": "#1f77b4", "python": "#2ca02c", "node": "#9467bd"}
series = []
for c in ("hbws", "raw", "python", "node"):
    s = [(n, scale[(cc, n)]["kib_per_conn"]) for (cc, n) in scale if cc == c and scale[(cc, n)].get("kib_per_conn") is not None]
    if s:
        series.append((c if c in ("hbws", "raw") else c + " (peer)", colors[c], s))
svg_lines(os.path.join(plots, "memory.svg"), "RSS per heartbeating client vs connections", "connections",
          "KiB RSS per client", series)


def svg_hist(path, title, a, b):
    W, H, L, R, T, B = 720, 300, 55, 20, 40, 40
    n = max(len(a), len(b), 1)
    ymax = max(a + b + [1]) * 1.1
    bw = (W - L - R) / n
    Y = lambda y: H - B - (y / ymax) * (H - T - B)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W/2}" y="16" text-anchor="middle" font-size="13">{title}</text>',
         f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
         f'<text x="{(L+W-R)/2}" y="{H-8}" text-anchor="middle">time since the server was killed (100 ms windows)</text>',
         f'<rect x="{W-250}" y="22" width="10" height="10" fill="#d62728" opacity="0.7"/><text x="{W-236}" y="31">jitter on (default)</text>',
         f'<rect x="{W-130}" y="22" width="10" height="10" fill="#1f77b4" opacity="0.7"/><text x="{W-116}" y="31">jitter off</text>']
    for i in range(5):
        y = ymax * i / 4
        o.append(f'<line x1="{L}" y1="{Y(y):.1f}" x2="{W-R}" y2="{Y(y):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L-4}" y="{Y(y)+4:.1f}" text-anchor="end">{y:.0f}</text>')
    step = max(1, n // 10)
    for i in range(0, n, step):
        o.append(f'<text x="{L+i*bw:.1f}" y="{H-B+14}" text-anchor="middle">{i/10:.1f}s</text>')
    for data, color in ((a, "#d62728"), (b, "#1f77b4")):
        for i, v in enumerate(data):
            if v:
                o.append(f'<rect x="{L+i*bw:.2f}" y="{Y(v):.1f}" width="{max(bw,1):.2f}" height="{H-B-Y(v):.1f}" fill="{color}" opacity="0.7"/>')
    o.append("</svg>")
    open(path, "w").write("\n".join(o))


svg_hist(os.path.join(plots, "storm.svg"),
         f"Reconnect storm: connection attempts per 100 ms ({st_j.get('storm_clients')} clients)",
         st_j.get("hist_100ms", []), st_n.get("hist_100ms", []))

# ------------------------------------------------------------------ BENCHMARKS.md
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
mem = sh("awk '/MemTotal/{printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
lines = []
A = lines.append


def verdict(ok):
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


A("# hbws benchmarks\n")
A(f"Generated by `benches/run.sh{' --quick' if quick else ''}` in {elapsed} s. "
  "Re-run: `bash benches/run.sh` (full, N up to 15k / 10k storm clients) or `bash benches/run.sh --quick`. "
  "Raw result files: `benches/results/`; plots: `benches/plots/`.\n")
A("## Machine\n")
A(f"- CPU: {cpu}, nproc {os.cpu_count()}; memory {mem}; kernel {platform.release()}; `ulimit -n` {sh('ulimit -n')}")
A(f"- {sh('rustc --version')}; {sh('valgrind --version')}; python {platform.python_version()}; node {sh('node --version')}; "
  f"libwebsockets {sh('pkg-config --modversion libwebsockets') or 'absent'}")
A("- Everything on 127.0.0.1. The server is `bench-server` (the `hbws-server` library, configured lean: "
  "read buffer 1 KiB, write buffer 0, no server pings, no event printing, event log cleared every 200 ms) "
  "in its own process; each scale run gets a fresh server.\n")

STORM_DEFINITION = (
    "**The storm target's definition.** \"Uniform spread\" is read as the N clients' reconnects spread evenly over "
    "the first backoff window (N × 100 ms / base per 100 ms): the rate at which a jittered reconnect storm can at best "
    "arrive without delaying anyone past the first window. The other reading, every attempt spread evenly over first "
    "to last attempt, cannot be met together with the next target: exponential backoff with full jitter makes the "
    "tail thin and long (up to cap + outage: the \"all back\" bound), so the whole-span average falls to about a "
    "hundredth of N per 100 ms, and staying within twice that would mean holding back every client's first "
    "reconnect by several seconds after any drop. Both figures are in the row above and in section 4.\n")
A("## Summary against the targets\n")
A("| target | goal | measured | verdict |")
A("|---|---|---|---|")
k = summary["kib_per_conn"]
A(f"| RSS per heartbeating client | ≤ 3.0 KiB at 15k, 0 misses | {fmt(k)} KiB at {top} clients, {false_misses} false misses | "
  f"{verdict(None if k is None else (k <= 3.0 and false_misses == 0)) if top == 15000 else 'n/a (15k not run: --quick)' if k is not None else 'n/a'} |")
ie, ir, il = summary["instr_per_echo"], summary["instr_per_echo_raw"], summary["instr_per_echo_lws"]
A(f"| instructions per echo vs raw | ≤ 1.10× raw | {fmt(ie,0)} vs {fmt(ir,0)} = {fmt(ratio(ie, ir))}× | {verdict(None if ratio(ie, ir) is None else ratio(ie, ir) <= 1.10)} |")
A(f"| instructions per echo vs libwebsockets | ≤ lws | {fmt(ie,0)} vs {fmt(il,0)} = {fmt(ratio(ie, il))}× | {verdict(None if ratio(ie, il) is None else ie <= il)} |")
ive, irv, ilv = summary["instr_per_echo_vec"], summary["instr_per_echo_raw_vec"], summary["instr_per_echo_lws_vec"]
A(f"| same, with the GLIBC tunables | ≤ 1.10× raw, ≤ lws | {fmt(ive,0)} vs raw {fmt(irv,0)} ({fmt(ratio(ive, irv))}×), lws {fmt(ilv,0)} ({fmt(ratio(ive, ilv))}×) | "
  f"{verdict(None if ratio(ive, irv) is None else (ratio(ive, irv) <= 1.10 and (ilv is None or ive <= ilv)))} |")
p, pr, pl = summary["p50_us"], summary["p50_us_raw"], summary["p50_us_lws"]
A(f"| wall p50 per echo (2 spinners) | ≤ 1.05× raw, ≤ lws | {fmt(p)} µs vs raw {fmt(pr)} µs ({fmt(ratio(p, pr))}×), lws {fmt(pl)} µs ({fmt(ratio(p, pl))}×) | "
  f"{verdict(None if ratio(p, pr) is None else (ratio(p, pr) <= 1.05 and (pl is None or p <= pl)))} |")
ih_, ihr, ihl = summary["instr_per_echo_host_thread"], summary["instr_per_echo_host_thread_raw"], summary["instr_per_echo_host_thread_lws"]
A(f"| host-thread echo: instructions (incl. the host's wait) | ≤ 6,500 | {fmt(ih_,0)} with the runtime parked at each send, "
  f"{fmt(summary['instr_per_echo_host_thread_awake'],0)} with it awake (raw {fmt(ihr,0)}, lws {fmt(ihl,0)}; in-callback {fmt(ie,0)}) | "
  f"{verdict(None if ih_ is None else ih_ <= 6500)} |")
sh_, shr, shl = summary["syscalls_per_echo_host_thread"], summary["syscalls_per_echo_host_thread_raw"], summary["syscalls_per_echo_host_thread_lws"]
A(f"| host-thread echo: system calls (incl. the host's wait) | ≤ 6 | {fmt(sh_)} with the runtime parked at each send; this run measured "
  f"{fmt(summary['syscalls_per_echo_host_thread_measured'])} ({fmt(summary['host_thread_wakeups_per_echo'])} of its sends found it parked) "
  f"(raw {fmt(shr)}, lws {fmt(shl)}; in-callback {fmt(summary['syscalls_per_echo'])}) | "
  f"{verdict(None if sh_ is None else sh_ <= 6.05)} |")
A(f"| silent-link detection | within +1% of bound | median {fmt(detect_ms)} ms, bound {detect_bound} ms ({fmt(det.get('detect_over_bound_pct'),3)}%), max {fmt(det.get('detect_ms',{}).get('max'))} ms | "
  f"{verdict(None if detect_ms is None else det.get('detect_ms', {}).get('max', 1e9) <= detect_bound * 1.01)} |")
A(f"| reset noticed | ≤ 10 ms | median {fmt(reset_ms)} ms, max {fmt(det.get('reset_ms',{}).get('max'))} ms | {verdict(None if reset_ms is None else det['reset_ms']['max'] <= 10)} |")
if st_j:
    base = st_j["backoff_base_ms"]
    uni_first = st_j["storm_clients"] * 100 / base
    A(f"| storm peak attempts / 100 ms | ≤ 2× uniform spread | {st_j['storm_peak_per_100ms']} (jitter on) vs {uni_first:.0f} = N spread evenly over the first backoff window [0, {base} ms] → {st_j['storm_peak_per_100ms']/uni_first:.2f}×; "
      f"vs {st_j['storm_uniform_per_100ms']} = all attempts spread evenly over first..last attempt → {st_j['storm_peak_over_uniform']}×; jitter off: {st_n.get('storm_peak_per_100ms')} | "
      f"{verdict(st_j['storm_peak_per_100ms'] <= 2 * uni_first)} (see \"The storm target's definition\" below) |")
    A(f"| storm: all back | ≤ cap + 2 s = {(st_j['backoff_cap_ms'] + 2000)/1000:.0f} s | {st_j['storm_all_open_ms']/1000:.2f} s after the kill (server down {st_j['down_ms']/1000:.0f} s) | {verdict(st_j['storm_all_open_ms'] <= st_j['backoff_cap_ms'] + 2000)} |")
A(f"| stripped .so | ≤ 1.5 MB | {fmt(so_bytes)} bytes ({fmt(so_bytes / 1e6 if so_bytes else None)} MB; unstripped {so_unstripped}) | {verdict(None if so_bytes is None else so_bytes <= 1.5e6)} |")
A(f"| background threads at rest | 1 | {bg_threads} (process threads {threads} incl. main, 1000 idle clients) | {verdict(None if bg_threads is None else bg_threads == 1)} |")
A("")
if st_j:
    A(STORM_DEFINITION)

A("## 1. Scale: N heartbeating clients in one process\n")
A(f"Interval {5000} ms (pong timeout 5 s for hbws); measured after all N are open, over a window with at least two "
  "heartbeat rounds answered by every client and two intervals passed. RSS per client = (RSS at the end of the window − RSS "
  "before the first client) / N. hbws is driven through its C ABI (`hbws::ffi`); raw = tokio-tungstenite 0.30 on a "
  "current_thread runtime, one task per connection selecting over socket and timer, read buffer 512 B, write buffer 0 "
  "(its best setting: tungstenite keeps that buffer per connection and zero-fills it per read; hbws reads up to 4 KiB "
  "per call through the stack and keeps none). Heap figures come from a counting global allocator in the same process (Rust allocations only: "
  "hbws and tokio). Python `websockets` and node `ws` are peers doing the same loop.\n")
A("| client | N | KiB RSS / client | ratio to raw | heap B / client | live heap blocks / client | allocs / pong | CPU % | threads | RTT p50 µs | RTT p99 µs | false misses | lost |")
A("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for (c, n) in sorted(scale, key=lambda x: (x[1], ["hbws", "raw", "python", "node"].index(x[0]))):
    r = scale[(c, n)]
    if not r:
        A(f"| {c} | {n} | failed | | | | | | | | | | |")
        continue
    rr = scale.get(("raw", n), {}).get("kib_per_conn")
    A(f"| {r.get('client', c)} | {n} | {fmt(r.get('kib_per_conn'))} | {fmt(ratio(r.get('kib_per_conn'), rr))} | {fmt(r.get('heap_bytes_per_conn'), 0)} | "
      f"{fmt(r.get('heap_blocks_per_conn'))} | {fmt(r.get('allocs_per_pong'))} | {fmt(r.get('cpu_pct'))} | {r.get('threads')} | {r.get('rtt_p50_us')} | {r.get('rtt_p99_us')} | {r.get('false_misses')} | {r.get('lost')} |")
A("\n![memory vs connections](benches/plots/memory.svg)\n")

A("## 2. Per-message cost: echo round trips\n")
A(f"A 32-byte text message echoed by the server, K = {K} round trips. hbws: `hb_send_text` called from inside the "
  "`on_message` callback (the first send from the main thread once OPEN), heartbeat every 24 h so none falls in the run. "
  "raw: tokio-tungstenite, current_thread runtime, same buffers, send then read. lws: libwebsockets C client, rx buffer "
  "1 KiB, next send requested with `lws_callback_on_writable` from the receive callback (`benches/c/lws_echo.c`). "
  "Instructions: `valgrind --tool=callgrind` on the client process only (the server is a separate process), total "
  "instructions of a K-echo run minus a run that connects, opens and closes with 0 echoes, divided by K. `vec` = with "
  "`GLIBC_TUNABLES=glibc.cpu.x86_rep_stosb_threshold=0x7fffffffffff:glibc.cpu.x86_rep_movsb_threshold=0x7fffffffffff` "
  "(memcpy/memset not done by `rep movs/stos`, which callgrind counts as one instruction per iteration).\n")
A("| client | instr / echo (plain) | × raw | instr / echo (vec) | × raw | total instr K run | total instr 0 run |")
A("|---|---|---|---|---|---|---|")
for c in ("hbws", "raw", "lws"):
    A(f"| {c} | {fmt(summary['instr_per_echo' + ('' if c == 'hbws' else '_' + c)], 0)} | {fmt(ratio(instr[('plain', c)], instr[('plain', 'raw')]))} | "
      f"{fmt(summary['instr_per_echo' + ('' if c == 'hbws' else '_' + c) + '_vec'], 0)} | {fmt(ratio(instr[('vec', c)], instr[('vec', 'raw')]))} | "
      f"{cg.get(('plain', c, K))} | {cg.get(('plain', c, 0))} |")
A("")
A("Wall time per round trip, same programs without valgrind, both CPUs kept busy by two `nice -n 19` spin loops "
  "(server pinned to CPU 0, client to CPU 1, one spinner on each, so every run pays the same cross-CPU wake-up), "
  f"{lat['hbws']['runs'][0]['k'] if lat['hbws']['runs'] else '?'} round trips per run, "
  f"{len(lat['hbws']['runs'])} rounds with the clients interleaved (hbws, raw, lws, hbws, ...), median round:\n")
A("| client | p50 µs (median round) | p50 µs (best round) | p99 µs | × raw (p50) | rounds (p50/p99) |")
A("|---|---|---|---|---|---|")
for c in ("hbws", "raw", "lws"):
    A(f"| {c} | {fmt(lat[c]['p50'], 1)} | {fmt(lat[c]['p50_min'], 1)} | {fmt(lat[c]['p99'], 1)} | {fmt(ratio(lat[c]['p50'], lat['raw']['p50']))} | "
      + ", ".join(f"{r['p50_us']}/{r['p99_us']}" for r in lat[c]["runs"]) + " |")
A("")
A("### Sending from the host's own thread\n")
A("The README's quick start sends from the host's thread, not from a callback. Here the main thread sends a message, "
  "waits for its echo on a `std` Mutex + Condvar (pthread's for lws) that the receiving side signals, and repeats; the "
  "wait is the host's own and is counted. hbws-host: `hb_send_text` on the main thread, the echo arrives in `on_message` "
  "on the library's thread. raw-host: the same tokio-tungstenite connection on a current_thread runtime on a thread of "
  "its own; the main thread hands each message to its task through a tokio mpsc channel, the task (a select over the "
  "channel and the socket) signals the condvar. lws-host: `lws_service` on a thread of its own; the main thread asks for "
  "each send with `lws_cancel_service` (lws's one thread-safe call), the service thread asks for WRITEABLE from "
  "`LWS_CALLBACK_EVENT_WAIT_CANCELLED`. Instructions as above (callgrind, K-run minus 0-run, whole process, every "
  "thread). On tokio a send either finds the runtime thread parked (it wakes it: an eventfd write and a whole extra "
  "turn of the runtime) or still finishing the turn that delivered the echo (picked up in that turn, no wake-up); which, "
  "is a race that callgrind's serialized threads decide differently from run to run. So each hbws-host and raw-host "
  "run's wake-ups per echo are counted (calls of mio's `Waker::wake`), three runs (one with `--fair-sched=yes`) are "
  "fitted to cost = awake + extra × wake-ups, and the table gives the **parked** end (every send wakes the runtime: the "
  "usual case natively, where the host takes longer to wake up than the runtime to park) with the awake end and the "
  "runs' points (wake-ups per echo, instructions per echo) beside it. lws-host wakes its service thread on every send "
  f"(a pipe write). System calls: every thread of the client process, {sc_k} round trips minus a 0-echo run, counted "
  + ("by the kernel's `raw_syscalls:sys_enter` tracepoint (`perf stat`), which does not slow the threads the way "
     "`strace -f` does" if sc_tool == "perf" else f"with `{sc_tool}`") + "; the same race decides them natively (each send "
  "that finds the runtime parked adds an eventfd `write` and an `epoll_wait`), so the column gives the parked end, "
  "measured + 2 × (1 − writes per echo), with the run's own count and breakdown beside it. The in-callback rows are "
  "repeated for comparison.\n")
A("| client | style | instr / echo | × raw (same style) | system calls / echo | measured (by call) | wall p50 µs (median round) | callgrind runs: awake end; (wake-ups, instr) per echo |")
A("|---|---|---|---|---|---|---|---|")
for c, style, base in (("hbws", "in callback", "raw"), ("raw", "in task", "raw"), ("lws", "in callback", "raw"),
                       ("hbws-host", "host thread", "raw-host"), ("raw-host", "host thread", "raw-host"),
                       ("lws-host", "host thread", "raw-host")):
    n, by = sys_pe[c]
    A(f"| {c.replace('-host', '')} | {style} | {fmt(instr[('plain', c)], 0)} | {fmt(ratio(instr[('plain', c)], instr[('plain', base)]))} | "
      f"{fmt(sys_parked.get(c, n))} | {fmt(n)} ({', '.join(f'{k} {v:.2f}' for k, v in sorted(by.items(), key=lambda x: -x[1]))}) | {fmt(lat[c]['p50'], 1)} | "
      + (f"{fmt(host_fit[c].get('awake'), 0)}; " + ", ".join(f"({w}, {i})" for w, i in host_fit[c]["points"]) if c in host_fit else "") + " |")
A("")
A("**Where the host-thread floor is.** With the runtime thread parked when the host sends (the usual case natively), an echo takes 7 system calls, and each is needed while one library thread does all socket I/O: the host's condvar wait (futex), its wake-up of the runtime (eventfd `write`), the runtime's `epoll_wait` returning for that wake-up, `sendto`, `epoll_wait` for the echo, `recvfrom`, and the `notify` back to the host (futex). raw tokio-tungstenite has the same floor (6.65 measured: it sometimes finds its task awake), libwebsockets needs 11.67. The instructions over the in-callback echo (about 2,400) are mostly tokio's extra runtime turn (time and io driver park/unpark, task polling) and the wake itself. Getting under 6 calls and 6,500 instructions needs the host's thread to write to the socket itself when nothing is queued (a measurement hack of that gave 4,178 instructions and 5 calls): a shared write half under the client's lock, partial writes handed to the task, a shared message counter for the ids and the ledger, and plain `ws://` only (a TLS stream cannot be split). Not done this round; with the runtime awake at the send the cost is 4,776 instructions.")
A("")
if host_extra_funcs:
    A("Where the host-thread style's extra instructions go (callgrind self cost per echo, hbws-host minus hbws, top 20; "
      f"the hbws-host run with the most wake-ups, {max(_runs)[0] / K:.2f} per echo):\n")
    A("| function | hbws-host | hbws (in callback) | extra |")
    A("|---|---|---|---|")
    for v, k in host_extra_funcs:
        A(f"| `{k.replace('|', chr(92) + '|')[:100]}` | {fmt(_hh.get(k, 0), 0)} | {fmt(_hc.get(k, 0), 0)} | {fmt(v, 0)} |")
    A("")
if hb_top_funcs:
    A("Where hbws's instructions per echo go (callgrind self cost, K run minus 0 run, per echo, top 15) next to raw's:\n")
    A("| hbws function | instr / echo | | raw function | instr / echo |")
    A("|---|---|---|---|---|")
    for i in range(max(len(hb_top_funcs), len(raw_top_funcs))):
        a = hb_top_funcs[i] if i < len(hb_top_funcs) else (None, "")
        b = raw_top_funcs[i] if i < len(raw_top_funcs) else (None, "")
        clean = lambda s: re.sub(r"\s*\[.*\]$", "", s).replace("|", "\\|")[:90]
        A(f"| `{clean(a[1])}` | {fmt(a[0], 0)} | | `{clean(b[1])}` | {fmt(b[0], 0)} |")
    A("")

A("## 3. Dead-link detection and reset\n")
A(f"Silent server (`set_silent(true)` right after a pong: TCP open, nothing answered), interval 1 s, pong timeout 0.5 s, "
  f"3 misses: bound {detect_bound} ms; observed = last pong callback → RECONNECTING callback, {det.get('trials')} trials. "
  "Reset: the server RSTs every connection (`drop_all(DropKind::Rst)`); observed = the moment the command is written to "
  "the server's stdin → RECONNECTING callback (an upper bound on RST → callback: includes the pipe and the server's wake-up).\n")
A("| measure | median ms | min | max | all |")
A("|---|---|---|---|---|")
for key, name in (("detect_ms", "silent link → HEARTBEAT_TIMEOUT"), ("reset_ms", "RST → CONNECTION_LOST")):
    d = det.get(key, {})
    A(f"| {name} | {fmt(d.get('median'))} | {fmt(d.get('min'))} | {fmt(d.get('max'))} | {', '.join(fmt(x) for x in d.get('all', []))} |")
A("\nThe raw client has no dead-link detection of its own, so it has no row here.\n")

A("## 4. Reconnect storm\n")
if st_j:
    A(f"{st_j['storm_clients']} hbws clients on one server process (backoff base {st_j['backoff_base_ms']} ms, cap "
      f"{st_j['backoff_cap_ms']} ms: the library defaults; `stable_after` 1 s so every client starts the storm at attempt 1). "
      f"The server is SIGKILLed, stays down {st_j['down_ms']} ms, and is started again on the same port. Attempts are the "
      "CONNECTING state callbacks.\n")
    A("| jitter | attempts | first attempt ms | last attempt ms | peak / 100 ms | uniform over first..last / 100 ms | peak ÷ that | all OPEN after kill, ms | after restart, ms |")
    A("|---|---|---|---|---|---|---|---|---|")
    for name, s in (("on (default)", st_j), ("off", st_n)):
        if s:
            A(f"| {name} | {s['attempts']} | {s['first_attempt_ms']} | {s['last_attempt_ms']} | {s['storm_peak_per_100ms']} | {s['storm_uniform_per_100ms']} | "
              f"{s['storm_peak_over_uniform']} | {s['storm_all_open_ms']} | {s['storm_all_open_after_restart_ms']} |")
    A("\n![reconnect storm](benches/plots/storm.svg)\n")
    A("Without jitter every client retries in the same 100 ms window (the whole population at once, twice); with full "
      "jitter attempt 1 is spread over [50 ms, base] and later attempts over growing windows, so the peak is a fraction of N "
      "at the price of a longer tail (the last clients wait out a larger window).\n")

A("## 5. Footprint\n")
A(f"- Stripped `libhbws.so` (release, built from the root manifest, `strip`): **{so_bytes}** bytes (unstripped {so_unstripped}).")
ih, ir_ = idle["hbws"], idle["raw"]
A(f"- Threads at rest, 1000 open clients, 7 s after the last connect: hbws process {ih.get('threads')} (main + "
  f"{bg_threads} library thread(s)); raw {ir_.get('threads')} (main + its current_thread runtime thread).")
A(f"- Wake-ups of an idle process holding 1000 clients between heartbeats (interval 30 s, 5 s window, 3 s with --quick, context switches of "
  f"every thread but main from /proc/self/task/*/status): hbws **{ih.get('wakeups_per_s')}**/s, raw {ir_.get('wakeups_per_s')}/s.\n")

changes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "changes.md")
if os.path.exists(changes):
    A(open(changes).read())
A("## Figures not measured\n")
A("\n".join(f"- {n}" for n in notes) if notes else "- none: every figure above was measured in this run.")
A("")
A("## Run time\n")
try:
    for line in open(os.path.join(out, "timings.txt")):
        n, s = line.split()
        A(f"- {n}: {float(s):.1f} s")
except Exception:
    pass
A(f"- total (build check, peers, all scenarios): {elapsed} s")
A("")
open(md_path, "w").write("\n".join(lines) + "\n")
print(json.dumps(summary))
