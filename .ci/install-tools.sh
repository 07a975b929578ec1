#!/usr/bin/env bash
# Installs every tool .ci/run uses, idempotently (each is checked first, so a second run installs
# nothing), and fails (non-zero exit) when one cannot be had. Needs root for apt-get.
#   bash .ci/install-tools.sh
# It installs:
# - Debian packages: gcc, g++ (C example, header tests), valgrind, iptables and iproute2 (tests that
#   make half-open links), and CPython 2.7 for Autobahn|Testsuite (py2-only). Debian 12 has no
#   Python 2 (nor PyPy 2); Debian 11 still ships CPython 2.7.18 with security fixes, so its
#   bullseye suite is added as a source pinned at priority 1: only packages that bookworm lacks
#   (python2.7, its -dev headers, libssl1.1, libffi7) come from it, nothing installed is upgraded.
#   One `apt-get update`, one `apt-get install`, and only when something is missing.
# - cargo-fuzz (pinned, `cargo install --locked`). It runs on the stable toolchain with
#   RUSTC_BOOTSTRAP=1 (see fuzz/smoke.sh); no nightly is needed.
# - python `websockets` (pinned in .ci/requirements-py3.txt) into the Python that `python3` is.
# Autobahn|Testsuite's own Python 2.7 packages are installed by conformance/run.sh (into a cache).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2

say() { echo "-- install: $*"; }
die() { echo "FAILED: $*" >&2; exit 1; }

is_py27() { [ -x "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' 2>/dev/null; }

# --- Debian packages -----------------------------------------------------------------------------
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# The interpreter and the headers (wsaccel and Twisted compile C extensions).
if ! is_py27 /usr/bin/python2.7 || [ ! -f /usr/include/python2.7/Python.h ]; then
  need+=(python2.7 python2.7-dev)
  if ! apt-cache policy python2.7 2>/dev/null | grep -q bullseye; then
    say "adding Debian 11 (bullseye) as a pinned source for python2.7"
    cat >/etc/apt/sources.list.d/hbws-bullseye.sources <<'EOF'
# Added by hbws .ci/install-tools.sh: Debian 11 still ships CPython 2.7 (Autobahn|Testsuite).
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >/etc/apt/preferences.d/hbws-bullseye.pref <<'EOF'
# Added by hbws .ci/install-tools.sh: a bullseye package only where bookworm has none.
Package: *
Pin: release n=bullseye
Pin-Priority: 1
EOF
  fi
fi
if [ "${#need[@]}" -gt 0 ]; then
  say "apt-get install ${need[*]}"
  apt-get update -qq || die "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/tmp/hbws-apt.log 2>&1 ||
    { tail -n 40 /tmp/hbws-apt.log; die "apt-get install ${need[*]}"; }
fi
for tool in cc c++ valgrind iptables ip; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
is_py27 /usr/bin/python2.7 || die "/usr/bin/python2.7 is not a Python 2.7"
say "debian: $(cc --version | head -1); $(valgrind --version); $(iptables --version); $(/usr/bin/python2.7 -V 2>&1)"

# --- Rust ----------------------------------------------------------------------------------------
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component" ||
    die "rustup component $component"
done
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  say "cargo install --locked cargo-fuzz@$CARGO_FUZZ_VERSION"
  cargo install --locked --quiet "cargo-fuzz@$CARGO_FUZZ_VERSION" || die "cargo install cargo-fuzz"
fi
say "rust: $(rustc -V); $(cargo fuzz --version)"

# --- Python 3 ------------------------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH"
python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip"
if ! python3 -m pip install --disable-pip-version-check --root-user-action=ignore -q -r .ci/requirements-py3.txt; then
  die "pip install -r .ci/requirements-py3.txt"
fi
say "python3: $(python3 -V) at $(python3 -c 'import sys; print(sys.executable)'); websockets $(python3 -c 'import websockets; print(websockets.__version__)')"
