#!/usr/bin/env bash
# Autobahn|Testsuite conformance run for hbws (as a WebSocket client).
#
#   bash conformance/run.sh
#
# 1. Finds Python 2.7 (HBWS_PYTHON2, else pyenv's 2.7.x, else python2.7/python2 on PATH). Without
#    it the run fails (exit 1): `bash .ci/install-tools.sh` installs Debian 11's python2.7.
# 2. Installs the pinned suite (requirements-py27.txt) once into a cache outside the repo:
#    ${HBWS_AUTOBAHN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hbws-autobahn}/py27-<hash>. A Python
#    2.7 without pip (Debian's) first gets the pinned pip/setuptools/wheel of
#    requirements-py27-bootstrap.txt, fetched as wheels by python3's pip, in boot27-<hash>.
# 3. Builds examples/echo.rs (release), starts the fuzzing server on 127.0.0.1:$PORT with every
#    case (12.*/13.*, permessage-deflate, come out UNIMPLEMENTED: hbws does not do compression),
#    runs the echo client through all cases, and updates the reports. The server is always
#    stopped (trap), also on error or Ctrl-C.
# 4. Prints the summary (conformance/summarize.py) and exits 1 if any case FAILED (or a case
#    outside 12.*/13.* is UNIMPLEMENTED, or the run did not complete).
#
# Environment:
#   HBWS_AUTOBAHN_PORT=9001            fuzzing server port (loopback only)
#   HBWS_AUTOBAHN_OUT=/tmp/hbws-autobahn   spec, server log, reports (reports/clients/index.html)
#   HBWS_AUTOBAHN_CASES=FIRST..LAST    run only these case numbers (for debugging)
#   HBWS_AUTOBAHN_TIMEOUT=1200         bound on the echo client's whole run, seconds
#   HBWS_AUTOBAHN_UPDATE_SUMMARY=1     also rewrite conformance/SUMMARY.md
#   HBWS_ECHO_VERBOSE=1                the echo client prints every event
#   HBWS_ECHO_ARGS="..."               extra echo client arguments (--default-heartbeat-texts)
#   CARGO_TARGET_DIR                   honoured as usual
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

PORT="${HBWS_AUTOBAHN_PORT:-9001}"
OUT="${HBWS_AUTOBAHN_OUT:-/tmp/hbws-autobahn}"
AGENT=hbws
RUN_TIMEOUT="${HBWS_AUTOBAHN_TIMEOUT:-1200}"
START_TIME=$(date +%s)

say() { echo "== conformance: $*"; }

