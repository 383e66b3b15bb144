#!/usr/bin/env bash
# setup_aarch64_emulation.sh - an aarch64 (ARM64 Linux) user-mode emulation environment
# for edgequery's timing agent, on an x86_64 Debian/Ubuntu-style host.
#
# What it does (each step is skipped when its stamp under DIR/.stamps says it is done):
#   1. qemu   - downloads Debian 13 (trixie)'s `qemu-user` .deb (static binaries since
#               trixie; Debian 12's qemu-user 7.2 segfaults when Python imports
#               onnxruntime) and extracts only usr/bin/qemu-aarch64 to DIR/qemu-aarch64.
#   2. rootfs - downloads Debian 12 (bookworm) arm64 python3 (3.11) + libstdc++6 and all
#               their dependencies, and unpacks them with `dpkg-deb -x` into DIR/rootfs.
#   3. wheels - installs the aarch64 cp311 wheels of numpy, ai-edge-litert and onnxruntime
#               (by default the versions in the repo's .venv) into
#               DIR/rootfs/usr/local/lib/python3.11/dist-packages, where the rootfs
#               python finds them without PYTHONPATH.
#   4. check  - runs the emulated python and imports all three (prints "aarch64 ...").
# It also writes DIR/python3, a wrapper that runs the emulated python:
#     DIR/python3 edgequery/runtimes/agent.py --check onnxruntime
# which is the same as
#     QEMU_CPU=cortex-a76 DIR/qemu-aarch64 -L DIR/rootfs DIR/rootfs/usr/bin/python3 edgequery/runtimes/agent.py ...
# The wrapper emulates a Cortex-A76 (Raspberry Pi 5; NEON + dot product, no SVE) unless
# QEMU_CPU is set.  Plain qemu-aarch64 emulates its "max" CPU (SVE2, SME, i8mm, bf16),
# whose SME/SVE kernels (XNNPACK/KleidiAI, MLAS) run about 8x slower under qemu.
# Paths that do not exist inside DIR/rootfs (models in /tmp, the repo, /proc, /sys)
# are the host's, so the agent reads the host's model files directly.  QEMU_LD_PREFIX=DIR/rootfs
# does what -L does; no PYTHONPATH or LD_LIBRARY_PATH is needed, and the environment
# (OMP_NUM_THREADS, ...) reaches the emulated program unchanged.
#
# Nothing on the host is installed or changed: apt runs download-only with a private
# config, state and cache under DIR/.apt (removed after use), so no root is needed.
# binfmt_misc is not used: qemu-aarch64 is always called explicitly.
#
# Who needs it: only someone without an ARM board who wants to check that the agent and
# the runtimes work on aarch64.  Emulated timings are NOT those of a board (qemu
# translates every instruction; the CPU in /proc/cpuinfo is qemu's); with a real ARM
# Linux board skip this script and use the ssh device instead.
#
# Needs: x86_64 host, bash, apt-get, dpkg-deb, tar, a pip for Python 3 (the repo's
# .venv/bin/pip by default), and access to deb.debian.org (or EDGEQUERY_DEBIAN_MIRROR)
# and PyPI.  Downloads about 160 MB (qemu-user .deb 71 MB, apt indexes 19 MB, arm64
# .debs 16 MB, wheels 53 MB); DIR takes about 250 MB afterwards (downloads are deleted).
# It took about 35 s here (2 cores, fast network), 8 s of it the final check (importing
# onnxruntime and ai-edge-litert under emulation); a re-run only repeats the check.
#
# Usage: scripts/setup_aarch64_emulation.sh [--force] [DIR]
#   DIR      default ~/.cache/edgequery/aarch64
#   --force  redo every step
# Environment (all optional):
#   EDGEQUERY_DEBIAN_MIRROR           default http://deb.debian.org/debian
#   EDGEQUERY_DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#   EDGEQUERY_DEBIAN_KEYRING          default /usr/share/keyrings/debian-archive-keyring.gpg
#   EDGEQUERY_PIP                     the pip that downloads the wheels (default: repo .venv, else python3 -m pip)
#   NUMPY_VERSION, LITERT_VERSION, ONNXRUNTIME_VERSION   wheel versions (default: as in the repo .venv)

set -Eeuo pipefail  # -E: the ERR trap below also reports failures inside functions

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; }

