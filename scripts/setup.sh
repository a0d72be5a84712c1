#!/usr/bin/env bash
# Installs every Debian 12 package hangar needs to build, run and test. Idempotent: packages
# already present are not fetched again.
set -euo pipefail
pkgs=(
    build-essential cmake ninja-build ccache pkg-config clang-format
    libboost-dev libsdbus-c++-dev libsdbus-c++-bin libsimdjson-dev libsystemd-dev
    libssl-dev libspdlog-dev libfmt-dev libgtest-dev googletest libsqlite3-dev sqlite3
    qemu-system-x86 qemu-utils ovmf busybox-static cpio gzip curl xz-utils squashfs-tools
    python3 python3-websockets python3-jsonschema dbus systemd-container wrk openssl
    clang libclang-rt-14-dev nodejs debootstrap util-linux e2fsprogs
    chromium
)
# npm comes with Node.js builds other than Debian's; only Debian's nodejs needs the package.
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
