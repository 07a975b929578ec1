#!/usr/bin/env bash
# hbws benchmark harness. `benches/run.sh [--quick]`
# Builds release, installs the peers if absent (pip websockets, npm ws, apt libwebsockets-dev),
# runs every scenario against the reference server (bench-server, a separate lean process),
# writes BENCHMARKS.md (+ SVG plots in benches/plots/) and prints one JSON object as its last line.
set -euo pipefail
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
OUT=$HERE/results
T=$HERE/target/release
export CARGO_TARGET_DIR=$HERE/target
rm -rf "$OUT"; mkdir -p "$OUT"
START=$(date +%s)
log() { echo "[run.sh +$(( $(date +%s) - START ))s] $*" >&2; }

if [[ $QUICK == 1 ]]; then
  # Sized to finish in under 3 minutes on a fresh 2-core machine, build included.
  SCALE_N="5000"; PEER_N=1000; K=2000; KLAT=10000; LAT_ROUNDS=5; TRIALS=3; STORM_N=2000; IDLE_S=3
else
  SCALE_N="1000 5000 15000"; PEER_N=5000; K=10000; KLAT=40000; LAT_ROUNDS=11; TRIALS=20; STORM_N=10000; IDLE_S=5
fi
INTERVAL=5000

# ---------------------------------------------------------------- peers
log "peers"
PEER_NOTES=$OUT/peer_notes.txt; : > "$PEER_NOTES"
python3 -c 'import websockets' 2>/dev/null || pip install -q websockets >&2 || echo "python websockets: install failed" >> "$PEER_NOTES"
if ! NODE_PATH=$HERE/node_modules node -e 'require("ws")' 2>/dev/null; then
  npm install --no-save --no-audit --no-fund --prefix "$HERE" ws >&2 || echo "node ws: install failed" >> "$PEER_NOTES"
fi
if ! pkg-config --exists libwebsockets 2>/dev/null; then
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y libwebsockets-dev; } >&2 || echo "libwebsockets-dev: install failed" >> "$PEER_NOTES"
fi

# ---------------------------------------------------------------- build
log "build"
(cd "$HERE" && cargo build --release -q) >&2
if [[ $QUICK == 1 ]]; then
  # --quick: the cdylib cargo built above as this crate's dependency (features unified with the
  # bench's, so within a few KB of the shipped one), to stay inside the time budget.
  SO=$HERE/target/release/deps/libhbws.so
else
  # The shipped cdylib, built from the root manifest into our own target dir (the root is not edited).
  CARGO_TARGET_DIR=$HERE/target/lib cargo build --release -q --lib --manifest-path "$ROOT/Cargo.toml" >&2
  SO=$HERE/target/lib/release/libhbws.so
fi
LWS=0
if pkg-config --exists libwebsockets 2>/dev/null; then
  gcc -O2 -Wall -Wextra -o "$T/lws_echo" "$HERE/c/lws_echo.c" $(pkg-config --cflags --libs libwebsockets) >&2 && LWS=1
fi

SPIN=()
SRV_PID=""
cleanup() {
  [[ -n "$SRV_PID" ]] && kill "$SRV_PID" 2>/dev/null || true
  for p in "${SPIN[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
srv_start() { # bench-server as a separate process; sets SRV_PID and URL
  "$T/bench-server" --port 0 --detached "$@" > "$OUT/srv.port" 2>/dev/null &
  SRV_PID=$!
  for _ in $(seq 100); do grep -q PORT "$OUT/srv.port" 2>/dev/null && break; sleep 0.02; done
  URL="ws://127.0.0.1:$(awk '/PORT/{print $2}' "$OUT/srv.port")/"
}
srv_stop() { kill "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=""; }
timed() { local name=$1; shift; local t=$(date +%s.%N); "$@"; echo "$name $(echo "$(date +%s.%N) - $t" | bc)" >> "$OUT/timings.txt"; }

# ---------------------------------------------------------------- 1. scale
scale_one() { # client N
  srv_start
  case $1 in
    hbws|raw) "$T/scale" "$1" "$URL" "$2" "$INTERVAL" > "$OUT/scale_$1_$2.json" || echo '{}' > "$OUT/scale_$1_$2.json" ;;
    python) timeout 300 python3 "$HERE/peers/py_scale.py" "$URL" "$2" "$INTERVAL" > "$OUT/scale_python_$2.json" || echo '{}' > "$OUT/scale_python_$2.json" ;;
    node) NODE_PATH=$HERE/node_modules timeout 300 node "$HERE/peers/node_scale.js" "$URL" "$2" "$INTERVAL" > "$OUT/scale_node_$2.json" || echo '{}' > "$OUT/scale_node_$2.json" ;;
  esac
  srv_stop
}
scale_all() {
  for n in $SCALE_N; do log "scale hbws $n"; scale_one hbws "$n"; log "scale raw $n"; scale_one raw "$n"; done
  log "scale python/node $PEER_N"; scale_one python "$PEER_N"; scale_one node "$PEER_N"
}
timed scale scale_all

