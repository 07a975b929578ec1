#!/usr/bin/env bash
# Leak and memory-error check: examples/c/cycles.c makes N connect / OPEN / send / close cycles
# through the C API under valgrind memcheck, against the reference server. Passes with 0 errors
# and 0 definite leaks; tests/valgrind.supp lists (and explains) the one-time runtime allocations.
#   bash tests/valgrind.sh [CYCLES]     (default 1000; needs `cargo build --workspace` first)
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-1000}"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
lib="$PWD/target/debug"
work="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cc -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude examples/c/cycles.c \
   -L"$lib" -lhbws -Wl,-rpath,"$lib" -o "$work/cycles"
"$lib/hbws-server" --port 0 --interval-ms 0 > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 500); do grep -q "listening on" "$work/server.log" && break; sleep 0.01; done
url="$(grep -o 'ws://[0-9.:]*/' "$work/server.log" | head -1)"
[ -n "$url" ] || { echo "server did not start"; cat "$work/server.log"; exit 1; }
echo "valgrind memcheck: $cycles connect/close cycles against $url"
valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,possible \
  --suppressions=tests/valgrind.supp --error-exitcode=9 \
  "$work/cycles" "$url" "$cycles" 2> "$work/valgrind.log" || {
  echo "valgrind found errors:"; cat "$work/valgrind.log"; exit 1; }
cat "$work/valgrind.log"
echo "valgrind: 0 errors, 0 leaks in $cycles cycles"
