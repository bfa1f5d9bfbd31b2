#!/usr/bin/env bash
# Installs what espgw needs on a fresh machine, idempotently:
#   scripts/bootstrap.sh python   the virtualenv in .venv with espgw and its test extra
#   scripts/bootstrap.sh system   Debian packages for the namespace lab (root only)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

# Debian's CPython is built with PGO/LTO and runs the ESP path ~13% faster than an unoptimised
# build (bench/README.md), so the venv prefers it; PYTHON=... overrides.
pick_python() {
    local p
    for p in ${PYTHON:-} /usr/bin/python3 python3; do
        if "$p" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$p"; return
        fi
    done
    echo "bootstrap: no Python >= 3.11 with venv found (set PYTHON=...)" >&2
    exit 1
}

python_env() {
    local stamp=$VENV/.espgw-installed
    if [[ -f $stamp && $stamp -nt pyproject.toml ]]; then return; fi
    [[ -x $VENV/bin/python ]] || "$(pick_python)" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
    # the build backend's warnings are noise here; show pip's output only when it fails
    if ! "$VENV/bin/pip" install -q -e '.[test]' >"$VENV/pip-install.log" 2>&1; then
        cat "$VENV/pip-install.log" >&2
        exit 1
    fi
    touch "$stamp"
}

# The lab's tools: strongSwan 5.9.8 (the reference peer), iproute2/nftables for the
# namespaces and loss, iperf3/tcpdump/tshark for traffic, debootstrap for strongSwan 6, and
# strongSwan's pki to cross-check the certificates espgw makes. The kernel lab (tunnel/lab/vm)
# boots Debian's kernel under QEMU emulation (this machine's kernel has no ESP and no netem), with
# busybox as the guest's initramfs.
SYSTEM_PKGS=(python3-venv iproute2 iputils-ping nftables iperf3 tcpdump tshark debootstrap curl util-linux
             strongswan-swanctl charon-systemd libcharon-extra-plugins
             libstrongswan-standard-plugins strongswan-pki
             qemu-system-x86 linux-image-amd64 busybox-static cpio kmod)

system_pkgs() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: not root, skipping Debian packages (lab tests will skip)" >&2
        return
    fi
    local missing=()
    for p in "${SYSTEM_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    echo "bootstrap: installing ${missing[*]}" >&2
    # tshark asks whether non-root users may capture; answer for it
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts no daemons in containers, but make sure the system charon is not
    # running: every lab gateway runs its own charon inside its namespace.
    systemctl disable --now strongswan >/dev/null 2>&1 || true
}

case ${1:-all} in
    python) python_env ;;
    system) system_pkgs ;;
    all) system_pkgs; python_env ;;
    *) echo "usage: $0 [python|system|all]" >&2; exit 2 ;;
esac
