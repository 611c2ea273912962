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
