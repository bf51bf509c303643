/**
 * `npm run bench`: tshyve's benchmarks, printed as tables.
 *
 * 1. Lab boot bench: inside ONE `lab/run` (L1 = QEMU/TCG with nested KVM),
 *    dist/bench/lab-boot.js boots the reference Linux guest alternately with
 *    tshyve and QEMU; here we print medians and the tshyve/QEMU ratios.
 * 2. Host start-up bench: exec to first KVM_RUN (and to exit) of a tiny raw
 *    guest on this host's own /dev/kvm.
 *
 *   node dist/bench/run.js [--runs R] [--host-runs N] [--no-lab] [--no-host] [--lab-json FILE] [--sandbox on|off] [--only boot|firmware|disk|nvme|qcow2|snapshot|migration|net|host]
 * --sandbox off runs tshyve with -o sandbox=off in the boot and disk benches (the sandbox's cost: one run each way).
 *
 * --lab-json FILE reprints the table of an earlier lab run's lab-boot.json instead of running the lab.
 *
 * The firmware bench (OVMF booting the lab's EFI disk, minutes per boot) runs
 * only with TSHYVE_LAB_FIRMWARE=1; its tshyve half only when
 * TSHYVE_FIRMWARE_ARGS is set (to the extra tshyve arguments, whitespace-
 * separated, possibly none), otherwise it prints a "skipped" row for tshyve.
 *
 * R (boots per VMM and vCPU count in the lab) also comes from TSHYVE_BENCH_RUNS;
 * N (host runs) from TSHYVE_BENCH_HOST_RUNS.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, accessSync, constants, writeFileSync } from 'node:fs';
import { tmpdir, loadavg, cpus as osCpus } from 'node:os';
import { join } from 'node:path';
import {
  ROOT, CLI, GUEST_DIR, DEFAULT_RUNS, VCPU_RUNNING, stats, tshyveFirmwareArgs, pairedRatios, geoMean, type GeoMean, timedRun,
  type LabResults, type LabRun, type Stats, type Vmm,
} from './common.js';
import { blkPathBench } from './blk-path.js';
import { buildGapInitrd } from './guest-tools.js';
import { formatSteps } from '../src/migration/steps.js';

/** The benches, in the order they run. */
const SECTIONS = ['boot', 'firmware', 'disk', 'nvme', 'qcow2', 'snapshot', 'migration', 'net', 'host'] as const;
type Section = typeof SECTIONS[number];

interface Opts { runs: number; hostRuns: number; lab: boolean; host: boolean; labJson?: string; only?: Section; sandbox: 'on' | 'off' }

function parseArgs(argv: string[]): Opts {
  const num = (s: string | undefined, d: number) => { const n = Number(s); return Number.isInteger(n) && n > 0 ? n : d; };
  const o: Opts = {
    runs: num(process.env.TSHYVE_BENCH_RUNS, DEFAULT_RUNS),
    hostRuns: num(process.env.TSHYVE_BENCH_HOST_RUNS, 10),
    lab: true, host: true, sandbox: 'on',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--runs') o.runs = num(argv[++i], NaN);
    else if (a === '--host-runs') o.hostRuns = num(argv[++i], NaN);
    else if (a === '--no-lab') o.lab = false;
    else if (a === '--no-host') o.host = false;
    else if (a === '--lab-json') o.labJson = argv[++i];
    else if (a === '--sandbox') {
      const s = argv[++i];
      if (s !== 'on' && s !== 'off') { process.stderr.write(`bench: --sandbox takes on or off, not '${s}'\n`); process.exit(2); }
      o.sandbox = s;
    } else if (a === '--only') {
      const s = argv[++i] ?? '';
      if (!(SECTIONS as readonly string[]).includes(s)) { process.stderr.write(`bench: --only takes one of ${SECTIONS.join(', ')}, not '${s}'\n`); process.exit(2); }
      o.only = s as Section;
    } else { process.stderr.write(`bench: unknown argument ${a}\nusage: run.js [--runs R] [--host-runs N] [--no-lab] [--no-host] [--lab-json FILE] [--sandbox on|off] [--only ${SECTIONS.join('|')}]\n`); process.exit(2); }
  }
  if (Number.isNaN(o.runs) || Number.isNaN(o.hostRuns)) { process.stderr.write('bench: --runs/--host-runs need a positive integer\n'); process.exit(2); }
  return o;
}

const out = (s = '') => process.stdout.write(`${s}\n`);

// ---------------------------------------------------------------- formatting

function table(rows: string[][], leftCols = 1): string[] {
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i < leftCols ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('   ').trimEnd());
}

function fmtStats(s: Stats | undefined, scale: number, digits: number, total: number): string {
  if (!s) return `- (0/${total} ok)`;
  const f = (x: number) => (x / scale).toFixed(digits);
  const ok = s.n === total ? '' : ` (${s.n}/${total} ok)`;
  return s.n === 1 ? `${f(s.median)}${ok}` : `${f(s.median)} [${f(s.min)}-${f(s.max)}]${ok}`;
}

function ratio(a: Stats | undefined, b: Stats | undefined): string {
  if (!a || !b || b.median === 0) return '-';
  const r = a.median / b.median;
  return `${r.toFixed(2)} ${r < 1 ? '(ok)' : '(>= 1)'}`;
}

