# hello, then reboot (keyboard controller / ACPI / triple fault, kernel's choice).
. /workloads/hello.sh
reboot -f
