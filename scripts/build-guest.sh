#!/usr/bin/env bash
# Builds hangar's built-in tiny guest: the kernel of Debian's linux-image-amd64 plus an
# initramfs of busybox-static whose init prints a fixed marker on the serial console and
# powers off on the ACPI power button (acpid, with the kernel's button and evdev modules).
# With hangar.root=/dev/vda on the kernel's command line it boots a distribution's ext4 root
# file system from that disk instead (scripts/build-debian-vm-image.sh makes one).
#
# usage: scripts/build-guest.sh OUTDIR
# The result is cached outside the source tree (HANGAR_CACHE, default ~/.cache/hangar),
# keyed by the kernel package version, the busybox version and this script's content.
set -euo pipefail

out=${1:?usage: build-guest.sh OUTDIR}
cache_root=${HANGAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hangar}
marker="HANGAR-GUEST-READY"

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { echo "build-guest: cannot resolve linux-image-amd64" >&2; exit 1; }
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
bbver=$(dpkg-query -W -f='${Version}' busybox-static)
key=$(printf '%s\n%s\n%s\n' "$kpkg=$kver" "busybox-static=$bbver" "$(sha256sum < "$0")" | sha256sum | cut -c1-16)
cache="$cache_root/guest-$key"

if [ ! -s "$cache/vmlinuz" ] || [ ! -s "$cache/initrd.img" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download -q "$kpkg" >/dev/null 2>&1) ||
        { echo "build-guest: apt-get download $kpkg failed" >&2; exit 1; }
    dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/k"
    kdir=${kpkg#linux-image-}
    root="$work/root"
    mkdir -p "$root"/{bin,sbin,etc/acpi,proc,sys,dev,tmp,run,var/log,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    # virtio_blk and what it needs, in load order: a boot disk shows up as /dev/vda. Then
    # virtio-scsi and SCSI disks: hot-plugged disks (scsi-hd) show up as /dev/sdX.
    for m in drivers/acpi/button.ko drivers/input/evdev.ko drivers/virtio/virtio_ring.ko \
        drivers/virtio/virtio.ko drivers/virtio/virtio_pci_legacy_dev.ko \
        drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci.ko \
        drivers/block/virtio_blk.ko drivers/scsi/scsi_common.ko drivers/scsi/scsi_mod.ko \
        drivers/scsi/virtio_scsi.ko crypto/crct10dif_common.ko lib/crc-t10dif.ko lib/crc64.ko \
        lib/crc64-rocksoft.ko block/t10-pi.ko drivers/scsi/sd_mod.ko \
        fs/mbcache.ko lib/crc16.ko fs/jbd2/jbd2.ko crypto/crc32c_generic.ko fs/ext4/ext4.ko; do
        cp "$work/k/lib/modules/$kdir/kernel/$m" "$root/lib/modules/"
    done
    # busybox init: PID 1 that handles poweroff (SIGUSR2) by running ::shutdown and powering off.
# A shell on the serial console (ttyS0) and one on the display's text console (tty1: what VNC
# shows and types into).
    cat > "$root/etc/inittab" <<'INITTAB'
::sysinit:/etc/rc
::respawn:/bin/acpid -f -l /dev/null -c /etc/acpi -a /etc/acpid.conf
ttyS0::respawn:/bin/sh
tty1::respawn:/bin/sh
::shutdown:/bin/echo HANGAR-GUEST-POWEROFF
INITTAB
    cat > "$root/etc/rc" <<RC
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Block devices as they come and go (hot-plugged disks): mdev, listening to the kernel's
# uevents, runs /etc/block-event.
mdev -d
for m in button evdev virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
    scsi_common scsi_mod virtio_scsi crct10dif_common crc-t10dif crc64 crc64-rocksoft t10-pi sd_mod; do
    insmod /lib/modules/\$m.ko
done
hostname hangar-guest
# What the boot disk holds, as the guest sees it: its first bytes (letters, digits, '-').
if cat /sys/bus/pci/devices/*/device | grep -qE '0x1001|0x1042'; then
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.1; done
fi
[ -b /dev/vda ] && echo "HANGAR-DISK: \$(head -c 64 /dev/vda | tr -cd 'A-Za-z0-9-')"
# How it was booted: UEFI (OVMF) or a BIOS.
if [ -d /sys/firmware/efi ]; then echo "HANGAR-FIRMWARE: uefi"; else echo "HANGAR-FIRMWARE: bios"; fi
echo "$marker"
RC
    # A line on the serial console for every SCSI disk that appears (with its size in 512-byte
    # sectors) or goes.
    echo 'sd[a-z]+ 0:0 660 */etc/block-event' > "$root/etc/mdev.conf"
    cat > "$root/etc/block-event" <<'EVENT'
#!/bin/sh
case "$ACTION" in
add) echo "HANGAR-BLOCK: add $MDEV $(cat /sys/class/block/$MDEV/size)" ;;
remove) echo "HANGAR-BLOCK: remove $MDEV" ;;
esac > /dev/ttyS0
EVENT
    chmod +x "$root/etc/block-event"
    # acpid runs /etc/acpi/<action> for an event whose text contains <key>.
    printf 'PWRF power\nPWRB power\n' > "$root/etc/acpid.conf"
    printf '#!/bin/sh\nexec /bin/poweroff\n' > "$root/etc/acpi/power"
    chmod +x "$root/etc/rc" "$root/etc/acpi/power"
    for a in $(/bin/busybox --list); do
        [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
    done
    # /init: with hangar.root=DEV on the kernel's command line, DEV holds a distribution's root
    # file system (ext4) and its own init takes over (switch_root); else the built-in guest.
    cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
dev=
for a in $(cat /proc/cmdline); do
    case "$a" in hangar.root=*) dev=${a#hangar.root=} ;; esac
done
if [ -z "$dev" ]; then
    umount /proc
    exec /sbin/init
fi
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
    mbcache crc16 jbd2 crc32c_generic ext4; do
    insmod /lib/modules/$m.ko
done
for i in $(seq 50); do [ -b "$dev" ] && break; sleep 0.1; done
mkdir -p /newroot
if ! mount -t ext4 -o rw "$dev" /newroot; then
    echo "HANGAR-GUEST: cannot mount $dev"
    exec /sbin/init
fi
umount /sys /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
    chmod +x "$root/init"
    ln -sf /bin/busybox "$root/sbin/init"
    mkdir -p "$cache.tmp"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$cache.tmp/initrd.img"
    cp "$work/k/boot/vmlinuz-$kdir" "$cache.tmp/vmlinuz"
    echo "$kpkg=$kver busybox-static=$bbver marker=$marker" > "$cache.tmp/VERSION"
    rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi

mkdir -p "$out"
for f in vmlinuz initrd.img VERSION; do
    if ! cmp -s "$cache/$f" "$out/$f"; then
        cp "$cache/$f" "$out/$f.tmp" && mv -f "$out/$f.tmp" "$out/$f"
    fi
done
echo "$out"
