#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) root file system with systemd as its init, for the container
# tests and benchmarks, and prints the path of its tarball (rootfs.tar, importable with
# `hangarctl image import NAME FILE`). debootstrap --variant=minbase plus systemd-sysv and dbus.
#
# usage: scripts/build-debian-rootfs.sh
# The tarball is cached outside the source tree (HANGAR_CACHE, default ~/.cache/hangar), keyed
# by the mirror, the candidate versions of systemd and base-files, and this script's content:
# debootstrap runs once (a few minutes), later calls print the cached path.
set -euo pipefail

cache_root=${HANGAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hangar}
mirror=${HANGAR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=systemd-sysv,dbus
sd=$(apt-cache policy systemd | awk '/Candidate:/{print $2}')
bf=$(apt-cache policy base-files | awk '/Candidate:/{print $2}')
key=$(printf '%s\n' "$mirror" "systemd=$sd" "base-files=$bf" "$include" "$(sha256sum < "$0")" |
    sha256sum | cut -c1-16)
cache="$cache_root/debian12-$key"

if [ ! -s "$cache/rootfs.tar" ]; then
    command -v debootstrap >/dev/null || { echo "build-debian-rootfs: needs debootstrap (scripts/setup.sh)" >&2; exit 1; }
    mkdir -p "$cache_root"
    work=$(mktemp -d "$cache_root/.debian12-XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "build-debian-rootfs: debootstrap bookworm from $mirror (once; cached in $cache)" >&2
    if ! debootstrap --variant=minbase --include="$include" bookworm "$work/root" "$mirror" \
        >"$work/log" 2>&1; then
        tail -n 30 "$work/log" >&2
        exit 1
    fi
    # A container has no consoles to log in on, and no need for the network wait.
    chroot "$work/root" systemctl mask console-getty.service systemd-networkd-wait-online.service \
        >/dev/null 2>&1 || true
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
    echo hangar-debian > "$work/root/etc/hostname"
    tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
    mkdir -p "$work/out"
    mv "$work/rootfs.tar" "$work/out/"
    echo "bookworm systemd=$sd base-files=$bf" > "$work/out/VERSION"
    rm -rf "$cache" && mv "$work/out" "$cache"
fi
echo "$cache/rootfs.tar"
