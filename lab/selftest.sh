#!/usr/bin/env bash
# Lab self-test: checks lab/run and the reference guest end to end, with
# timings. About 1-2 minutes. Usage: lab/selftest.sh   (exit 0 = all passed)
set -uo pipefail
cd "$(dirname "$0")/.."
RUN=lab/run FAILS=0
ok()   { printf 'ok   %-58s %s\n' "$1" "${2:-}"; }
bad()  { printf 'FAIL %-58s %s\n' "$1" "${2:-}"; FAILS=$((FAILS + 1)); }
now()  { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

t=$(now); out=$($RUN -- sh -c 'ls /dev/kvm; echo hi' </dev/null); rc=$?
[ $rc = 0 ] && [ "$out" = $'/dev/kvm\nhi' ] && ok "lab/run -- sh -c 'ls /dev/kvm; echo hi'" "$(secs $t)" || bad "ls /dev/kvm (rc=$rc)" "$out"

t=$(now); $RUN -- false </dev/null; rc=$?
[ $rc = 1 ] && ok "lab/run -- false exits 1" "$(secs $t)" || bad "lab/run -- false (rc=$rc)"

S=$(mktemp -d); trap 'rm -rf "$S"' EXIT
t=$(now); out=$($RUN --scratch "$S" -- node -e 'require("fs").writeFileSync(process.argv[1] + "/v", process.version); console.log(process.version)' "$S" </dev/null); rc=$?
[ $rc = 0 ] && [ "$out" = "$(node -e 'console.log(process.version)')" ] && [ "$(cat "$S/v" 2>/dev/null)" = "$out" ] \
  && ok "node inside the lab, result via --scratch" "$(secs $t)" || bad "node in lab (rc=$rc)" "$out"

t=$(now); $RUN --timeout 5 -- sleep 60 </dev/null 2>/dev/null; rc=$?
[ $rc = 124 ] && ok "--timeout 5 kills a hung run (exit 124)" "$(secs $t)" || bad "timeout (rc=$rc)"

# Reference guest under real KVM inside L1: several boots in one L1 run.
cat > "$S/guest.sh" <<'GUEST'
Q="qemu-system-x86_64 -enable-kvm -cpu host -m 512M -nographic -no-reboot -kernel lab/out/guest/vmlinuz -initrd lab/out/guest/initrd.img"
boot() { local s=$(date +%s%N); timeout 120 $Q "$@" </dev/null | tr -d '\r' | sed 's/\x1b[^a-zA-Z]*[a-zA-Z]//g' | grep -a '^TSHYVE\|^CPUS=\|^NPROC=\|^UPTIME=\|^hello'; echo "TIME=$(( ($(date +%s%N) - s) / 1000000 ))ms"; }
echo "== poweroff"; boot -smp 2 -append 'console=ttyS0 quiet tshyve.run=poweroff'
echo "== default";  boot -smp 1 -append 'console=ttyS0 quiet'
echo "== cmd";      boot -smp 1 -append "console=ttyS0 quiet tshyve.cmd=$(printf 'echo "hello $((6*7))"; exit 3' | base64 -w0)"
echo "== reboot";   boot -smp 1 -append 'console=ttyS0 quiet tshyve.run=reboot'
GUEST
t=$(now); out=$($RUN -- bash "$S/guest.sh" </dev/null); rc=$?
echo "$out" | sed 's/^/     | /'
sec() { echo "$out" | awk -v s="== $1" '/^== /{p=($0==s); next} p'; }
sec poweroff | grep -q '^TSHYVE-GUEST-OK' && sec poweroff | grep -q '^CPUS=2' && ok "guest: tshyve.run=poweroff, CPUS=2" "$(sec poweroff | grep "^TIME=")" || bad "guest poweroff"
sec default | grep -q '^TSHYVE-GUEST-OK' && sec default | grep -q '^CPUS=1' && ok "guest: default (hello, poweroff)" "$(sec default | grep "^TIME=")" || bad "guest default"
sec cmd | grep -q '^hello 42' && sec cmd | grep -q '^TSHYVE-CMD-EXIT=3' && ok "guest: tshyve.cmd=<base64>" "$(sec cmd | grep "^TIME=")" || bad "guest cmd"
sec reboot | grep -q '^TSHYVE-GUEST-OK' && ok "guest: tshyve.run=reboot (-no-reboot exits)" "$(sec reboot | grep "^TIME=")" || bad "guest reboot"
echo "     (one L1 boot for the 4 guest boots: $(secs $t), rc=$rc)"

[ $FAILS = 0 ] && echo "selftest: all passed" || echo "selftest: $FAILS failed"
exit $((FAILS > 0))
