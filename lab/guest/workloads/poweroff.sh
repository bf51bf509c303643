# hello, then power off (ACPI): the VMM should see a clean shutdown.
. /workloads/hello.sh
poweroff -f