// ---------------------------------------------------------------- 1: lab

/** Why the lab bench cannot run here, or undefined. */
function labUnavailable(): string | undefined {
  if (process.env.TSHYVE_LAB) return 'already inside the lab';
  const need: [string, string][] = [
    [join(ROOT, 'lab', 'run'), 'lab/run'],
    [join(ROOT, 'lab', 'out', 'l1', 'vmlinux'), 'the lab is not built (scripts/setup-lab.sh)'],
    [join(ROOT, 'lab', 'out', 'l1', 'initramfs.img'), 'the lab is not built (scripts/setup-lab.sh)'],
    [join(GUEST_DIR, 'vmlinuz'), 'the reference guest is not built (scripts/setup-lab.sh)'],
    [join(GUEST_DIR, 'initrd.img'), 'the reference guest is not built (scripts/setup-lab.sh)'],
    [join(ROOT, 'dist', 'bench', 'lab-boot.js'), 'dist/bench/lab-boot.js is missing (npm run build)'],
    [CLI, 'dist/bundle/cli/tshyve.js is missing (npm run build)'],
  ];
  for (const [f, why] of need) if (!existsSync(f)) return why;
  if (spawnSync('sh', ['-c', 'command -v qemu-system-x86_64'], { encoding: 'utf8' }).status !== 0) return 'qemu-system-x86_64 is not installed';
  return undefined;
}

/** Other lab VMs (lab/run's qemu) running on this host right now: they share the 2 cores. */
function otherLabVms(): number {
  let n = 0;
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (cmd.startsWith('qemu-system') && cmd.includes('mount_tag=tshyvectl')) n++;
    } catch { /* gone */ }
  }
  return n;
}

