#!/usr/bin/env bash
# Bootstrap what `make test` and `make lab` need on a fresh Debian/Ubuntu machine:
# the Debian packages of the servers the tests start (when run as root or with
# sudo), and .venv with fournines installed with its extras.
#
#   scripts/bootstrap.sh          packages (if permitted) + venv
#   scripts/bootstrap.sh venv     venv only
#   scripts/bootstrap.sh packages BIN:PKG...   just these Debian packages
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
# binary:package pairs of the servers and tools tests start themselves; an absolute path
# stands for a file the package installs (a header the NFQUEUE shim compiles against).
PACKAGES=(
  redis-server:redis-server etcd:etcd-server etcdctl:etcd-client prometheus:prometheus
  promtool:prometheus
  prometheus-alertmanager:prometheus-alertmanager
  nft:nftables iptables:iptables ip:iproute2 gcc:gcc
  /usr/include/libnetfilter_queue/libnetfilter_queue.h:libnetfilter-queue-dev
  /usr/include/python3*/Python.h:python3-dev
)

have() {
  case "$1" in
    /*) compgen -G "$1" >/dev/null ;;
    *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ] ;;
  esac
}

install_packages() {
  local missing=()
  if [ $# -gt 0 ]; then PACKAGES=("$@"); fi
  for pair in "${PACKAGES[@]}"; do
    local bin="${pair%%:*}" pkg="${pair##*:}"
    if ! have "$bin" && [[ " ${missing[*]-} " != *" $pkg "* ]]; then missing+=("$pkg"); fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "bootstrap: missing Debian packages: ${missing[*]} (not root, no sudo: install them by hand," \
           "or set FOURNINES_ALLOW_SKIP=1 to skip the tests that need them)" >&2
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: no apt-get; install by hand: ${missing[*]}" >&2
    return 0
  fi
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  # Debian's policy-rc.d keeps installed servers from starting services: tests start their own.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

make_venv() {
  "$PYTHON" - <<'PY' || { echo "bootstrap: fournines needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.fournines-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[all,dev]' 2>&1 \
      | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -c "import fournines, redis, prometheus_client, pytest, hypothesis" \
      || { echo "bootstrap: installing the venv failed" >&2; exit 1; }
    # The NFQUEUE delay shim compiles against libnetfilter-queue; without it the network
    # delay tests say so and skip, everything else works.
    if [ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ]; then
      # grep exits 1 when pip prints nothing, so the pip status is tested on its own.
      { "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[netfaults]' 2>&1 \
          || echo "bootstrap: netfilterqueue did not build" >&2; } | { grep -v "^WARNING: Location" || true; }
    fi
    touch "$stamp"
  fi
}

case "${1:-all}" in
  venv) make_venv ;;
  packages) shift; install_packages "$@" ;;
  all) install_packages; make_venv ;;
  *) echo "usage: $0 [all|venv|packages BIN:PKG...]" >&2; exit 2 ;;
esac
