/**
 * Boot benchmark driver. Runs INSIDE the nested lab (L1, real KVM), started
 * by bench/run.ts through `lab/run`. Boots the reference guest (Debian cloud
 * kernel + busybox initrd, `tshyve.run=poweroff`) alternately with tshyve and
 * with QEMU, same kernel, initrd, memory and vCPUs, and records for each boot
 * the wall time from spawn to exit, the guest's uptime when its init ran, and
 * for tshyve its own "vCPUs running" time. One node process drives every boot
 * because process starts cost seconds under TCG.
 *
 *   node dist/bench/lab-boot.js OUT.json [--runs R] [--cpus 1,2] [--warmup 0|1]
 *        [--timeout SECONDS-per-boot] [--budget SECONDS-total]
 *
 * OUT.json (see LabResults in common.ts) is rewritten after every boot, so a
 * partial result survives a lab timeout.
 */
import { writeFileSync, existsSync, readFileSync } from 'node:fs';
import { cpus as osCpus, loadavg, release } from 'node:os';
import { performance } from 'node:perf_hooks';
import { join } from 'node:path';
import {
  CLI, GUEST_DIR, GUEST_CMDLINE, DEFAULT_RUNS, VCPU_RUNNING,
  bootFailure, stripTerminal, timedRun, type LabResults, type LabRun, type Vmm,
} from './common.js';

interface Opts { out: string; runs: number; cpus: number[]; warmup: number; timeoutS: number; budgetS: number; sandbox: string }

function parseArgs(argv: string[]): Opts {
  const envRuns = Number(process.env.TSHYVE_BENCH_RUNS);
  const o: Opts = { out: '', runs: envRuns > 0 ? envRuns : DEFAULT_RUNS, cpus: [1, 2], warmup: 1, timeoutS: 120, budgetS: 660, sandbox: 'on' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = () => { const x = argv[++i]; if (x === undefined) throw new Error(`${a} needs a value`); return x; };
    if (a === '--runs') o.runs = Number(v());
    else if (a === '--cpus') o.cpus = v().split(',').map(Number);
    else if (a === '--warmup') o.warmup = Number(v());
    else if (a === '--timeout') o.timeoutS = Number(v());
    else if (a === '--budget') o.budgetS = Number(v());
    else if (a === '--sandbox') o.sandbox = v();
    else if (!o.out && a !== undefined) o.out = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (!o.out) throw new Error('usage: lab-boot OUT.json [--runs R] [--cpus 1,2] [--warmup 0|1] [--timeout S] [--budget S]');
  if (!(o.runs >= 1) || o.cpus.some((c) => !(c >= 1))) throw new Error('bad --runs or --cpus');
  return o;
}

const kernel = join(GUEST_DIR, 'vmlinuz');
const initrd = join(GUEST_DIR, 'initrd.img');

function command(vmm: Vmm, cpus: number, sandbox: string): [string, string[]] {
  if (vmm === 'tshyve') {
    return [process.execPath, [CLI, '-c', String(cpus), '-m', '512M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio',
      '-o', `boot.kernel=${kernel}`, '-o', `boot.initrd=${initrd}`, '-o', `boot.cmdline=${GUEST_CMDLINE}`,
      '-o', 'debug.timing=1', '-o', `sandbox=${sandbox}`, `bench${cpus}`]];
  }
  return ['qemu-system-x86_64', ['-enable-kvm', '-cpu', 'host', '-m', '512M', '-smp', String(cpus), '-nographic', '-no-reboot',
    '-kernel', kernel, '-initrd', initrd, '-append', GUEST_CMDLINE]];
}

async function boot(vmm: Vmm, cpus: number, run: number, timeoutMs: number, sandbox: string): Promise<LabRun> {
  const [cmd, args] = command(vmm, cpus, sandbox);
  const t = await timedRun(cmd, args, timeoutMs, /TSHYVE-GUEST-OK/);
  const out = stripTerminal(t.output);
  const r: LabRun = { vmm, cpus, run, ok: false, wallMs: Math.round(t.wallMs), code: t.code, signal: t.signal };
  if (t.markerMs !== undefined) r.markerMs = Math.round(t.markerMs);
  const up = /^UPTIME=([\d.]+)\s*$/m.exec(out);
  if (up) r.uptimeS = Number(up[1]);
  const vr = VCPU_RUNNING.exec(out);
  if (vr) r.vcpuRunMs = Number(vr[1]);
  const seenCpus = /^CPUS=(\d+)/m.exec(out);
  const failed = bootFailure(t, out, vmm, timeoutMs);
  if (failed) r.error = failed;
  else if (!seenCpus || Number(seenCpus[1]) !== cpus) r.error = `guest saw CPUS=${seenCpus?.[1] ?? '?'}, expected ${cpus}`;
  else if (r.uptimeS === undefined) r.error = 'no UPTIME= line';
  else r.ok = true;
  if (!r.ok) r.tail = out.slice(-1500);
  return r;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const t0 = performance.now();
  const res: LabResults = {
    startedAt: new Date().toISOString(),
    runsPerConfig: o.runs, cpuConfigs: o.cpus, perRunTimeoutS: o.timeoutS,
    l1: {
      nproc: osCpus().length, loadavgStart: loadavg(), kernel: release(),
      uptimeAtDriverStartS: Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]),
    },
    runs: [],
  };
  const save = () => writeFileSync(o.out, JSON.stringify(res, null, 1));
  for (const f of [CLI, kernel, initrd]) if (!existsSync(f)) { res.note = `missing ${f}`; save(); throw new Error(res.note); }
  save();

  // The plan: optional warm-up boots (first process start and first read of
  // the files over 9p are cold), then per vCPU count R pairs, alternating
  // which VMM goes first so neither always follows the other.
  const plan: Array<[Vmm, number, number]> = [];
  if (o.warmup > 0) plan.push(['tshyve', o.cpus[0]!, -1], ['qemu', o.cpus[0]!, -1]);
  for (const c of o.cpus) {
    for (let i = 0; i < o.runs; i++) {
      const pair: Vmm[] = i % 2 === 0 ? ['tshyve', 'qemu'] : ['qemu', 'tshyve'];
      for (const v of pair) plan.push([v, c, i]);
    }
  }

  for (const [vmm, cpus, run] of plan) {
    const leftS = o.budgetS - (performance.now() - t0) / 1000;
    if (leftS < 20) {
      res.note = `time budget of ${o.budgetS} s used up; later boots not run`;
      process.stdout.write(`[bench] ${res.note}\n`);
      break;
    }
    const r = await boot(vmm, cpus, run, Math.min(o.timeoutS, leftS) * 1000, o.sandbox);
    res.runs.push(r);
    save();
    const what = run < 0 ? 'warm-up' : `#${run + 1}/${o.runs}`;
    const detail = r.ok
      ? `wall ${(r.wallMs / 1000).toFixed(2)} s, uptime@init ${r.uptimeS} s${r.vcpuRunMs !== undefined ? `, vCPUs running at ${r.vcpuRunMs} ms` : ''}`
      : `FAILED (${r.error}) after ${(r.wallMs / 1000).toFixed(1)} s`;
    process.stdout.write(`[bench] ${vmm.padEnd(6)} -c ${cpus} ${what}: ${detail}\n`);
  }
  res.l1.loadavgEnd = loadavg();
  res.finishedAt = new Date().toISOString();
  save();
}

main().catch((e: unknown) => { console.error(`[bench] driver error: ${(e as Error)?.stack ?? String(e)}`); process.exit(1); });
