#!/bin/sh
# PID 1 of a gate test guest. xtask/src/initramfs.rs fills in @MODULES@; the per-run part
# (/gate/run.sh and /gate/nonce) is a second cpio archive appended by xtask/src/guest.rs.
# The host root arrives read-only over 9p; only tmpfs mounts are writable. /gate/shares lists
# host directories to mount back over the scratch tmpfs, /gate/cwd the command's directory. Whatever happens,
# this script ends the guest with `poweroff -f`, and the host trusts only the exit line that
# carries this run's nonce.
echo # ends the firmware's "Booting from ROM.." line
export PATH=/bin
/bin/busybox --install -s /bin
NONCE=$(cat /gate/nonce)
H=/host

die() {
    echo "GATE-GUEST-INIT-ERROR nonce=$NONCE: $*"
    poweroff -f
    exit 1
}

mnt() { # mnt TYPE OPTIONS TARGET
    mkdir -p "$3" 2>/dev/null
    mount -t "$1" -o "$2" "$1" "$3" || die "mounting $1 on $3 failed"
}

mount -t proc proc /proc || die "mounting /proc failed"
for m in @MODULES@; do
    insmod "/lib/modules/$m.ko" || die "insmod $m failed"
done

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot $H \
    || die "mounting the host root (9p tag hostroot) failed"
# Host directories the command needs that the scratch tmpfs mounts below would hide (a clone
# under /root, /home or /tmp): held here first, mounted back at the same path afterwards.
n=0
while IFS= read -r dir; do
    [ -n "$dir" ] || continue
    [ -d "$H$dir" ] || die "the shared directory $dir is not in the host root seen over 9p"
    mkdir -p "/shares/$n" && mount --bind "$H$dir" "/shares/$n" \
        || die "holding the shared directory $dir failed"
    n=$((n + 1))
done </gate/shares
mnt tmpfs mode=1777 $H/tmp
mnt tmpfs mode=1777 $H/var/tmp
mnt tmpfs mode=0755 $H/home
mnt tmpfs mode=0700 $H/root
mnt tmpfs mode=0755 $H/run
mnt proc rw $H/proc
mnt sysfs rw $H/sys
mnt devtmpfs mode=0755 $H/dev
mnt devpts gid=5,mode=620,ptmxmode=666 $H/dev/pts
mnt tmpfs mode=1777 $H/dev/shm
mnt cgroup2 rw $H/sys/fs/cgroup
mnt bpf mode=0700 $H/sys/fs/bpf
mnt securityfs rw $H/sys/kernel/security
mount -t tracefs tracefs $H/sys/kernel/tracing 2>/dev/null # optional: bpf_printk output

n=0
while IFS= read -r dir; do
    [ -n "$dir" ] || continue
    mkdir -p "$H$dir" && mount --bind "/shares/$n" "$H$dir" \
        || die "mounting the shared directory $dir back over the guest's scratch tmpfs failed"
    n=$((n + 1))
done </gate/shares
CWD=$(cat /gate/cwd)
if [ -n "$CWD" ] && [ ! -d "$H$CWD" ]; then
    for scratch in @SCRATCH_DIRS@; do
        case "$CWD/" in
        "$scratch"/*) die "the working directory $CWD is not visible in the guest: it is under $scratch, which the guest replaces with its own tmpfs, and it was not among the shared directories ($(tr '\n' ' ' </gate/shares))" ;;
        esac
    done
    die "the working directory $CWD does not exist in the host root seen over 9p"
fi

ifconfig lo 127.0.0.1 netmask 255.0.0.0 up || die "bringing up lo failed"
hostname gate-guest
mkdir -p $H/tmp/.gate && cp /gate/run.sh $H/tmp/.gate/run.sh || die "copying the run script failed"

# gate's audit signing key defaults to /var/lib/gate, read-only here.
export GATE_AUDIT_KEY=/run/gate/audit.key
chroot $H /bin/sh /tmp/.gate/run.sh
rc=$?
echo
echo "GATE-GUEST-EXIT=$rc nonce=$NONCE"
poweroff -f
