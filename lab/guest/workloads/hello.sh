# Print the marker, vCPU counts and uptime.
echo "TSHYVE-GUEST-OK"
echo "NPROC=$(nproc)"
echo "CPUS=$(grep -c '^processor' /proc/cpuinfo)"
echo "UPTIME=$(cut -d' ' -f1 /proc/uptime)"