# ---------------------------------------------------------------- 5. footprint
footprint() {
  log "footprint"
  strip -o "$OUT/libhbws.stripped.so" "$SO"
  stat -c %s "$OUT/libhbws.stripped.so" > "$OUT/so_bytes.txt"
  stat -c %s "$SO" > "$OUT/so_bytes_unstripped.txt"
  for c in hbws raw; do
    srv_start
    "$T/scale" "$c" "$URL" 1000 30000 --idle "$IDLE_S" > "$OUT/idle_$c.json" || echo '{}' > "$OUT/idle_$c.json"
    srv_stop
  done
}
timed footprint footprint

# ---------------------------------------------------------------- 2. per-message cost
cg_count() { # outfile -> total instructions
  awk '/^(summary|totals):/{print $2; exit}' "$1"
}
echo_cmd() { # client k [--lat]
  case $1 in
    lws) $PIN_CLIENT "$T/lws_echo" "${URL_PORT}" "$2" ${3:-} ;;
    lws-host) $PIN_CLIENT "$T/lws_echo" "${URL_PORT}" "$2" ${3:-} --host ;;
    *) $PIN_CLIENT "$T/echo" "$1" "$URL" "$2" ${3:-} ;;
  esac
}
# System calls per echo: every thread of the client process, counted by the kernel's
# raw_syscalls:sys_enter tracepoint (perf stat), which does not slow the threads down; strace -f
# would, and on the host-thread style a slower runtime thread changes how often the host finds
# it awake (and so the count). strace -f -c only where perf cannot count.
SC_EVENTS=raw_syscalls:sys_enter
for s in futex write read epoll_wait epoll_pwait sendto recvfrom poll ppoll; do SC_EVENTS+=",syscalls:sys_enter_$s"; done
SC_TOOL=none
if command -v perf >/dev/null && perf stat -x, -e "$SC_EVENTS" -o /dev/null true 2>/dev/null; then SC_TOOL=perf
elif command -v strace >/dev/null; then SC_TOOL=strace; fi
sc_count() { # outfile cmd... -> "name=count ..." of the run's system calls
  local f=$1; shift
  case $SC_TOOL in
    perf) perf stat -x, -e "$SC_EVENTS" -o "$f" -- "$@" >/dev/null 2>"$f.log" || true
          awk -F, '$1 ~ /^[0-9]+$/ { n=$3; sub(/.*:(sys_enter_)?/, "", n); printf "%s=%s ", n, $1 }' "$f" ;;
    strace) strace -f -c -o "$f" -- "$@" >/dev/null 2>"$f.log" || true
          awk '$1 ~ /^[0-9.]+$/ && $NF ~ /^[a-z_0-9]+$/ { printf "%s=%s ", ($NF == "total" ? "sys_enter" : $NF), $4 }' "$f" ;;
  esac
}
PIN_CLIENT=""
echo_all() {
  srv_start
  URL_PORT=$(awk '/PORT/{print $2}' "$OUT/srv.port")
  local clients="hbws raw"; [[ $LWS == 1 ]] && clients="hbws raw lws"
  # Host-thread style (the README's quick start): the main thread sends, waits for the echo on a
  # condvar, repeats (see echo.rs / lws_echo.c --host). Counted like the in-callback rows.
  local hclients="hbws-host raw-host"; [[ $LWS == 1 ]] && hclients="hbws-host raw-host lws-host"
  : > "$OUT/callgrind.txt"
  for mode in plain vec; do
    local cs=$clients; [[ $mode == plain ]] && cs="$clients $hclients"
    for c in $cs; do
      for k in 0 "$K"; do
        log "callgrind $mode $c k=$k"
        local f=$OUT/cg.$mode.$c.$k
        local cmd
        case $c in
          lws) cmd=("$T/lws_echo" "$URL_PORT" "$k") ;;
          lws-host) cmd=("$T/lws_echo" "$URL_PORT" "$k" --host) ;;
          *) cmd=("$T/echo" "$c" "$URL" "$k") ;;
        esac
        local envs=()
        [[ $mode == vec ]] && envs=(GLIBC_TUNABLES=glibc.cpu.x86_rep_stosb_threshold=0x7fffffffffff:glibc.cpu.x86_rep_movsb_threshold=0x7fffffffffff)
        env "${envs[@]}" valgrind --tool=callgrind --callgrind-out-file="$f" "${cmd[@]}" >/dev/null 2>"$f.log" || true
        echo "$mode $c $k $(cg_count "$f" 2>/dev/null || echo 0)" >> "$OUT/callgrind.txt"
      done
      if [[ $c == hbws-host || $c == raw-host ]]; then
        # Host-thread style on tokio: whether a send finds the runtime thread parked (eventfd
        # write, a whole extra turn) or still finishing its turn (no wake-up at all) is a race that
        # valgrind's serialized threads decide differently from run to run. Two more runs (one with
        # valgrind's other thread scheduler) give report.py points at different mixes; it fits
        # cost = awake + extra × (wake-ups per echo) and reports both ends.
        for v in fair 2; do
          local f=$OUT/cg.$mode.$c.$v.$K fs=no
          [[ $v == fair ]] && fs=yes
          log "callgrind $mode $c k=$K ($v)"
          valgrind --tool=callgrind --fair-sched=$fs --callgrind-out-file="$f" "${cmd[@]}" >/dev/null 2>"$f.log" || true
          echo "$mode $c.$v $K $(cg_count "$f" 2>/dev/null || echo 0)" >> "$OUT/callgrind.txt"
        done
      fi
    done
  done
  log "system calls per echo ($SC_TOOL)"
  : > "$OUT/syscalls.txt"
  for c in $clients $hclients; do
    for k in 0 "$KLAT"; do
      local cmd
      case $c in
        lws) cmd=("$T/lws_echo" "$URL_PORT" "$k") ;;
        lws-host) cmd=("$T/lws_echo" "$URL_PORT" "$k" --host) ;;
        *) cmd=("$T/echo" "$c" "$URL" "$k") ;;
      esac
      echo "$SC_TOOL $c $k $(sc_count "$OUT/sc.$c.$k" "${cmd[@]}")" >> "$OUT/syscalls.txt"
    done
  done
  log "latency with two nice -n 19 spinners"
  # Pinned: server on CPU 0, client on CPU 1, one spinner on each. Unpinned, a round trip takes
  # ~20 or ~45 µs on this VM depending on whether the scheduler puts client and server on one
  # CPU or two, which it decides per run; pinned, every run and every client pays the same
  # cross-CPU wake-up, so their difference is theirs.
  local pin=0
  if command -v taskset >/dev/null && (( $(nproc) >= 2 )); then pin=1; fi
  if (( pin )); then taskset -a -p -c 0 "$SRV_PID" >/dev/null; PIN_CLIENT="taskset -c 1"; fi
  for i in 0 1; do
    if (( pin )); then taskset -c "$i" nice -n 19 bash -c 'while :; do :; done' & else nice -n 19 bash -c 'while :; do :; done' & fi
    SPIN+=($!)
  done
  # Rounds interleave the clients (hbws, raw, lws, hbws, ...), so drift in the VM's speed during
  # the run falls on all of them alike; the report takes each client's median round.
  for r in $(seq "$LAT_ROUNDS"); do
    for c in $clients $hclients; do echo_cmd "$c" "$KLAT" --lat > "$OUT/lat_${c}_$r.json" || echo '{}' > "$OUT/lat_${c}_$r.json"; done
  done
  for p in "${SPIN[@]}"; do kill "$p" 2>/dev/null || true; done; SPIN=(); PIN_CLIENT=""
  srv_stop
}
timed echo echo_all

# ---------------------------------------------------------------- 3. detection and reset
log "detect ($TRIALS trials)"
timed detect bash -c "'$T/detect' $TRIALS > '$OUT/detect.json' || echo '{}' > '$OUT/detect.json'"

# ---------------------------------------------------------------- 4. reconnect storm
log "storm $STORM_N jitter on"
timed storm_jitter bash -c "'$T/storm' $STORM_N 1 2000 > '$OUT/storm_jitter.json' || echo '{}' > '$OUT/storm_jitter.json'"
log "storm $STORM_N jitter off"
timed storm_nojitter bash -c "'$T/storm' $STORM_N 0 2000 > '$OUT/storm_nojitter.json' || echo '{}' > '$OUT/storm_nojitter.json'"

# ---------------------------------------------------------------- report
ELAPSED=$(( $(date +%s) - START ))
log "report (${ELAPSED}s of measurement)"
python3 "$HERE/report.py" "$OUT" "$QUICK" "$ELAPSED" "$ROOT/BENCHMARKS.md" "$HERE/plots"
