#!/usr/bin/env bash
# Builds a Debian 12 VM disk image (qcow2, one ext4 file system, 2 GiB) from the debootstrap
# root of scripts/build-debian-rootfs.sh, and prints its path. No mount is needed: mkfs.ext4 -d
# fills the file system from a directory, qemu-img convert makes the qcow2. The built-in guest's
# kernel and initramfs boot it with hangar.root=/dev/vda on the kernel's command line; systemd
# then runs hangar-boot-count.service, which counts the boots in /var/lib/hangar-boots and
# prints "HANGAR-DEBIAN-BOOT: N" on the serial console.
#
# usage: scripts/build-debian-vm-image.sh
# Cached outside the source tree (HANGAR_CACHE, default ~/.cache/hangar), keyed by the root
# file system's cache entry and this script's content.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
cache_root=${HANGAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hangar}
rootfs=$("$src/scripts/build-debian-rootfs.sh")
key=$(printf '%s\n' "$rootfs" "$(sha256sum < "$0")" | sha256sum | cut -c1-16)
cache="$cache_root/debian12-vm-$key"

if [ ! -s "$cache/disk.qcow2" ]; then
    mkdir -p "$cache_root"
    work=$(mktemp -d "$cache_root/.debian12-vm-XXXXXX")
    trap 'rm -rf "$work"' EXIT
    mkdir "$work/root"
    tar -C "$work/root" --numeric-owner -xpf "$rootfs"
    # The root file system is the disk: no fstab entries needed; a getty on the serial console.
    echo hangar-debian-vm > "$work/root/etc/hostname"
    cat > "$work/root/etc/systemd/system/hangar-boot-count.service" <<'UNIT'
[Unit]
Description=Count this machine's boots (hangar's tests)
After=local-fs.target

[Service]
Type=oneshot
StandardOutput=tty
TTYPath=/dev/ttyS0
ExecStart=/bin/sh -c 'n=$(($(cat /var/lib/hangar-boots 2>/dev/null || echo 0) + 1)); echo $n > /var/lib/hangar-boots; sync; echo "HANGAR-DEBIAN-BOOT: $n"'

[Install]
WantedBy=multi-user.target
UNIT
    mkdir -p "$work/root/etc/systemd/system/multi-user.target.wants"
    ln -s ../hangar-boot-count.service \
        "$work/root/etc/systemd/system/multi-user.target.wants/hangar-boot-count.service"
    truncate -s 2G "$work/disk.raw"
    mkfs.ext4 -q -L hangar-root -d "$work/root" "$work/disk.raw"
    mkdir -p "$work/out"
    qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/out/disk.qcow2"
    echo "debian 12 from $rootfs" > "$work/out/VERSION"
    rm -rf "$cache" && mv "$work/out" "$cache"
fi
echo "$cache/disk.qcow2"
