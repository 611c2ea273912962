# Stage 2 (PID 1 inside the host-root overlay; run by /.vmrun/busybox sh).
# /vmout is the writable host folder vm.sh made: agent.sh in; kernel.log and rc out.
BB=/.vmrun/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin
export HOME=/root TERM=dumb LANG=C.UTF-8
# Host's /dev, /proc etc. are masked by the guest mounts; host-private state is hidden by tmpfs.
$BB mkdir -p /dev/pts; $BB mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$BB mkdir -p /dev/shm /dev/hugepages; $BB mount -t tmpfs -o mode=1777 tmpfs /dev/shm
for d in /run /var/run /var/lock; do [ -L $d ] || $BB mount -t tmpfs -o mode=1777 tmpfs $d 2>/dev/null; done
$BB mkdir -p /run/lock
/sbin/modprobe configfs 2>/dev/null; $BB mount -t configfs configfs /sys/kernel/config 2>/dev/null
$BB mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
$BB mount -t hugetlbfs hugetlbfs /dev/hugepages 2>/dev/null
$BB ln -sf /proc/self/fd /dev/fd; $BB ln -sf /proc/self/fd/0 /dev/stdin; $BB ln -sf /proc/self/fd/1 /dev/stdout; $BB ln -sf /proc/self/fd/2 /dev/stderr
$BB hostname vmguest; echo vmguest > /etc/hostname
printf '127.0.0.1 localhost vmguest\n::1 localhost ip6-localhost\n' > /etc/hosts
$BB ip link set lo up
ulimit -l unlimited; ulimit -n 65536
echo 1 > /proc/sys/kernel/sysrq
# writable host folders (VM_RW), each 9p tag rwN mounted at its host path
i=0
while [ -f /vmout/rw$i ]; do
  p=$($BB cat /vmout/rw$i); $BB mkdir -p "$p" 2>/dev/null
  $BB mount -t 9p -o trans=virtio,version=9p2000.L,rw,cache=none,msize=512000 rw$i "$p" || echo "vm: mount rw$i $p failed" > /dev/ttyS0
  i=$((i+1))
done
$BB stty -F /dev/ttyS1 raw -echo 2>/dev/null
# VM_INIT=systemd (vm.sh): the prep script /vmout/systemd names runs first
# (what must be in place at boot: packages, configuration, fstab), then
# systemd boots as PID 1 into multi-user.target and a unit of its own runs
# the agent; the agent's end powers the guest off as below.
if [ -e /vmout/systemd ]; then
  prep=$($BB cat /vmout/systemd)
  if [ -n "$prep" ] && ! VM_GUEST=1 /bin/bash "$prep" > /vmout/prep.log 2>&1; then
    echo "@@VMRUN-FATAL prep script $prep failed; its output:" > /dev/ttyS0
    $BB cat /vmout/prep.log > /dev/ttyS0
    $BB poweroff -f
  fi
  # a boot cleans /tmp (tmpfiles.d "D /tmp"): here that is the host's /tmp
  # in the overlay, which may hold the very tree under test (CI clones into
  # /tmp) and takes minutes to whiteout file by file: an empty tmp.conf in
  # /etc/tmpfiles.d overrides it. And the host root's container marker
  # would make systemd think it runs in docker.
  $BB mkdir -p /etc/tmpfiles.d
  : > /etc/tmpfiles.d/tmp.conf
  rm -f /.dockerenv /run/.containerenv
  # what the shared host root enables but has no business in the guest (or
  # would take the console)
  for u in postgresql.service prometheus.service nvmf-autoconnect.service nvmefc-boot-connections.service \
      getty@tty1.service serial-getty@ttyS0.service serial-getty@ttyS1.service console-getty.service \
      apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service \
      fstrim.timer man-db.timer systemd-timesyncd.service systemd-pstore.service uuidd.socket nbd-server.service; do
    $BB ln -sf /dev/null /etc/systemd/system/$u
  done
  cat > /.vmrun/agent-unit.sh <<'UNIT'
#!/bin/bash
BB=/.vmrun/busybox
echo "@@VMRUN-READY systemd uptime=$($BB cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
/bin/bash /vmout/agent.sh < /dev/null > /dev/ttyS1 2>&1
rc=$?
$BB dmesg > /vmout/kernel.log 2>&1
journalctl -b --no-pager > /vmout/journal.log 2>&1
echo $rc > /vmout/rc
$BB sync
echo "@@VMRUN-EXIT rc=$rc uptime=$($BB cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
systemctl poweroff --force --force
UNIT
  cat > /etc/systemd/system/vmrun-agent.service <<'UNIT'
[Unit]
Description=vm.sh job agent (test/vm/stage2.sh)
After=multi-user.target
[Service]
Type=simple
ExecStart=/bin/bash /.vmrun/agent-unit.sh
StandardInput=null
UNIT
  $BB mkdir -p /etc/systemd/system/multi-user.target.wants
  $BB ln -sf /etc/systemd/system/vmrun-agent.service /etc/systemd/system/multi-user.target.wants/vmrun-agent.service
  exec /lib/systemd/systemd --unit=multi-user.target
fi
echo "@@VMRUN-READY uptime=$($BB cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
/bin/bash /vmout/agent.sh < /dev/null > /dev/ttyS1 2>&1
rc=$?
$BB dmesg > /vmout/kernel.log 2>&1
echo $rc > /vmout/rc
$BB sync
echo "@@VMRUN-EXIT rc=$rc uptime=$($BB cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
$BB poweroff -f
echo o > /proc/sysrq-trigger
$BB sleep 10
