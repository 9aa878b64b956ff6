#!/bin/sh
# PID 1 of a gate test guest. xtask/src/initramfs.rs fills in @MODULES@; the per-run part
# (/gate/run.sh and /gate/nonce) is a second cpio archive appended by xtask/src/guest.rs.
# The host root arrives read-only over 9p; only tmpfs mounts are writable. Whatever happens,
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