# --- 1. Python 2.7 ------------------------------------------------------------------------------
is_py27() { [ -n "$1" ] && [ -x "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' 2>/dev/null; }
PY=""
if [ -n "${HBWS_PYTHON2:-}" ]; then
  is_py27 "$HBWS_PYTHON2" || { echo "FAILED: HBWS_PYTHON2=$HBWS_PYTHON2 is not a Python 2.7"; exit 1; }
  PY="$HBWS_PYTHON2"
fi
if [ -z "$PY" ]; then
  roots=()
  if command -v pyenv >/dev/null 2>&1; then roots+=("$(pyenv root 2>/dev/null || true)"); fi
  roots+=("${PYENV_ROOT:-}" "$HOME/.pyenv")
  for r in "${roots[@]}"; do
    [ -n "$r" ] && [ -d "$r/versions" ] || continue
    for cand in $(ls -d "$r"/versions/2.7* 2>/dev/null | sort -V -r); do
      if is_py27 "$cand/bin/python"; then PY="$cand/bin/python"; break 2; fi
    done
  done
fi
if [ -z "$PY" ]; then
  for name in python2.7 python2; do
    cand="$(command -v "$name" 2>/dev/null || true)"
    if is_py27 "$cand"; then PY="$cand"; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "FAILED: no Python 2.7 (Autobahn|Testsuite needs it): run 'bash .ci/install-tools.sh' (as root)"
  echo "        or set HBWS_PYTHON2=/path/to/python2.7"
  exit 1
fi
say "python: $PY ($("$PY" -V 2>&1))"

# --- 2. The suite, installed once ----------------------------------------------------------------
REQ="$HERE/requirements-py27.txt"
CACHE="${HBWS_AUTOBAHN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hbws-autobahn}"
REQ_HASH="$(cat "$REQ" "$HERE/requirements-py27-bootstrap.txt" | sha256sum | cut -c1-12)"
SITE="$CACHE/py27-$REQ_HASH"
LAUNCH=("$PY" "$HERE/wstest_launcher.py" "$SITE")
# pip for the Python 2.7: its own if it has one, else the pinned bootstrap wheels.
PIP=("$PY" -m pip)
PIP_ENV=()
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  BOOT="$CACHE/boot27-$(sha256sum "$HERE/requirements-py27-bootstrap.txt" | cut -c1-12)"
  if [ ! -f "$BOOT/.installed" ]; then
    say "bootstrapping pip for $PY into $BOOT"
    command -v python3 >/dev/null 2>&1 || { echo "FAILED: python3 (to fetch pip for 2.7) not found"; exit 1; }
    rm -rf "$BOOT" "$BOOT.tmp"
    mkdir -p "$BOOT.tmp/wheels"
    python3 -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
      --python-version 2.7 --implementation cp -d "$BOOT.tmp/wheels" \
      -r "$HERE/requirements-py27-bootstrap.txt"
    whl="$(ls "$BOOT.tmp"/wheels/pip-*.whl)"
    "$PY" "$whl/pip" install --disable-pip-version-check --no-warn-script-location -q --no-index \
      --find-links "$BOOT.tmp/wheels" --target "$BOOT.tmp/lib" -r "$HERE/requirements-py27-bootstrap.txt"
    mv "$BOOT.tmp" "$BOOT"
    touch "$BOOT/.installed"
  fi
  PIP_ENV=(env "PYTHONPATH=$BOOT/lib")
fi
if [ ! -f "$SITE/.installed" ] || ! "${LAUNCH[@]}" -a >/dev/null 2>&1; then
  say "installing Autobahn|Testsuite into $SITE"
  mkdir -p "$CACHE"
  rm -rf "$SITE" "$SITE.tmp"
  if ! "${PIP_ENV[@]}" "${PIP[@]}" install --disable-pip-version-check --no-warn-script-location -q \
    --target "$SITE.tmp" -r "$REQ" 2>&1 | { grep -v '^DEPRECATION: Python 2.7' || true; }; then
    echo "FAILED: pip install -r $REQ"
    exit 1
  fi
  mv "$SITE.tmp" "$SITE"
  touch "$SITE/.installed"
fi
say "$("${LAUNCH[@]}" -a 2>&1 | tr '\n' ' ')"

# --- 3. The echo client --------------------------------------------------------------------------
say "building examples/echo.rs (release)"
cargo build --release --example echo
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
  "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
ECHO_BIN="$TARGET_DIR/release/examples/echo"
[ -x "$ECHO_BIN" ] || { echo "FAILED: $ECHO_BIN was not built"; exit 1; }

# --- 4. The fuzzing server -----------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
if port_open; then
  echo "FAILED: 127.0.0.1:$PORT is already in use (set HBWS_AUTOBAHN_PORT)"
  exit 1
fi
mkdir -p "$OUT"
rm -rf "$OUT/reports"
cat >"$OUT/fuzzingclient-spec.json" <<JSON
{
  "url": "ws://127.0.0.1:$PORT",
  "outdir": "$OUT/reports/clients",
  "cases": ["*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON

SERVER_PID=""
ECHO_PID=""
stop_server() {
  if [ -n "$ECHO_PID" ]; then
    kill "$ECHO_PID" 2>/dev/null || true
    wait "$ECHO_PID" 2>/dev/null || true
    ECHO_PID=""
  fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT
trap 'stop_server; exit 143' TERM

say "starting the fuzzing server on 127.0.0.1:$PORT (log: $OUT/fuzzingserver.log)"
(cd "$OUT" && exec "${LAUNCH[@]}" -m fuzzingserver -s fuzzingclient-spec.json -u 0) \
  >"$OUT/fuzzingserver.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
  port_open && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/fuzzingserver.log"; echo "FAILED: the fuzzing server exited"; exit 1; }
  sleep 0.1
done
port_open || { cat "$OUT/fuzzingserver.log"; echo "FAILED: the fuzzing server is not listening"; exit 1; }

# --- 5. The run ----------------------------------------------------------------------------------
ECHO_ARGS=(--url "ws://127.0.0.1:$PORT" --agent "$AGENT")
[ -n "${HBWS_AUTOBAHN_CASES:-}" ] && ECHO_ARGS+=(--cases "$HBWS_AUTOBAHN_CASES")
# shellcheck disable=SC2206 # word splitting wanted
[ -n "${HBWS_ECHO_ARGS:-}" ] && ECHO_ARGS+=($HBWS_ECHO_ARGS)
say "running the echo client: $ECHO_BIN ${ECHO_ARGS[*]} (log: $OUT/echo.log)"
CASES_START=$(date +%s)
# In the background and waited for, so that INT/TERM run the trap at once (bash defers traps
# while a foreground command runs).
timeout "$RUN_TIMEOUT" "$ECHO_BIN" "${ECHO_ARGS[@]}" >"$OUT/echo.log" 2>&1 &
ECHO_PID=$!
set +e
wait "$ECHO_PID"
ECHO_STATUS=$?
set -e
ECHO_PID=""
grep -E 'cases on the server|ran [0-9]+ cases|updateReports|REFUSED|NEVER|^echo:' "$OUT/echo.log" || true
CASES_END=$(date +%s)

INDEX="$OUT/reports/clients/index.json"
for _ in $(seq 100); do [ -s "$INDEX" ] && break; sleep 0.1; done
stop_server

RUN_TIME=$((CASES_END - CASES_START))
say "echo client run: ${RUN_TIME} s (exit status $ECHO_STATUS); whole script: $(( $(date +%s) - START_TIME )) s"
say "reports: $OUT/reports/clients/index.html"
if [ ! -s "$INDEX" ]; then
  echo "FAILED: no report at $INDEX (echo client exit status $ECHO_STATUS)"
  exit 1
fi

REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src server Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  REV="$REV+local changes"
fi
SUMMARY_ARGS=(--run-time "$RUN_TIME" --markdown "$OUT/SUMMARY.md" --revision "$REV")
set +e
"$PY" "$HERE/summarize.py" "$INDEX" "$AGENT" "${SUMMARY_ARGS[@]}"
STATUS=$?
set -e
if [ "${HBWS_AUTOBAHN_UPDATE_SUMMARY:-0}" = 1 ]; then
  # The generated part is replaced; hand-written notes after the marker line are kept.
  MARK='<!-- notes: everything below this line is kept by run.sh -->'
  NOTES=""
  if [ -f "$HERE/SUMMARY.md" ] && grep -qF -- "$MARK" "$HERE/SUMMARY.md"; then
    NOTES="$(awk -v m="$MARK" 'index($0, m) == 1 { keep = 1 } keep' "$HERE/SUMMARY.md")"
  fi
  { cat "$OUT/SUMMARY.md"; [ -n "$NOTES" ] && printf '%s\n' "$NOTES"; } >"$HERE/SUMMARY.md.tmp"
  mv "$HERE/SUMMARY.md.tmp" "$HERE/SUMMARY.md"
  say "updated conformance/SUMMARY.md"
fi
if [ "$ECHO_STATUS" -ne 0 ]; then
  echo "FAILED: the echo client exited with status $ECHO_STATUS (see $OUT/echo.log)"
  STATUS=1
fi
exit "$STATUS"
