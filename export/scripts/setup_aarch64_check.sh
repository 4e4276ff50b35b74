#!/usr/bin/env bash
# Sets up an emulated Raspberry Pi (aarch64) Python for the tfseg-lite check, from Debian packages
# and PyPI wheels only. Idempotent: every step leaves a marker and is skipped when it is there.
#
#   bash export/scripts/setup_aarch64_check.sh            # everything
#   TFSEG_AARCH64_ROOT=/some/dir bash ...setup_aarch64_check.sh
#
# What it makes (ROOT defaults to ~/.cache/tfseg-lite/aarch64-root):
#   ROOT/                          Debian bookworm arm64 userland (python3.11), unpacked, no chroot
#   ROOT/proc/cpuinfo              a Raspberry Pi 4 style file (see below)
#   ROOT/opt/tfseg-lite/litert/          aarch64 wheels: numpy, Pillow, ai-edge-litert
#   ROOT/opt/tfseg-lite/tflite-runtime/  aarch64 wheels: numpy<2, Pillow, tflite-runtime==2.14.0
#   ROOT/../x86_64-tflite-runtime/       the host's tflite-runtime, for the x86 reference run
#
# Programs then run as: qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11 ...
# (qemu's -L makes the guest's absolute paths resolve inside ROOT first; no binfmt needed).
#
# Needs root for apt-get and debootstrap (or sudo). About a minute on a fresh machine.
set -euo pipefail

ROOT="${TFSEG_AARCH64_ROOT:-$HOME/.cache/tfseg-lite/aarch64-root}"
SUITE="${TFSEG_AARCH64_SUITE:-bookworm}"            # bookworm ships python3.11, the one tflite-runtime has wheels for
MIRROR="${TFSEG_AARCH64_MIRROR:-http://deb.debian.org/debian}"
PYTHON="${PYTHON:-python3}"                         # the host Python whose pip downloads the wheels
LITERT_SPEC="${TFSEG_LITERT_SPEC:-ai-edge-litert}"
TFLITE_RUNTIME_SPEC="${TFSEG_TFLITE_RUNTIME_SPEC:-tflite-runtime==2.14.0}"
SITE="$ROOT/opt/tfseg-lite"
HOST_TFLITE_RUNTIME="$(dirname "$ROOT")/x86_64-tflite-runtime"

say() { printf '[setup_aarch64_check] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root (or sudo) for: $*"; exit 1
    fi
}

# 1. Host tools, from Debian.
missing=()
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The arm64 userland. --foreign only downloads and unpacks the base; running the second stage
# would need binfmt, so each .deb is extracted instead (maintainer scripts are not needed to run
# python3.11 from the tree).
if [ ! -f "$ROOT/.tfseg-userland-done" ]; then
    say "debootstrap $SUITE arm64 into $ROOT"
    mkdir -p "$ROOT"
    as_root debootstrap --foreign --arch=arm64 --variant=minbase \
        --include=python3-minimal,python3.11,libpython3.11-stdlib \
        "$SUITE" "$ROOT" "$MIRROR" >"$(dirname "$ROOT")/debootstrap.log" 2>&1 \
        || { say "debootstrap failed, see $(dirname "$ROOT")/debootstrap.log"; exit 1; }
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        as_root dpkg-deb -x "$deb" "$ROOT"
    done
    [ -x "$ROOT/usr/bin/python3.11" ] || { say "no python3.11 in $ROOT after unpacking"; exit 1; }
    as_root touch "$ROOT/.tfseg-userland-done"
fi

# 3. A Raspberry Pi 4 style /proc/cpuinfo. ai-edge-litert parses /proc/cpuinfo at start-up and
# crashes on the host's x86 one; qemu -L serves the guest this file instead.
if [ ! -s "$ROOT/proc/cpuinfo" ]; then
    as_root mkdir -p "$ROOT/proc"
    {
        for cpu in 0 1 2 3; do
            printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$cpu"
            printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
        done
        printf 'Hardware\t: BCM2835\nRevision\t: c03111\nSerial\t\t: 100000000tfseg00\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n'
    } | as_root tee "$ROOT/proc/cpuinfo" >/dev/null
fi

# 4. aarch64 wheels, one directory per runtime (tflite-runtime needs numpy<2, ai-edge-litert
# may take numpy 2). pip matches platform tags exactly, so every tag the wheels use is listed:
# tflite-runtime is manylinux_2_34, ai-edge-litert manylinux_2_27, numpy/Pillow manylinux2014/_2_28.
aarch64_pip() {
    local target="$1"; shift
    as_root "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target "$target" --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64 \
        --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 "$@"
}
if [ ! -f "$SITE/litert/.tfseg-done" ]; then
    say "aarch64 wheels: $LITERT_SPEC numpy Pillow -> $SITE/litert"
    as_root rm -rf "$SITE/litert"
    aarch64_pip "$SITE/litert" "$LITERT_SPEC" numpy Pillow
    as_root touch "$SITE/litert/.tfseg-done"
fi
if [ ! -f "$SITE/tflite-runtime/.tfseg-done" ]; then
    say "aarch64 wheels: $TFLITE_RUNTIME_SPEC numpy<2 Pillow -> $SITE/tflite-runtime"
    as_root rm -rf "$SITE/tflite-runtime"
    aarch64_pip "$SITE/tflite-runtime" "$TFLITE_RUNTIME_SPEC" "numpy<2" Pillow
    as_root touch "$SITE/tflite-runtime/.tfseg-done"
fi

# 5. The host's own tflite-runtime (x86_64), so the emulated tflite-runtime run is compared with
# the same runtime on x86 (its int8 kernels differ a little from LiteRT's). Only the runtime:
# the host Python's numpy (must be <2) and Pillow are used. Skipped if the host has no wheel.
if [ ! -f "$HOST_TFLITE_RUNTIME/.tfseg-done" ]; then
    say "host wheel: $TFLITE_RUNTIME_SPEC -> $HOST_TFLITE_RUNTIME"
    as_root rm -rf "$HOST_TFLITE_RUNTIME"
    if as_root "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target "$HOST_TFLITE_RUNTIME" --only-binary=:all: --no-deps "$TFLITE_RUNTIME_SPEC"; then
        as_root touch "$HOST_TFLITE_RUNTIME/.tfseg-done"
    else
        say "no host tflite-runtime wheel for $("$PYTHON" -V 2>&1); the x86 reference will use LiteRT only"
    fi
fi

# 6. Smoke test: the emulated Python starts and reports an aarch64 machine.
machine="$(qemu-aarch64-static -cpu cortex-a72 -L "$ROOT" "$ROOT/usr/bin/python3.11" -c 'import platform; print(platform.machine())')"
[ "$machine" = aarch64 ] || { say "emulated python reports machine=$machine, expected aarch64"; exit 1; }
say "ready: ROOT=$ROOT ($(qemu-aarch64-static --version | head -1)), runtimes: $(ls "$SITE" | tr '\n' ' ')"
