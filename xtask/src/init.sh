#!/bin/sh
# PID 1 of a gate test guest. xtask/src/initramfs.rs fills in @MODULES@; the per-run part
# (/gate/run.sh, /gate/nonce, /gate/mode) is a second cpio archive appended by xtask/src/guest.rs.
# The host root arrives read-only over 9p; only tmpfs mounts are writable. /gate/shares lists
# host directories to mount back over the scratch tmpfs, /gate/cwd the command's directory. Whatever happens,
# this script ends the guest with `poweroff -f`, and the host trusts only the exit line that
# carries this run's nonce.
# /gate/mode `systemd`: instead of running the command in a chroot, /init hands PID 1 over to
# the host's own systemd (switch_root), which boots gate-guest.target: a oneshot unit runs the
# command, prints the same exit line and powers off; emergency or rescue mode print an init error line instead. The host's /var is writable
# there (an overlay) for StateDirectory=, LogsDirectory= and the journal.
echo # ends the firmware's "Booting from ROM.." line
export PATH=/bin
/bin/busybox --install -s /bin
NONCE=$(cat /gate/nonce)
MODE=$(cat /gate/mode 2>/dev/null)
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
if [ "$MODE" = systemd ]; then
    mkdir -p /var-rw && mount -t tmpfs -o mode=0755 tmpfs /var-rw \
        && mkdir /var-rw/upper /var-rw/work || die "preparing a writable /var failed"
    mount -t overlay -o lowerdir=$H/var,upperdir=/var-rw/upper,workdir=/var-rw/work overlay $H/var \
        || die "mounting an overlay over the host's /var failed"
fi
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

boot_systemd() {
    [ -x $H/lib/systemd/systemd ] \
        || die "systemd is not installed on the host (/lib/systemd/systemd); run cargo xtask setup"
    # systemd needs a machine id; the host's /etc is read-only here.
    if [ ! -s $H/etc/machine-id ]; then
        [ -e $H/etc/machine-id ] || die "the host has no /etc/machine-id to boot systemd with"
        tr -d '-' </proc/sys/kernel/random/uuid >/machine-id \
            && mount --bind /machine-id $H/etc/machine-id || die "providing a machine id failed"
    fi
    # /run, not /tmp: systemd-tmpfiles empties /tmp at boot.
    G=$H/run/gate-guest U=$H/run/systemd/system
    mkdir -p $G $U && cp /gate/run.sh $G/run.sh || die "copying the run script failed"
    cat >$G/systemd-run.sh <<END
/bin/sh /run/gate-guest/run.sh
rc=\$?
echo
echo "GATE-GUEST-EXIT=\$rc nonce=$NONCE"
exec /bin/systemctl poweroff --force --force
END
    cat >$G/systemd-failed.sh <<END
/bin/systemctl --failed --no-pager --full
echo "GATE-GUEST-INIT-ERROR nonce=$NONCE: systemd entered \$1 mode instead of running the command; see its messages above"
exec /bin/systemctl poweroff --force --force
END
    cat >$U/gate-guest.target <<END
[Unit]
Description=gate guest: the command under systemd
AllowIsolate=yes
Wants=gate-guest.service
END
    cat >$U/gate-guest.service <<END
[Unit]
Description=gate guest command
DefaultDependencies=no
# A basic system, as services see it (sysinit, the journal), and D-Bus (systemd-run --wait).
Wants=basic.target dbus.service
After=basic.target dbus.service
[Service]
Type=oneshot
TimeoutStartSec=infinity
Environment=GATE_AUDIT_KEY=$GATE_AUDIT_KEY
ExecStart=/bin/sh /run/gate-guest/systemd-run.sh
# Whatever went wrong, power off: the host then reports a guest that did not report.
FailureAction=poweroff-force
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/console
END
    for unit in emergency rescue; do
        cat >$U/$unit.service <<END
[Unit]
Description=gate guest: report systemd's $unit mode and power off
DefaultDependencies=no
[Service]
Type=oneshot
ExecStart=/bin/sh /run/gate-guest/systemd-failed.sh $unit
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/console
END
    done
    # A host root that carries /.dockerenv (a CI container's) would make systemd believe it runs
    # in a Docker container: it would read its "kernel command line" from its own argv and skip
    # what a real machine runs. An empty $container tells PID 1 authoritatively that it is not.
    export container=
    exec switch_root $H /lib/systemd/systemd --unit=gate-guest.target
}

[ "$MODE" = systemd ] && boot_systemd
# The command runs with the host root as the real root of a mount namespace of its own (moved
# onto /, as switch_root does, but in a child namespace: this shell keeps the initramfs to
# report and power off). A plain chroot would leave every process "chrooted", and the kernel
# refuses user namespaces to chrooted processes.
unshare -m sh -c 'cd "$1" && mount -o move . / && exec chroot . /bin/sh /tmp/.gate/run.sh' \
    sh "$H"
rc=$?
echo
echo "GATE-GUEST-EXIT=$rc nonce=$NONCE"
poweroff -f
