#!/bin/busybox sh
# modload NAME...: loads the modules the harness shipped for NAME (see
# VmConfig::ship_modules), in the order /lib/modules/NAME.order lists
# (NAME's dependencies first, NAME last), skipping those already loaded:
# modprobe for a guest without modules.dep.
for name in "$@"; do
    order="/lib/modules/$name.order"
    [ -f "$order" ] || { echo "modload: $name was not shipped to this guest" >&2; exit 1; }
    for m in $(cat "$order"); do
        [ -d "/sys/module/$(echo "$m" | tr - _)" ] && continue
        insmod "/lib/modules/$m.ko" || { echo "modload: insmod $m failed" >&2; exit 1; }
    done
done