function qemuVersion(): string {
  const r = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' });
  return /version ([^\s(]+)/.exec(r.stdout ?? '')?.[1] ?? '?';
}

/**
 * Run lab/run, forwarding the driver's progress lines as they come. With
 * quietMs, a run that prints nothing for that long is stopped (L1 has
 * stalled: its CPUs stop answering now and then under TCG), so that the
 * results written so far are reported instead of waiting for the timeout.
 */
function runLab(args: string[], timeoutMs: number, quietMs?: number): Promise<{ code: number | null; output: string; quiet?: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(join(ROOT, 'lab', 'run'), args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '', line = '', quiet = false;
    let idle: NodeJS.Timeout | undefined;
    const arm = () => {
      if (quietMs === undefined) return;
      clearTimeout(idle);
      idle = setTimeout(() => { quiet = true; child.kill('SIGTERM'); }, quietMs);
    };
    arm();
    const onData = (d: Buffer) => {
      arm();
      const s = d.toString();
      output += s;
      line += s;
      const parts = line.split('\n');
      line = parts.pop() ?? '';
      for (const p of parts) if (p.startsWith('[bench]')) out(`  ${p.replace(/\r$/, '')}`);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
    child.on('close', (code) => { clearTimeout(timer); clearTimeout(idle); resolve({ code, output, ...(quiet ? { quiet } : {}) }); });
  });
}

async function labBench(o: Opts): Promise<void> {
  out('== 1. Lab boot bench: reference Linux guest, tshyve vs QEMU ==');
  if (o.labJson) {
    out(`(results from ${o.labJson})`);
    printLabTable(JSON.parse(readFileSync(o.labJson, 'utf8')) as LabResults);
    return;
  }
  const why = labUnavailable();
  if (why) { out(`lab bench skipped: ${why}`); return; }

  const scratch = mkdtempSync(join(tmpdir(), 'tshyve-bench-'));
  const file = join(scratch, 'lab-boot.json');
  // The driver's own time budget, and lab/run's hard limit a bit above it
  // (L1 boot + the driver's node start + one boot's timeout overlap).
  const perBootS = 120;
  const budgetS = 660;
  const labTimeoutS = budgetS + 100;
  const others = otherLabVms();
  out(`guest: ${join('lab', 'out', 'guest')}/{vmlinuz,initrd.img} (Debian cloud kernel ${readIf(join(GUEST_DIR, 'kernel-release'))} + busybox initrd),`);
  out(`       -m 512M, cmdline "console=ttyS0 quiet tshyve.run=poweroff": boot to init, print, poweroff -f`);
  out(`tshyve: node ${process.version} dist/bundle/cli/tshyve.js -s 0,hostbridge -s 31,lpc -l com1,stdio (direct kernel boot)`);
  out(`QEMU:   qemu-system-x86_64 ${qemuVersion()} -enable-kvm -cpu host -nographic -no-reboot -kernel -initrd (default SeaBIOS + option ROM)`);
  out(`plan: ${o.runs} boot(s) per VMM and vCPU count (-c 1, -c 2), alternating VMMs, after one untimed warm-up boot of each;`);
  out(`      ${perBootS} s timeout per boot, ${budgetS} s budget for all boots; scratch ${scratch}`);
  if (others > 0) out(`note: ${others} other lab VM(s) were running on this host at the start: expect noisier, slower numbers`);
  out('running (every L1 user-space step runs under TCG, so this takes several minutes)...');

  const t0 = Date.now();
  const loadBefore = loadavg()[0];
  const r = await runLab(['--timeout', String(labTimeoutS), '--scratch', scratch, '--',
    process.execPath, join(ROOT, 'dist', 'bench', 'lab-boot.js'), file,
    '--runs', String(o.runs), '--timeout', String(perBootS), '--budget', String(budgetS), '--sandbox', o.sandbox], (labTimeoutS + 60) * 1000);
  const labS = (Date.now() - t0) / 1000;

  let res: LabResults | undefined;
  try { res = JSON.parse(readFileSync(file, 'utf8')) as LabResults; } catch { /* below */ }
  if (r.code !== 0) {
    out(`lab/run exited ${r.code}${r.code === 124 ? ' (timeout)' : r.code === 125 ? ' (the lab failed)' : ''}; its last output:`);
    for (const l of r.output.trimEnd().split('\n').slice(-15)) out(`  | ${l}`);
  }
  if (!res) { out(`lab bench skipped: no results came back (lab/run exited ${r.code})`); return; }
  out(`lab run took ${labS.toFixed(0)} s; host 1-min load average ${loadBefore!.toFixed(2)} before, ${loadavg()[0]!.toFixed(2)} after` +
    (others > 0 || otherLabVms() > 0 ? `; other lab VMs running: ${others} at start, ${otherLabVms()} at end` : ''));
  if (res.note) out(`note: ${res.note}`);
  out();
  printLabTable(res);
  writeFileSync(join(scratch, 'lab-output.txt'), r.output);
}

function readIf(f: string): string {
  try { return readFileSync(f, 'utf8').trim(); } catch { return '?'; }
}

function printLabTable(res: LabResults): void {
  const counted = res.runs.filter((x) => x.run >= 0);
  const pick = (vmm: Vmm, cpus: number) => counted.filter((x) => x.vmm === vmm && x.cpus === cpus);
  const okVals = (rs: LabRun[], f: (x: LabRun) => number | undefined) =>
    rs.filter((x) => x.ok).map(f).filter((v): v is number => v !== undefined);
  const rows: string[][] = [['config', 'metric', 'tshyve', 'QEMU', 'tshyve/QEMU']];
  for (const c of res.cpuConfigs) {
    const t = pick('tshyve', c), q = pick('qemu', c);
    const total = res.runsPerConfig;
    const tw = stats(okVals(t, (x) => x.wallMs)), qw = stats(okVals(q, (x) => x.wallMs));
    const tu = stats(okVals(t, (x) => x.uptimeS)), qu = stats(okVals(q, (x) => x.uptimeS));
    const tm = stats(okVals(t, (x) => x.markerMs)), qm = stats(okVals(q, (x) => x.markerMs));
    const tv = stats(okVals(t, (x) => x.vcpuRunMs));
    // From first KVM_RUN to the guest kernel's clock starting (uptime 0):
    // bzImage setup + decompression, as far as the console lets us see it.
    const tp = stats(okVals(t, (x) => x.markerMs !== undefined && x.vcpuRunMs !== undefined && x.uptimeS !== undefined
      ? x.markerMs - x.vcpuRunMs - x.uptimeS * 1000 : undefined));
    rows.push(
      [`-c ${c}`, 'wall time, spawn to exit (s)', fmtStats(tw, 1000, 2, total), fmtStats(qw, 1000, 2, total), ratio(tw, qw)],
      ['', 'guest uptime at init (s)', fmtStats(tu, 1, 2, total), fmtStats(qu, 1, 2, total), ratio(tu, qu)],
      ['', 'spawn to TSHYVE-GUEST-OK (s)', fmtStats(tm, 1000, 2, total), fmtStats(qm, 1000, 2, total), ratio(tm, qm)],
      ['', 'tshyve: vCPUs running at (s)', fmtStats(tv, 1000, 2, total), '', ''],
      ['', 'tshyve: KVM_RUN to uptime 0 (s)', fmtStats(tp, 1000, 2, total), '', ''],
    );
  }
  for (const l of table(rows, 2)) out(l);
  out('values: median [min-max] of the boots that succeeded; (k/n ok) when some failed. Target: ratio < 1 (tshyve faster than QEMU).');
  out('"vCPUs running at": tshyve\'s own process start to first KVM_RUN (debug.timing=1). "KVM_RUN to uptime 0":');
  out('  spawn-to-marker minus vCPUs-running minus uptime, i.e. roughly the time before the guest kernel\'s clock starts.');
  const warm = res.runs.filter((x) => x.run < 0);
  if (warm.length) {
    out(`warm-up boots (not counted): ${warm.map((x) => `${x.vmm} -c ${x.cpus} ${x.ok ? `${(x.wallMs / 1000).toFixed(2)} s` : `failed (${x.error})`}`).join(', ')}`);
  }
  const failed = res.runs.filter((x) => !x.ok);
  for (const f of failed) {
    out(`FAILED: ${f.vmm} -c ${f.cpus} ${f.run < 0 ? 'warm-up' : `#${f.run + 1}`}: ${f.error}; console tail:`);
    for (const l of (f.tail ?? '').trimEnd().split('\n').slice(-8)) out(`  | ${l}`);
  }
  const missing = res.cpuConfigs.length * 2 * res.runsPerConfig - counted.length;
  if (missing > 0) out(`${missing} planned boot(s) did not run (lab timeout or time budget)`);
  out(`conditions: lab = L1 QEMU/TCG guest (-cpu max, ${res.l1.nproc} vCPUs, kernel ${res.l1.kernel}) with nested KVM (kvm-amd on emulated SVM);`);
  out('  both VMMs run inside L1, so their user space runs under TCG: wall times include each VMM\'s own process');
  out('  start-up under TCG (node + tshyve module loading; QEMU start-up + SeaBIOS/option ROM), which dominate;');
  out('  guest uptime at init measures the guest kernel boot under nested KVM. The host has 2 cores shared with');
  out('  anything else running (other engineers\' lab VMs, builds), so expect noise of tens of percent.');
  out(`  L1 load average at driver start ${res.l1.loadavgStart[0]!.toFixed(2)}, at end ${res.l1.loadavgEnd?.[0]?.toFixed(2) ?? '?'}.`);
}

// ---------------------------------------------------------------- 2: host

async function hostBench(o: Opts): Promise<void> {
  out('== 2. Host start-up bench: exec to first KVM_RUN on this host\'s /dev/kvm ==');
  const raw = join(ROOT, 'dist', 'guests', 'long.bin');
  let why: string | undefined;
  if (!existsSync('/dev/kvm')) why = 'no /dev/kvm on this host';
  else {
    try { accessSync('/dev/kvm', constants.R_OK | constants.W_OK); } catch { why = 'no permission to use /dev/kvm'; }
  }
  if (!why && !existsSync(raw)) why = 'dist/guests/long.bin is missing (npm run build)';
  if (!why && !existsSync(CLI)) why = 'dist/bundle/cli/tshyve.js is missing (npm run build)';
  if (why) { out(`skipped: ${why}`); return; }

  const args = [CLI, '-m', '16M', '-l', 'com1,stdio', '-o', `boot.raw=${raw}`, '-o', 'debug.timing=1', 'bench'];
  out(`command: node ${args.map((a) => a.replace(ROOT + '/', '')).join(' ')}`);
  out(`guest: long.bin (real -> protected -> long mode, prints over com1, powers off; expected exit 1); ${o.hostRuns} runs`);
  const first: number[] = [], wall: number[] = [];
  const fails: string[] = [];
  for (let i = 0; i < o.hostRuns; i++) {
    const t = await timedRun(process.execPath, args, 30_000);
    const m = VCPU_RUNNING.exec(t.output);
    if (t.timedOut || t.code !== 1 || !m) {
      fails.push(`run ${i + 1}: ${t.timedOut ? 'timeout' : `exit ${t.code ?? t.signal}`}${m ? '' : ', no "vCPUs running" line'}: ${t.output.trim().split('\n').slice(-2).join(' | ')}`);
      continue;
    }
    first.push(Number(m[1]));
    wall.push(t.wallMs);
  }
  const fs = stats(first), ws = stats(wall);
  const rows = [
    ['metric', 'median', 'min', 'max', 'ok'],
    ['process start to first KVM_RUN (ms)', ...(fs ? [fs.median, fs.min, fs.max].map((x) => x.toFixed(1)) : ['-', '-', '-']), `${first.length}/${o.hostRuns}`],
    ['wall time, spawn to exit (ms)', ...(ws ? [ws.median, ws.min, ws.max].map((x) => x.toFixed(1)) : ['-', '-', '-']), `${wall.length}/${o.hostRuns}`],
  ];
  for (const l of table(rows)) out(l);
  for (const f of fails) out(`FAILED ${f}`);
  out(`conditions: ${osCpus().length} cores, load average ${loadavg()[0]!.toFixed(2)}; /dev/kvm here is software-emulated (kvm_pvm),`);
  out('  which slows guest instructions, not the VMM start-up measured here. "process start" is node\'s time origin (set at its very start),');
  out('  so it excludes only exec and dynamic loading; the wall time includes them. No QEMU comparison: QEMU has no firmware-free raw mode.');
  out();
  out('virtio-blk request path without I/O (bench/blk-path.ts: a 254-page indirect request, avail ring to used ring, backend stubbed):');
  for (const r of blkPathBench(4000)) out(`  ${r.op.padEnd(5)} ${r.usPerRequest.toFixed(1)} µs per request (${r.requests} requests)`);
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  out(`tshyve bench, ${new Date().toISOString()}, node ${process.version}`);
  out();
  const want = (s: Section) => o.only === undefined || o.only === s;
  if (want('boot')) { if (o.lab) await labBench(o); else out('lab bench skipped: --no-lab'); out(); }
  if (want('firmware')) { if (o.lab) await firmwareBench(o); else out('firmware bench skipped: --no-lab'); out(); }
  if (want('disk')) { if (o.lab) await diskBench(o); else out('disk bench skipped: --no-lab'); out(); }
  if (want('nvme')) { if (o.lab) await diskBench(o, 'nvme'); else out('nvme bench skipped: --no-lab'); out(); }
  if (want('qcow2')) { if (o.lab) await diskBench(o, 'virtio-blk', 'qcow2'); else out('qcow2 bench skipped: --no-lab'); out(); }
  if (want('snapshot')) { if (o.lab) await snapshotBench(o); else out('snapshot bench skipped: --no-lab'); out(); }
  if (want('migration')) { if (o.lab) await migrationBench(o); else out('migration bench skipped: --no-lab'); out(); }
  if (want('net')) { if (o.lab) await netBench(o); else out('net bench skipped: --no-lab'); out(); }
  if (want('host')) { if (o.host) await hostBench(o); else out('host bench skipped: --no-host'); }
}

/** Run dist/bench/lab-NAME.js inside one lab/run and read the JSON it writes; undefined (said why) when it cannot. */
async function labDriver<T>(name: string, o: Opts, driverArgs: string[] = ['--runs', String(o.runs)], quietMs?: number): Promise<T | undefined> {
  const why = labUnavailable();
  if (why) { out(`${name} bench skipped: ${why}`); return undefined; }
  const scratch = mkdtempSync(join(tmpdir(), `tshyve-bench${name}-`));
  const file = join(scratch, `lab-${name}.json`);
  const r = await runLab(['--timeout', '900', '--scratch', scratch, '--', process.execPath, join(ROOT, 'dist', 'bench', `lab-${name}.js`), file, ...driverArgs], 960_000, quietMs);
  if (r.quiet) out(`${name} bench: no output from the lab for ${quietMs! / 1000} s (L1 stalled?): stopped it; the results so far follow`);
  if (!existsSync(file)) { out(`${name} bench failed (lab exit ${r.code}): ${r.output.slice(-800)}`); return undefined; }
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch (e) {
    out(`${name} bench: its results file is unreadable (${e instanceof Error ? e.message : String(e)})`);
    return undefined;
  }
}

/** OVMF booting the lab's EFI disk to power-off: QEMU and tshyve, same firmware and disk. */
async function firmwareBench(o: Opts): Promise<void> {
  out('== 1b. Lab firmware bench: Debian\'s OVMF boots the EFI disk (GRUB, the reference guest) to power-off, tshyve vs QEMU ==');
  if (process.env.TSHYVE_LAB_FIRMWARE !== '1') {
    out('firmware bench skipped: set TSHYVE_LAB_FIRMWARE=1 (each boot takes minutes in the nested lab)');
    return;
  }
  const extra = tshyveFirmwareArgs();
  const args = ['--runs', String(o.runs), ...(extra ? ['--tshyve', ...extra.flatMap((a) => ['--tshyve-arg', a])] : [])];
  // OVMF prints nothing for minutes at a time in the lab (its timer is slow there): only a long silence is a stall
  const res = await labDriver<import('./lab-firmware.js').FirmwareBench>('firmware', o, args, 1000 * (Number(process.env.TSHYVE_BENCH_QUIET_S) || 420));
  if (!res) return;
  out(`QEMU:   ${res.qemuArgv.join(' ')}`);
  out(`tshyve: ${res.tshyveArgv ? res.tshyveArgv.map((a) => a.replace(ROOT + '/', '')).join(' ') : '-'}`);
  const ok = (vmm: string, k: 'wallMs' | 'markerMs') => stats(res.runs.filter((r) => r.vmm === vmm && r.ok).map((r) => r[k]).filter((v): v is number => v !== undefined));
  const n = (vmm: string) => res.runs.filter((r) => r.vmm === vmm).length;
  const rows = [['metric', 'tshyve', 'QEMU', 'tshyve/QEMU']];
  for (const [label, k] of [['command to power-off (s)', 'wallMs'], ['command to TSHYVE-GUEST-OK (s)', 'markerMs']] as const) {
    const t = ok('tshyve', k), q = ok('qemu', k);
    rows.push([label, res.tshyveSkipped ? 'skipped' : fmtStats(t, 1000, 1, n('tshyve')), fmtStats(q, 1000, 1, n('qemu')), res.tshyveSkipped ? '-' : ratio(t, q)]);
  }
  for (const l of table(rows)) out(l);
  if (res.tshyveSkipped) out(`tshyve skipped: ${res.tshyveSkipped}`);
  out('each boot: a fresh copy of OVMF_VARS_4M.fd; -c 1 -m 512M; the guest prints TSHYVE-GUEST-OK, writes an EFI variable and powers off.');
  out('values: median [min-max] of the boots that succeeded. Target: ratio <= 1.');
  if (res.note) out(`note: ${res.note}`);
  for (const r of res.runs.filter((x) => !x.ok)) {
    out(`FAILED: ${r.vmm} #${r.run + 1}: ${r.error}; console tail:`);
    for (const l of (r.tail ?? '').trimEnd().split('\n').slice(-8)) out(`  | ${l}`);
  }
}

/** Sequential direct-I/O dd in the guest on a virtio-blk or NVMe disk, raw or qcow2: tshyve vs QEMU, both up, passes interleaved. */
async function diskBench(o: Opts, dev: import('./lab-disk.js').DiskDev = 'virtio-blk', format: import('./lab-disk.js').Format = 'raw'): Promise<void> {
  const qcow2 = format === 'qcow2';
  // NVMe: 4 KiB random I/O too (randio, 2 s of reads and 2 s of writes per pass; 8 pairs a round, so that two rounds fit the lab's 900 s)
  const rand = dev === 'nvme';
  out(qcow2 ? '== 2b. Lab qcow2 bench: virtio-blk on a qcow2 image (64 KiB clusters), sequential and first-write throughput, tshyve vs QEMU =='
    : `== 2. Lab disk bench: ${dev} sequential throughput in the guest (dd, 1 MiB, O_DIRECT)${rand ? ' and 4 KiB random I/O' : ''}, tshyve vs QEMU ==`);
  // Rounds alternate the boot order, so an even count weighs both orders alike.
  const rounds = Math.max(2, o.runs + (o.runs % 2));
  // qcow2: each pass also writes 64 MiB of new clusters, which the image (in L1's tmpfs) keeps: fewer pairs
  const args = ['--runs', String(rounds), '--dev', dev, '--sandbox', o.sandbox, ...(qcow2 ? ['--format', 'qcow2', '--pairs', '6'] : []), ...(rand ? ['--rand', '2', '--pairs', '8'] : [])];
  // a pass prints every few seconds and a boot within a minute or two: 240 s of silence is a stall
  const res = await labDriver<import('./lab-disk.js').DiskBench>('disk', o, args, 1000 * (Number(process.env.TSHYVE_BENCH_QUIET_S) || 240));
  if (!res) return;
  const steady = res.passes.filter((p) => p.pair >= 0);
  const cold = res.passes.filter((p) => p.pair < 0);
  type K = 'writeMBs' | 'readMBs' | 'allocMBs' | 'randReadIops' | 'randWriteIops';
  const pick = (ps: typeof steady, vmm: string, k: K) => stats(ps.filter((x) => x.vmm === vmm).map((x) => x[k]).filter((v): v is number => v !== undefined));
  const fmtG = (g: GeoMean | undefined) => (g ? `${g.gmean.toFixed(3)} [${g.lo.toFixed(3)}-${g.hi.toFixed(3)}] (${g.gmean >= 1 ? 'ok' : '< 1'})` : '-');
  const rows = [['metric', 'tshyve MB/s', 'QEMU MB/s', 'tshyve/QEMU, paired', 'per round', 'pairs tshyve >= QEMU']];
  const metrics = [['write', 'writeMBs'], ['read', 'readMBs'], ...(qcow2 ? [['first write (allocating)', 'allocMBs']] as const : []),
    ...(res.randSecs ? [['4 KiB random read (IOPS)', 'randReadIops'], ['4 KiB random write (IOPS)', 'randWriteIops']] as const : [])] as const;
  for (const [label, k] of metrics) {
    const pr = pairedRatios(steady, (x) => x[k]);
    const perRound = res.rounds.map((r) => geoMean(pairedRatios(steady.filter((p) => p.round === r.round), (x) => x[k]))?.gmean.toFixed(2) ?? '-');
    const a = pick(steady, 'tshyve', k), b = pick(steady, 'qemu', k);
    rows.push([label, fmtStats(a, 1, 1, a?.n ?? 1), fmtStats(b, 1, 1, b?.n ?? 1),
      fmtG(geoMean(pr)), perRound.join(' '), `${pr.filter((x) => x >= 1).length}/${pr.length}`]);
  }
  for (const [label, k] of [['first pass: write', 'writeMBs'], ['first pass: read', 'readMBs'], ...(qcow2 ? [['first pass: first write', 'allocMBs']] as const : [])] as const) {
    const a = pick(cold, 'tshyve', k), b = pick(cold, 'qemu', k);
    rows.push([label, fmtStats(a, 1, 1, a?.n ?? 1), fmtStats(b, 1, 1, b?.n ?? 1), a && b ? `${(a.median / b.median).toFixed(2)} (medians)` : '-', '', '']);
  }
  for (const l of table(rows)) out(l);
  const failed = res.rounds.filter((r) => !r.ok);
  out(`${res.rounds.length} rounds (${res.rounds.map((r) => r.order.map((v) => (v === 'tshyve' ? 'T' : 'Q')).join('')).join(' ')}: boot order), ` +
    `each: both VMMs boot and stay up, one first pass each, then ${res.pairs} pairs of passes in ABBA order;`);
  out(qcow2
    ? `a pass is dd of ${res.mib} MiB written to clusters no pass wrote before (first write), then of the first ${res.mib} MiB written and read;\n` +
      '  images: qemu-img create -f qcow2 -o cluster_size=65536, a fresh one per VMM and round, in L1\'s tmpfs (QEMU: default writeback cache).'
    : `a pass is dd of ${res.mib} MiB written then read on a raw image in L1's tmpfs (QEMU ${dev === 'nvme' ? '-device nvme, ' : ''}cache=writeback, as tshyve's buffered I/O), timed by the guest.`);
  if (res.randSecs) out(`then 4 KiB random O_DIRECT reads for ${res.randSecs} s and writes for ${res.randSecs} s over the whole disk, ${res.randDepth} in flight (the guest's randio, Linux AIO).`);
  out('"paired": geometric mean of tshyve/QEMU over the pairs, [95 % interval]; "per round": the same per round.');
  out('Target: paired ratio >= 1 (at least QEMU\'s throughput).');
  for (const r of failed) out(`round ${r.round + 1} failed: ${r.error ?? 'did not finish'}`);
}

/** Checkpoint time and restore-to-running latency, next to dd writing as many bytes as the guest has RAM. */
async function snapshotBench(o: Opts): Promise<void> {
  out('== 3. Lab snapshot bench: checkpoint of a 512 MiB guest vs dd of 512 MiB; restore-to-running for 512 MiB and 2 GiB ==');
  const res = await labDriver<import('./lab-snapshot.js').SnapshotBench>('snapshot', o);
  if (!res) return;
  const dd = stats(res.ddMs), ck = stats(res.checkpointMs);
  const mib = res.ramMiB;
  const rate = (ms: number) => `${(mib / (ms / 1000)).toFixed(0)} MiB/s`;
  const rows = [['metric', 'tshyve', 'dd', 'tshyve/dd']];
  rows.push([`save ${mib} MiB (ms)`, fmtStats(ck, 1, 0, o.runs), fmtStats(dd, 1, 0, o.runs),
    ck && dd ? `${(dd.median / ck.median).toFixed(2)} (${dd.median / ck.median >= 0.8 ? 'ok' : '< 0.8'})` : '-']);
  if (ck && dd) rows.push(['rate (RAM size / time)', rate(ck.median), rate(dd.median), '']);
  for (const l of table(rows)) out(l);
  const img = stats(res.imageBytes);
  if (img) out(`the RAM image holds ${(img.median / 2 ** 20).toFixed(1)} MiB of the guest's ${mib} MiB (untouched and zero pages are holes)`);
  const rr = [['restore to running (ms)', ...Object.keys(res.restoreMs).map((k) => `-m ${k}M`)]];
  rr.push(['restore (-r)', ...Object.values(res.restoreMs).map((v) => fmtStats(stats(v), 1, 0, o.runs))]);
  rr.push(['fresh boot', ...Object.values(res.bootMs).map((v) => fmtStats(stats(v), 1, 0, v.length || 1))]);
  for (const l of table(rr)) out(l);
  const [a, b] = Object.values(res.restoreMs).map((v) => stats(v)?.median);
  if (a && b) out(`restore 2 GiB / 512 MiB: ${(b / a).toFixed(2)} (target: does not grow with RAM)`);
  out('ms from process start to the first KVM_RUN; the dd ratio is dd time / save time (target >= 0.8).');
  for (const e of res.errors) out(`error: ${e}`);
}

/** Live migration of an idle and a busy 512 MiB guest on L1's loopback: tshyve vs QEMU, the VMMs' own figures and the gap the guest saw. */
async function migrationBench(o: Opts): Promise<void> {
  out('== 3b. Lab migration bench: live migration of a 512 MiB, 2-vCPU guest, idle and busy, tshyve vs QEMU ==');
  let initrd: string;
  try {
    initrd = buildGapInitrd(mkdtempSync(join(tmpdir(), 'tshyve-benchmig-')));
  } catch (e) {
    out(`migration bench skipped: cannot build its guest tool (gcc -static, cpio): ${(e as Error).message.split('\n')[0]}`);
    return;
  }
  // a migration prints within minutes (two VMMs starting, a boot, 3.5 s of baseline, the migration, 3 s after; L1 shared, up to ~4 min)
  const res = await labDriver<import('./lab-migration.js').MigrationBench>('migration', o, ['--runs', String(o.runs), '--initrd', initrd],
    1000 * (Number(process.env.TSHYVE_BENCH_QUIET_S) || 600));
  if (!res) return;
  const rows = [['guest', 'metric', 'tshyve', 'QEMU', 'tshyve/QEMU']];
  type K = 'totalMs' | 'downtimeMs' | 'guestGapMs' | 'baselineGapMs';
  const metrics: [string, K][] = [['total time (ms)', 'totalMs'], ['downtime, the VMM\'s own (ms)', 'downtimeMs'],
    ['largest gap the guest saw after it (ms)', 'guestGapMs'], ['largest gap in the 3 s before (ms)', 'baselineGapMs']];
  for (const load of ['idle', 'busy'] as const) {
    const ok = (vmm: string) => res.runs.filter((r) => r.vmm === vmm && r.load === load && r.ok);
    // a gap under 5 ms is not printed by the guest: it counts as 5 (an upper bound)
    const vals = (vmm: string, k: K) => ok(vmm).map((r) => r[k] ?? (k === 'guestGapMs' || k === 'baselineGapMs' ? 5 : undefined)).filter((v): v is number => v !== undefined);
    for (const [i, [label, k]] of metrics.entries()) {
      const a = stats(vals('tshyve', k)), b = stats(vals('qemu', k));
      rows.push([i === 0 ? load : '', label, fmtStats(a, 1, 0, a?.n ?? 1), fmtStats(b, 1, 0, b?.n ?? 1), a && b && b.median > 0 ? (a.median / b.median).toFixed(2) : '-']);
    }
  }
  for (const l of table(rows, 2)) out(l);
  out(`${new Set(res.runs.map((r) => r.round)).size} rounds; each: per guest (idle; busy: rewriting every page of ${res.busyMiB} MiB, a pass every ~20 ms), each VMM in turn`);
  out('  (the order alternates): boot the source, start a destination waiting on 127.0.0.1 (tshyve -R / qemu -incoming), migrate live');
  out('  (tshyvectl\'s migrate / HMP migrate, QEMU\'s max-bandwidth lifted; both with a 300 ms downtime target). Values: median [min-max].');
  out('  The VMM\'s downtime: tshyve from pausing the guest to the destination\'s word that it runs it; QEMU\'s `info migrate` downtime.');
  out('  Guest gap: gapclock (bench/guest/gapclock.c) reads CLOCK_MONOTONIC every 200 us and prints the largest gap of each second');
  out('  when >= 5 ms (< 5 counts as 5). Both VMMs stop the guest\'s clock while it is paused, so the gap is the part of the');
  out('  switchover during which the guest\'s clock ran but its vCPUs did not. Target: tshyve\'s downtime <= QEMU\'s, < 100 ms idle.');
  for (const r of res.runs.filter((x) => x.srcSteps)) {
    out(`  tshyve ${r.load} round ${r.round + 1} steps (ms): source ${fmtSteps(r.srcSteps)}; destination ${fmtSteps(r.dstSteps)}`);
  }
  for (const r of res.runs.filter((x) => !x.ok)) out(`${r.vmm} ${r.load} round ${r.round + 1} failed: ${r.error}`);
  for (const r of res.runs.filter((x) => x.ok && x.converged === false)) out(`${r.vmm} ${r.load} round ${r.round + 1}: pre-copy did not converge`);
}

const fmtSteps = (s: Record<string, number> | undefined): string => (s ? formatSteps(s) : '-');

/** virtio-net on a tap: TCP both ways (iperf3) and ping RTTs, tshyve vs QEMU with vhost off and on, passes interleaved. */
async function netBench(o: Opts): Promise<void> {
  out('== 4. Lab network bench: virtio-net on a tap, TCP throughput (iperf3) and ping RTT, tshyve vs QEMU vhost=off / vhost=on ==');
  // a pass prints every 10-20 s and a boot within a minute or two: 240 s of silence is a stall
  // two rounds per --runs: a round is short (5 s per iperf3), and the drift between rounds is what the interval shows
  const res = await labDriver<import('./lab-net.js').NetBench>('net', o, ['--runs', String(2 * o.runs)], 1000 * (Number(process.env.TSHYVE_BENCH_QUIET_S) || 240));
  if (!res) return;
  const timed = res.passes.filter((p) => p.round >= 0);
  type K = 'txMbps' | 'rxMbps' | 'pingMs' | 'pingFloodMs';
  const vals = (vmm: string, k: K) => timed.filter((p) => p.vmm === vmm).map((p) => p[k]).filter((v): v is number => v !== undefined);
  /** tshyve/other per round (the same round's passes, seconds apart), geometric mean [95 % interval] */
  const paired = (other: string, k: K, higherIsBetter: boolean): string => {
    const rs: number[] = [];
    for (const t of timed.filter((p) => p.vmm === 'tshyve')) {
      const q = timed.find((p) => p.vmm === other && p.round === t.round);
      const a = t[k], b = q?.[k];
      if (a !== undefined && b !== undefined && a > 0 && b > 0) rs.push(a / b);
    }
    const g = geoMean(rs);
    if (!g) return '-';
    const ok = higherIsBetter ? g.gmean >= 1 : g.gmean <= 1;
    return `${g.gmean.toFixed(2)}${Number.isNaN(g.lo) ? '' : ` [${g.lo.toFixed(2)}-${g.hi.toFixed(2)}]`} (${ok ? 'ok' : higherIsBetter ? '< 1' : '> 1'})`;
  };
  const rows = [['metric', 'tshyve', 'QEMU vhost=off', 'QEMU vhost=on', 'tshyve/vhost=off', 'tshyve/vhost=on']];
  const metrics: [string, K, number, boolean][] = [
    ['guest->host TCP (Mbit/s)', 'txMbps', 0, true],
    ['host->guest TCP (Mbit/s)', 'rxMbps', 0, true],
    [`ping every 0.2 s, RTT (ms)`, 'pingMs', 3, false],
    ['ping -A (back to back), RTT (ms)', 'pingFloodMs', 3, false],
  ];
  for (const [label, k, d, hi] of metrics) {
    const cell = (v: string) => { const s = stats(vals(v, k)); return fmtStats(s, 1, d, s?.n ?? 1); };
    rows.push([label, cell('tshyve'), cell('qemu'), cell('qemu-vhost'), paired('qemu', k, hi), paired('qemu-vhost', k, hi)]);
  }
  for (const l of table(rows)) out(l);
  const rounds = new Set(timed.map((p) => p.round)).size;
  out(`${rounds} rounds; each: iperf3 -c for ${res.secs} s guest->host, the same with -R host->guest (iperf3's receiver figure),`);
  out(`  ${res.pings} pings at 0.2 s intervals and ${res.pings * 10} with -A (busybox ping's average RTT), guest to the tap's address`);
  out('  in L1\'s namespace; each on the three VMs in turn (the order rotates); one untimed round first. Reference guest, -c 1 -m 512M.');
  out(`  Values: median [min-max] over the rounds; ratios: geometric mean [95 % interval] of the rounds' tshyve/QEMU. ${res.vhost}.`);
  out('Target: throughput ratios >= 1 against vhost=off; RTT ratios <= 1.');
  for (const e of res.bootErrors) out(`boot failed: ${e}`);
  for (const p of res.passes.filter((x) => x.error)) out(`${p.vmm} ${p.round < 0 ? 'first round' : `round ${p.round + 1}`}: ${p.error}`);
}

main().catch((e: unknown) => { process.stderr.write(`bench: ${(e as Error)?.stack ?? String(e)}\n`); process.exit(1); });
