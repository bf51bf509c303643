// Boots the reference guest N times with 2 vCPUs, each running a shell loop
// that prints a line and sleeps (WORK=fork: forks without sleeping), kills it
// after SECS of output, and reports each boot that ended on its own: the
// nested lab's rare triple faults and hangs (lab/README.md, Caveats), under
// tshyve or, for comparison, QEMU. Run it in the lab:
//   lab/run --timeout 2400 -- env VMM=tshyve N=20 SECS=20 node lab/stress-2cpu.mjs
// env: N (10), SECS (40), VMM (tshyve|qemu), USLEEP (100000), WORK (fork),
//      MINBEATS (fewer lines counts as a failure), EXTRA (tshyve args), CMDLINE_EXTRA
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
const ROOT = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, ''), GUEST = `${ROOT}/lab/out/guest`, CLI = `${ROOT}/dist/bundle/cli/tshyve.js`;
const N = Number(process.env.N ?? 10), SECS = Number(process.env.SECS ?? 40), VMM = process.env.VMM ?? 'tshyve', CPUS = process.env.CPUS ?? '2';
const extra = (process.env.EXTRA ?? '').split(' ').filter(Boolean);
const US = process.env.USLEEP ?? '100000';
const work = process.env.WORK === 'fork'
  ? 'for c in 0 1; do taskset -c $c sh -c "i=0; while :; do i=\\$((i+1)); X=\\$(cut -d\\" \\" -f39 /proc/self/stat); [ \\$((i % 20)) = 0 ] && echo H$c=\\$i; done" & done'
  : `for c in 0 1; do taskset -c $c sh -c "i=0; while :; do i=\\$((i+1)); echo H$c=\\$i P=\\$(cut -d\\" \\" -f39 /proc/self/stat); usleep ${US}; done" & done`;
const cmd = Buffer.from([work,
  'wait', ''].join('\n')).toString('base64');
const cmdline = `console=ttyS0 quiet tshyve.cmd=${cmd} ${process.env.CMDLINE_EXTRA ?? ''}`;
const argv = VMM === 'qemu'
  ? ['qemu-system-x86_64', ['-enable-kvm', '-cpu', 'host', '-m', '512M', '-smp', CPUS, '-nographic', '-no-reboot', '-kernel', `${GUEST}/vmlinuz`, '-initrd', `${GUEST}/initrd.img`, '-append', cmdline]]
  : [process.execPath, [CLI, '-c', CPUS, '-m', '512M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio', '-o', `boot.kernel=${GUEST}/vmlinuz`, '-o', `boot.initrd=${GUEST}/initrd.img`, '-o', `boot.cmdline=${cmdline}`, ...extra, 'stress']];
function once() {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(argv[0], argv[1], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '', t;
    child.stdout.on('data', (d) => { stdout += d; if (!t && /H\d=/.test(stdout)) t = setTimeout(() => child.kill('SIGKILL'), SECS * 1000); });
    child.stderr.on('data', (d) => { stderr += d; });
    const hard = setTimeout(() => child.kill('SIGKILL'), (SECS + 90) * 1000);
    child.on('close', (code) => { clearTimeout(hard); clearTimeout(t); resolve({ code, stdout, stderr, ms: Date.now() - t0, started: !!t }); });
  });
}
let bad = 0;
for (let i = 0; i < N; i++) {
  const r = await once();
  const beats = (r.stdout.match(/^H\d=/gm) ?? []).length;
  const ok = r.code === null && r.started && beats >= Number(process.env.MINBEATS ?? 0);
  if (!ok) bad++;
  console.log(`[tf] ${VMM} run ${i}: code ${r.code} ms ${r.ms} beats ${beats} ${ok ? '' : 'STDERR ' + JSON.stringify(r.stderr.slice(-1200)) + ' TAIL ' + JSON.stringify(r.stdout.slice(-1500))}`);
}
console.log(`[tf] ${VMM} ${process.env.CMDLINE_EXTRA ?? ''} ${extra.join(' ')}: ${bad} of ${N} ended on their own`);
