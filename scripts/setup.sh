#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) to run pyflannel's demo and tests. Idempotent and fast
# when everything is already there:
#   - Debian packages: apt-get runs only if `dpkg -s` says one of them is missing;
#   - .venv: created with the python3 on PATH; `pip install -e '.[test]'` runs only when
#     pyproject.toml is newer than the stamp file .venv/.pyflannel-installed.
# Debian's system pip refuses to install outside a virtualenv (PEP 668), hence the venv.
set -euo pipefail

cd "$(dirname "$0")/.."

PACKAGES=(
    etcd-server etcd-client iproute2 iptables nftables iputils-ping iperf3 procps
    containernetworking-plugins python3 python3-venv python3-pip ca-certificates make
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup.sh: missing packages (${missing[*]}); run as root to install them" >&2
        exit 1
    fi
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.pyflannel-installed

# A venv whose interpreter is gone (python moved or upgraded) is rebuilt.
if [ -d "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "setup.sh: $VENV is broken, recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup.sh: creating $VENV with $(command -v "$PYTHON")"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ scripts/setup.sh -nt "$STAMP" ]; then
    echo "setup.sh: pip install -e '.[test]' into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # compat: a plain path entry in a .pth file. The default editable mode installs an import hook
    # that costs every flanneld start 40 ms (pathlib and friends) before any of our code runs, as
    # an installed flanneld does not pay. setuptools calls compat transitional: fall back if it goes.
    "$VENV/bin/python" -m pip install -q -e '.[test]' --config-settings editable_mode=compat 2>/dev/null ||
        "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$STAMP"
fi
