#!/usr/bin/env bash
# Builds a gzip-compressed newc cpio initramfs from Debian's busybox-static
# (apt-get install busybox-static cpio): /bin/busybox with its applets linked,
# and an /init that mounts proc, sys and dev, prints a marker line, runs a
# command and powers off.
#
#   scripts/build-initramfs.sh OUTPUT.cpio.gz [COMMAND]
#
# COMMAND is run by busybox sh; the default prints the kernel and its CPUs:
# `uname -a; cat /proc/cpuinfo`.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUTPUT.cpio.gz [COMMAND]" >&2
    exit 64
fi
output=$1
command=${2:-"uname -a; cat /proc/cpuinfo"}
busybox=${BUSYBOX:-/bin/busybox}

if ! "$busybox" --list >/dev/null 2>&1; then
    echo "$busybox is missing or not busybox: install it with apt-get install busybox-static" >&2
    exit 1
fi
case "$(LC_ALL=C ldd "$busybox" 2>&1 || true)" in
*"not a dynamic executable"*|*"statically linked"*) ;;
*) echo "$busybox is dynamically linked and would not run alone in an initramfs: apt-get install busybox-static" >&2; exit 1 ;;
esac
command -v cpio >/dev/null || { echo "cpio is missing: apt-get install cpio" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done

# The command goes into its own file so that no quoting of it can break /init.
printf '%s\n' "$command" > "$root/etc/command"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo "SWIFTKVM-INITRAMFS: init started"
sh /etc/command
echo "SWIFTKVM-INITRAMFS: command exited with status $?"
poweroff -f
INIT
chmod 755 "$root/init"

# newc is the only cpio format the kernel unpacks; root owns every file.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 > "$output"
echo "$output: $(stat -c %s "$output") bytes"
