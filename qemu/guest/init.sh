#!/bin/busybox sh
# /init of the test guest, written by the qemu-harness crate.
# Serial ports: ttyS0 kernel console, ttyS1 the command's stdout,
# ttyS2 its stderr, ttyS3 the exit status ("EXIT <n>") for the host.
/bin/busybox --install -s /bin
export PATH=/opt/nvme/bin:/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "vm-init: started" > /dev/ttyS0
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages
for port in /dev/ttyS1 /dev/ttyS2 /dev/ttyS3; do stty -F "$port" raw -echo; done

fail() {
    echo "vm-init: $*" > /dev/ttyS2
    echo "INIT-FAILED" > /dev/ttyS3
    poweroff -f
}

. /etc/vm.conf

for m in $MODULES; do
    insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
done

nvme_functions() {
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/class")" = "0x010802" ] && echo "${d##*/}"
    done
}

case "$BIND" in
vfio)
    for bdf in $(nvme_functions); do
        echo vfio-pci > "/sys/bus/pci/devices/$bdf/driver_override" || fail "driver_override $bdf"
        echo "$bdf" > /sys/bus/pci/drivers_probe || fail "probe $bdf"
        [ -e "/sys/bus/pci/devices/$bdf/iommu_group" ] || fail "$bdf has no IOMMU group"
        [ "$(basename "$(readlink "/sys/bus/pci/devices/$bdf/driver")")" = vfio-pci ] \
            || fail "$bdf did not bind to vfio-pci"
    done
    ;;
kernel)
    # The kernel nvme driver probes asynchronously: wait for the block devices.
    for bdf in $(nvme_functions); do
        i=0
        while [ ! -d "/sys/bus/pci/devices/$bdf/nvme" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    done
    i=0
    while ! ls /dev/nvme*n1 > /dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    ;;
esac

[ -n "$HUGEPAGES" ] && echo "$HUGEPAGES" > /proc/sys/vm/nr_hugepages

# Near the host's timeout, leave the stacks of a hung guest on the console:
# blocked (D state) tasks, then every CPU's backtrace.
if [ -n "$WATCHDOG" ]; then
    (
        sleep "$WATCHDOG"
        echo "vm-init: watchdog after ${WATCHDOG}s: blocked tasks and CPUs follow" > /dev/ttyS0
        echo w > /proc/sysrq-trigger
        echo l > /proc/sysrq-trigger
    ) < /dev/null > /dev/null 2>&1 &
fi

mkdir -p /root && cd /root
sh /etc/vm-cmd < /dev/null > /dev/ttyS1 2> /dev/ttyS2
echo "EXIT $?" > /dev/ttyS3
poweroff -f