FORCE=0
DIR=""
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --force) FORCE=1 ;;
        -*) echo "error: unknown option $arg (see --help)" >&2; exit 2 ;;
        *) [[ -z "$DIR" ]] || { echo "error: only one DIR may be given" >&2; exit 2; }; DIR="$arg" ;;
    esac
done
DIR="${DIR:-$HOME/.cache/edgequery/aarch64}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$SCRIPT_DIR")"
MIRROR="${EDGEQUERY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${EDGEQUERY_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
KEYRING="${EDGEQUERY_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
QEMU_SUITE=trixie
ROOTFS_SUITE=bookworm
ROOTFS_PACKAGES=(python3 libstdc++6 libgcc-s1)
PYVER=3.11
SITE_REL="usr/local/lib/python$PYVER/dist-packages"
ROOTFS="$DIR/rootfs"
QEMU="$DIR/qemu-aarch64"
STAMPS="$DIR/.stamps"
APT_ROOT="$DIR/.apt"
START=$SECONDS

# ------------------------------------------------------------------ messages and failures

STEP="start"
log() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
    printf 'error: %s\n' "$1" >&2
    [[ $# -lt 2 ]] || printf '  fix: %s\n' "$2" >&2
    exit 1
}
on_error() {
    local rc=$? line=$1
    printf 'error: step "%s" failed (exit status %s, line %s of %s)\n' "$STEP" "$rc" "$line" "$0" >&2
    printf '  what was done so far is kept; fix the cause and run the script again.\n' >&2
    exit "$rc"
}
trap 'on_error $LINENO' ERR

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed" "$2"; }

stamp_ok() {  # stamp_ok NAME [KEY]: step NAME done (with KEY, when given) and not --force
    [[ $FORCE == 0 && -s "$STAMPS/$1" ]] && [[ $# -lt 2 || "$(cat "$STAMPS/$1")" == "$2" ]]
}
stamp_set() { mkdir -p "$STAMPS"; printf '%s' "$2" >"$STAMPS/$1"; }
stamp_clear() { rm -f "$STAMPS/$1"; }

# ------------------------------------------------------------------ preflight

STEP="preflight"
[[ "$(uname -m)" == x86_64 ]] || die "this script prepares aarch64 emulation on an x86_64 host; this one is $(uname -m)" \
    "on an aarch64 machine run the agent with its own python3 (no emulation needed)"
need apt-get "this script needs Debian's apt (apt-get) to download packages"
need dpkg-deb "install dpkg"
need tar "install tar"
[[ -r "$KEYRING" ]] || die "Debian archive keyring $KEYRING not found" \
    "apt-get install debian-archive-keyring, or set EDGEQUERY_DEBIAN_KEYRING to a keyring with the Debian 12/13 archive keys"

if [[ -n "${EDGEQUERY_PIP:-}" ]]; then
    read -r -a PIP <<<"$EDGEQUERY_PIP"
elif [[ -x "$REPO/.venv/bin/pip" ]]; then
    PIP=("$REPO/.venv/bin/pip")
else
    need python3 "install python3 and pip"
    PIP=(python3 -m pip)
fi
"${PIP[@]}" --version >/dev/null 2>&1 || die "pip does not run: ${PIP[*]}" "set EDGEQUERY_PIP to a working pip (>= 20.3)"

host_version() {  # the version of $1 installed where PIP installs, or $2
    local v
    v="$("${PIP[@]}" show "$1" 2>/dev/null | awk '/^Version:/ {print $2}')" || true
    printf '%s' "${v:-$2}"
}
NUMPY_VERSION="${NUMPY_VERSION:-$(host_version numpy 2.4.6)}"
LITERT_VERSION="${LITERT_VERSION:-$(host_version ai-edge-litert 2.3.0)}"
ONNXRUNTIME_VERSION="${ONNXRUNTIME_VERSION:-$(host_version onnxruntime 1.32.0)}"

exec 9>"$DIR/.lock"
if command -v flock >/dev/null 2>&1; then
    flock -n 9 || die "another run of this script is using $DIR" "wait for it to finish"
fi

log "aarch64 emulation environment in $DIR"
info "qemu from Debian $QEMU_SUITE, rootfs from Debian $ROOTFS_SUITE arm64, mirror $MIRROR"
info "wheels: numpy $NUMPY_VERSION, ai-edge-litert $LITERT_VERSION, onnxruntime $ONNXRUNTIME_VERSION (pip: ${PIP[*]})"

# ------------------------------------------------------------------ private apt

# apt_setup NAME ARCH SOURCES-LINES...: a private apt (config, sources, state, cache) in
# $APT_ROOT/NAME with an empty dpkg status, so every dependency is resolved and nothing
# of the host's apt is read or written.  Sets APT_DIR and APT_CONFIG_FILE.
apt_setup() {
    local name=$1 arch=$2
    shift 2
    APT_DIR="$APT_ROOT/$name"
    rm -rf "$APT_DIR"
    mkdir -p "$APT_DIR"/etc/{apt.conf.d,preferences.d,sources.list.d,trusted.gpg.d} \
        "$APT_DIR"/state/lists/partial "$APT_DIR"/cache/archives/partial "$APT_DIR"/debs
    : >"$APT_DIR/state/status"
    printf '%s\n' "$@" >"$APT_DIR/etc/sources.list"
    APT_CONFIG_FILE="$APT_DIR/apt.conf"
    cat >"$APT_CONFIG_FILE" <<EOF
Dir::Etc "$APT_DIR/etc/";
Dir::Etc::SourceList "$APT_DIR/etc/sources.list";
Dir::Etc::SourceParts "$APT_DIR/etc/sources.list.d/";
Dir::Etc::Parts "$APT_DIR/etc/apt.conf.d/";
Dir::Etc::Preferences "$APT_DIR/etc/preferences";
Dir::Etc::PreferencesParts "$APT_DIR/etc/preferences.d/";
Dir::Etc::Trusted "$APT_DIR/etc/trusted.gpg";
Dir::Etc::TrustedParts "$APT_DIR/etc/trusted.gpg.d/";
Dir::State "$APT_DIR/state/";
Dir::State::status "$APT_DIR/state/status";
Dir::Cache "$APT_DIR/cache/";
Dir::Log "$APT_DIR/log/";
APT::Architecture "$arch";
APT::Architectures { "$arch"; };
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Acquire::Retries "3";
EOF
}

apt_private() { APT_CONFIG="$APT_CONFIG_FILE" apt-get -q "$@"; }

apt_update() {  # apt_update SUITE
    local out="$APT_DIR/update.log"
    info "apt-get update (private state in $APT_DIR)"
    if ! apt_private update >"$out" 2>&1 || grep -qE '^(E:|W: Failed to fetch|Err:)' "$out"; then
        sed 's/^/    | /' "$out" >&2
        die "could not read the Debian package indexes from $MIRROR (see above)" \
            "check that the mirror is reachable (curl -I $MIRROR/dists/$1/InRelease), or set EDGEQUERY_DEBIAN_MIRROR / EDGEQUERY_DEBIAN_SECURITY_MIRROR"
    fi
}

apt_cleanup() { rm -rf "$APT_DIR"; rmdir "$APT_ROOT" 2>/dev/null || true; }

# ------------------------------------------------------------------ 1. qemu-aarch64

STEP="qemu"
if [[ -x "$QEMU" ]] && stamp_ok qemu; then
    log "1/4 qemu-aarch64: done before ($(cat "$STAMPS/qemu")), skipped"
else
    log "1/4 qemu-aarch64 from Debian $QEMU_SUITE's qemu-user (static)"
    stamp_clear qemu
    apt_setup qemu-$QEMU_SUITE amd64 "deb [signed-by=$KEYRING] $MIRROR $QEMU_SUITE main"
    apt_update $QEMU_SUITE
    qemu_version="$(APT_CONFIG="$APT_CONFIG_FILE" apt-cache policy qemu-user | awk '/Candidate:/ {print $2}')"
    [[ -n "$qemu_version" && "$qemu_version" != "(none)" ]] || die "no qemu-user package in Debian $QEMU_SUITE" \
        "check the mirror $MIRROR"
    info "downloading qemu-user $qemu_version (~70 MB; only qemu-aarch64 is kept)"
    (cd "$APT_DIR/debs" && apt_private download "qemu-user=$qemu_version" >"$APT_DIR/download.log" 2>&1) || {
        sed 's/^/    | /' "$APT_DIR/download.log" >&2
        die "could not download qemu-user from $MIRROR" "check the network and run the script again"
    }
    deb="$(ls "$APT_DIR"/debs/qemu-user_*.deb)"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/qemu-aarch64 >"$QEMU.part"
    chmod 755 "$QEMU.part"
    if command -v file >/dev/null 2>&1; then
        file -L "$QEMU.part" | grep -qE 'statically linked|static-pie linked' || {
            file -L "$QEMU.part" >&2
            die "qemu-aarch64 from qemu-user $qemu_version is not statically linked" \
                "Debian's qemu-user package changed; take qemu-aarch64-static from qemu-user-static instead"
        }
    elif command -v readelf >/dev/null 2>&1; then
        ! readelf -l "$QEMU.part" | grep -q 'Requesting program interpreter' || \
            die "qemu-aarch64 from qemu-user $qemu_version is not statically linked" \
                "Debian's qemu-user package changed; take qemu-aarch64-static from qemu-user-static instead"
    fi
    "$QEMU.part" --version | head -1 | sed 's/^/    /'
    mv -f "$QEMU.part" "$QEMU"
    apt_cleanup
    stamp_set qemu "qemu-user $qemu_version"
fi

# ------------------------------------------------------------------ 2. arm64 rootfs

STEP="rootfs"
ROOTFS_KEY="$ROOTFS_SUITE arm64: ${ROOTFS_PACKAGES[*]}"
if [[ -x "$ROOTFS/usr/bin/python3" ]] && stamp_ok rootfs "$ROOTFS_KEY"; then
    log "2/4 rootfs: done before ($ROOTFS_KEY), skipped"
else
    log "2/4 rootfs: Debian $ROOTFS_SUITE arm64 ${ROOTFS_PACKAGES[*]} and their dependencies"
    stamp_clear rootfs
    stamp_clear wheels  # they live inside the rootfs
    apt_setup rootfs-$ROOTFS_SUITE-arm64 arm64 \
        "deb [signed-by=$KEYRING] $MIRROR $ROOTFS_SUITE main" \
        "deb [signed-by=$KEYRING] $MIRROR $ROOTFS_SUITE-updates main" \
        "deb [signed-by=$KEYRING] $SECURITY_MIRROR $ROOTFS_SUITE-security main"
    apt_update $ROOTFS_SUITE
    info "downloading the arm64 packages (download only, ~16 MB)"
    apt_private install --download-only -y "${ROOTFS_PACKAGES[@]}" >"$APT_DIR/download.log" 2>&1 || {
        sed 's/^/    | /' "$APT_DIR/download.log" >&2
        die "could not resolve or download the arm64 packages from $MIRROR" "check the network and run the script again"
    }
    shopt -s nullglob
    debs=("$APT_DIR"/cache/archives/*.deb)
    shopt -u nullglob
    [[ ${#debs[@]} -gt 0 ]] || die "apt downloaded no package (see $APT_DIR/download.log)"
    info "unpacking ${#debs[@]} packages into $ROOTFS"
    rm -rf "$ROOTFS" "$ROOTFS.part"
    mkdir -p "$ROOTFS.part"
    for deb in "${debs[@]}"; do
        dpkg-deb -x "$deb" "$ROOTFS.part"
    done
    (cd "$APT_DIR/cache/archives" && ls -1 ./*.deb | sed 's#^\./##; s/\.deb$//') >"$ROOTFS.part/.packages"
    # Paths the guest opens are looked up in the rootfs first and on the host otherwise
    # (qemu -L).  An empty ld.so.cache keeps the guest's loader off the host's x86_64
    # cache; no /proc, /sys, /dev, /tmp here, so those stay the host's.
    mkdir -p "$ROOTFS.part/etc"
    : >"$ROOTFS.part/etc/ld.so.cache"
    for d in proc sys dev tmp run home root; do rmdir "$ROOTFS.part/$d" 2>/dev/null || true; done
    [[ -x "$ROOTFS.part/usr/bin/python3" ]] || die "the unpacked rootfs has no usr/bin/python3"
    mv "$ROOTFS.part" "$ROOTFS"
    apt_cleanup
    stamp_set rootfs "$ROOTFS_KEY"
fi

# ------------------------------------------------------------------ 3. wheels

STEP="wheels"
SITE="$ROOTFS/$SITE_REL"
PLATFORMS=(manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_26_aarch64 manylinux_2_24_aarch64
    manylinux2014_aarch64 manylinux_2_17_aarch64)  # all <= bookworm's glibc 2.36; older pips do not expand tags
WHEELS=("numpy==$NUMPY_VERSION" "ai-edge-litert==$LITERT_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION")
WHEELS_KEY="cp${PYVER/./} ${WHEELS[*]}"
if [[ -d "$SITE" ]] && stamp_ok wheels "$WHEELS_KEY"; then
    log "3/4 wheels: done before (${WHEELS[*]}), skipped"
else
    log "3/4 wheels: ${WHEELS[*]} (aarch64, cp${PYVER/./}) into rootfs /$SITE_REL"
    stamp_clear wheels
    rm -rf "$SITE" "$SITE.part"
    platform_args=()
    for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
    # --target: nothing goes into the pip's own environment (--no-warn-conflicts: pip would
    # compare the aarch64 set with that environment's packages and warn about them).
    if ! "${PIP[@]}" install --disable-pip-version-check --no-compile --no-warn-conflicts --target "$SITE.part" \
        --only-binary=:all: "${platform_args[@]}" --python-version "$PYVER" --implementation cp \
        --abi "cp${PYVER/./}" --abi abi3 --abi none "${WHEELS[@]}" >"$DIR/.pip.log" 2>&1; then
        tail -n 30 "$DIR/.pip.log" | sed 's/^/    | /' >&2
        die "pip could not install the aarch64 wheels ${WHEELS[*]} (log: $DIR/.pip.log)" \
            "check that PyPI is reachable and has cp${PYVER/./} manylinux aarch64 wheels of these versions (or set NUMPY_VERSION / LITERT_VERSION / ONNXRUNTIME_VERSION)"
    fi
    grep -E '^(Successfully installed|Installing collected)' "$DIR/.pip.log" | tail -n 1 | sed 's/^/    /' || true
    rm -rf "$SITE.part/bin"  # console scripts with the host's shebang
    mv "$SITE.part" "$SITE"
    stamp_set wheels "$WHEELS_KEY"
fi

# ------------------------------------------------------------------ wrapper

cat >"$DIR/python3.part" <<'EOF'
#!/bin/sh
# The emulated aarch64 python3 (written by scripts/setup_aarch64_emulation.sh).
here="$(cd "$(dirname "$0")" && pwd)"
# A Cortex-A76 (Raspberry Pi 5) unless QEMU_CPU says otherwise (qemu's default "max" CPU
# has SVE2/SME, whose kernels are ~8x slower under emulation); QEMU_CPU=help lists them.
QEMU_CPU="${QEMU_CPU:-cortex-a76}"
export QEMU_CPU
exec "$here/qemu-aarch64" -L "$here/rootfs" "$here/rootfs/usr/bin/python3" "$@"
EOF
chmod 755 "$DIR/python3.part"
mv -f "$DIR/python3.part" "$DIR/python3"

# ------------------------------------------------------------------ 4. check

STEP="check"
log "4/4 check: the emulated python imports numpy, onnxruntime and ai_edge_litert"
if command -v readelf >/dev/null 2>&1; then
    # every shared library the wheels' extensions need must be in the rootfs or the wheels
    needed="$(find "$SITE" -name '*.so*' -type f -exec readelf -d {} + 2>/dev/null |
        sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u)" || true
    missing=()
    for lib in $needed; do
        [[ -n "$(find "$ROOTFS/lib" "$ROOTFS/usr/lib" "$SITE" -name "$lib" -print -quit 2>/dev/null)" ]] ||
            missing+=("$lib")
    done
    [[ ${#missing[@]} -eq 0 ]] || info "warning: libraries needed by the wheels but not in the rootfs: ${missing[*]}"
fi
CHECK='import platform, sys, numpy, onnxruntime, ai_edge_litert.interpreter
from importlib.metadata import version
print(platform.machine(), "python", platform.python_version(), "numpy", numpy.__version__,
      "onnxruntime", onnxruntime.__version__, "ai-edge-litert", version("ai-edge-litert"))'
err="$DIR/.check.log"
if ! out="$("$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3" -c "$CHECK" 2>"$err")"; then
    sed 's/^/    | /' "$err" >&2
    die "the emulated python could not import the runtimes" "run the script again with --force"
fi
info "$out"
[[ ! -s "$err" ]] || info "(its stderr, harmless under emulation: $(tr '\n' ' ' <"$err"))"
[[ "$out" == aarch64\ * ]] || die "the emulated python does not report aarch64: $out"

log "ready in $((SECONDS - START)) s; DIR uses $(du -sh "$DIR" | cut -f1)"
info "$("$QEMU" --version | head -1)"
info "run the agent:  $DIR/python3 $REPO/edgequery/runtimes/agent.py --check onnxruntime"
info "same as:        QEMU_CPU=cortex-a76 $QEMU -L $ROOTFS $ROOTFS/usr/bin/python3 $REPO/edgequery/runtimes/agent.py ..."
