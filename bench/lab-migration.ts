/**
 * Migration bench driver. Runs INSIDE the nested lab (started by
 * bench/run.ts through `lab/run`). Each round, for tshyve and QEMU in turn
 * (the order alternates by round) and for an idle and a busy guest: the
 * reference guest (-c 2 -m 512M, the bench's initrd with gapclock:
 * bench/guest-tools.ts) boots, a destination of the same VMM waits for it
 * (tshyve -R 127.0.0.1,PORT; qemu -incoming tcp:127.0.0.1:PORT), and the
 * guest is migrated live over L1's loopback. Recorded:
 *  - the VMM's own total time and downtime: tshyve's result (the source's
 *    pause to the destination's word that the guest runs there), QEMU's
 *    `info migrate` (max-bandwidth lifted: tshyve has no limit);
 *  - tshyve's switchover step by step, on both sides (debug.timing);
 *  - the guest's own view: the largest gap its clock loop saw in its
 *    first seconds on the destination, and in the 3 s before the migration
 *    (gapclock prints a window's largest gap once a second, if >= 5 ms).
 * The busy guest keeps writing every page of 16 MiB (a pass every ~20 ms).
 *
 *   node dist/bench/lab-migration.js OUT.json --initrd PATH [--runs R]
 */
import { connect } from 'node:net';
import { existsSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, GUEST_DIR, type Vmm } from './common.js';
import { Guest } from './guest-console.js';
import { connectVm } from '../src/control/client.js';

export type Load = 'idle' | 'busy';

export interface MigrationRun {
  vmm: Vmm;
  load: Load;
  round: number;
  ok: boolean;
  error?: string;
  /** the VMM's own figures */
  totalMs?: number;
  downtimeMs?: number;
  /** the largest gap gapclock saw on the destination (undefined: none of 5 ms or more) */
  guestGapMs?: number;
  /** the largest gap it saw in the 3 s before the migration (the noise floor) */
  baselineGapMs?: number;
  rounds?: number;
  bytes?: number;
  converged?: boolean;
  /** tshyve: the switchover's steps on the source and the destination (ms) */
  srcSteps?: Record<string, number>;
  dstSteps?: Record<string, number>;
}

export interface MigrationBench { ramMiB: number; cpus: number; busyMiB: number; runs: MigrationRun[] }

const RAM_MIB = 512, CPUS = 2, BUSY_MIB = 16;
const BOOT_TIMEOUT_MS = 150_000;
const MIGRATE_TIMEOUT_MS = 150_000;
const kernel = join(GUEST_DIR, 'vmlinuz');

function guestScript(load: Load): string {
  return ['stty -echo 2>/dev/null', '/bin/gapclock &', ...(load === 'busy' ? [`/bin/gapclock dirty ${BUSY_MIB} &`] : []),
    'echo MIG-READY', 'while :; do sleep 10; done'].join('\n');
}

function tshyveArgs(initrd: string, load: Load, sock: string, name: string, recv?: string): string[] {
  const cmdline = `console=ttyS0 quiet tshyve.cmd=${Buffer.from(guestScript(load)).toString('base64')}`;
  return [CLI, '-c', String(CPUS), '-m', `${RAM_MIB}M`, '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio',
    '-o', `boot.kernel=${kernel}`, '-o', `boot.initrd=${initrd}`, '-o', `boot.cmdline=${cmdline}`, '-o', `control.path=${sock}`,
    '-o', 'debug.timing=1', '-o', 'migration.max_seconds=120', ...(recv ? ['-R', recv] : []), name];
}

function qemuArgs(initrd: string, load: Load, extra: string[]): string[] {
  const cmdline = `console=ttyS0 quiet tshyve.cmd=${Buffer.from(guestScript(load)).toString('base64')}`;
  return ['-enable-kvm', '-cpu', 'host', '-m', `${RAM_MIB}M`, '-smp', String(CPUS), '-nographic', '-no-reboot',
    '-kernel', kernel, '-initrd', initrd, '-append', cmdline, ...extra];
}

/** Is something listening on TCP port `port` (from /proc/net/tcp: a probe connection would be taken as the migration)? */
function listening(port: number): boolean {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return readFileSync('/proc/net/tcp', 'utf8').split('\n').some((l) => { const f = l.trim().split(/\s+/); return f[1]?.endsWith(hex) && f[3] === '0A'; });
}

async function until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what} within ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A progress line (the runner stops a lab that says nothing for minutes: this says where a run waits). */
const say = (what: string): void => { process.stdout.write(`[bench] migration ${what}\n`); };

/** QEMU's human monitor on a unix socket: one command at a time, its output up to the next prompt. */
class Hmp {
  private buf = '';
  private wake: (() => void) | undefined;
  private constructor(private readonly s: ReturnType<typeof connect>) {
    s.on('data', (d: Buffer) => { this.buf += d.toString('latin1'); this.wake?.(); });
  }
  static async open(path: string): Promise<Hmp> {
    await until(() => existsSync(path), 60_000, 'no QEMU monitor socket');
    const s = connect(path);
    await new Promise<void>((resolve, reject) => { s.once('connect', () => resolve()); s.once('error', reject); });
    const h = new Hmp(s);
    await h.prompt();
    return h;
  }
  private async prompt(): Promise<string> {
    const t0 = Date.now();
    for (;;) {
      const i = this.buf.indexOf('(qemu) ');
      if (i >= 0) { const out = this.buf.slice(0, i); this.buf = this.buf.slice(i + 7); return out; }
      if (Date.now() - t0 > 30_000) throw new Error('QEMU monitor: no prompt within 30 s');
      await new Promise<void>((r) => { this.wake = r; setTimeout(r, 200); });
    }
  }
  async cmd(line: string): Promise<string> {
    this.s.write(`${line}\n`);
    return this.prompt();
  }
  close(): void { this.s.destroy(); }
}

/** The largest GAP a guest printed among `lines` ({at, ms}) within [from, to). */
function largestGap(lines: { at: number; ms: number }[], from: number, to: number): number | undefined {
  const xs = lines.filter((l) => l.at >= from && l.at < to).map((l) => l.ms);
  return xs.length ? Math.max(...xs) : undefined;
}

function gapsOf(g: Guest<string>): { at: number; ms: number }[] {
  const out: { at: number; ms: number }[] = [];
  g.onLine = (line) => { const m = /GAP ([\d.]+)/.exec(line); if (m) out.push({ at: performance.now(), ms: Number(m[1]) }); };
  return out;
}

async function oneTshyve(dir: string, initrd: string, load: Load, port: number, run: MigrationRun): Promise<void> {
  const srcSock = join(dir, 'src.sock'), dstSock = join(dir, 'dst.sock');
  const src = new Guest('tshyve-src', process.execPath, tshyveArgs(initrd, load, srcSock, 'migsrc'));
  const dst = new Guest('tshyve-dst', process.execPath, tshyveArgs(initrd, load, dstSock, 'migdst', `127.0.0.1,${port}`));
  const srcGaps = gapsOf(src), dstGaps = gapsOf(dst);
  const dstSteps = new Promise<string>((resolve) => {
    const prev = dst.onLine;
    dst.onLine = (line) => { prev?.(line); if (/switchover on the destination/.test(line)) resolve(line); };
  });
  try {
    await Promise.all([src.waitFor(/MIG-READY/, BOOT_TIMEOUT_MS), dst.waitFor(/waiting for a migration/, BOOT_TIMEOUT_MS)]);
    say(`${load} tshyve: both up, migrating`);
    await sleep(3500);
    const t0 = performance.now();
    const vm = await connectVm(srcSock);
    const r = await Promise.race([vm.migrate(`127.0.0.1,${port}`, { live: true }),
      sleep(MIGRATE_TIMEOUT_MS).then(() => { throw new Error(`the migration did not end in ${MIGRATE_TIMEOUT_MS / 1000} s`); })]);
    vm.close();
    const t1 = performance.now();
    Object.assign(run, { totalMs: r.totalMs, downtimeMs: r.downtimeMs, rounds: r.rounds, bytes: r.bytes, converged: r.converged, srcSteps: r.steps });
    await sleep(3000);
    const d = await connectVm(dstSock);
    const stats = await d.stats();
    d.close();
    run.dstSteps = Object.fromEntries(Object.entries(stats).filter(([k]) => /^migration_step_/.test(k)).map(([k, v]) => [k.replace(/^migration_step_|_ms$/g, ''), Number(v)]));
    await Promise.race([dstSteps, sleep(1000)]);
    run.baselineGapMs = largestGap(srcGaps, t0 - 3500, t0);
    run.guestGapMs = largestGap(dstGaps, 0, t1 + 3000);
    run.ok = true;
  } finally {
    // the guest reads nothing from its console: no 'q' to power off by
    await Promise.all([src.kill(), dst.kill()]);
  }
}

async function oneQemu(dir: string, initrd: string, load: Load, port: number, run: MigrationRun): Promise<void> {
  const mon = join(dir, 'qemu-mon.sock');
  const src = new Guest('qemu-src', 'qemu-system-x86_64', qemuArgs(initrd, load, ['-monitor', `unix:${mon},server=on,wait=off`]));
  const dst = new Guest('qemu-dst', 'qemu-system-x86_64', qemuArgs(initrd, load, ['-incoming', `tcp:127.0.0.1:${port}`]));
  const srcGaps = gapsOf(src), dstGaps = gapsOf(dst);
  let hmp: Hmp | undefined;
  try {
    await src.waitFor(/MIG-READY/, BOOT_TIMEOUT_MS);
    await until(() => listening(port), BOOT_TIMEOUT_MS, 'the destination QEMU did not listen');
    say(`${load} qemu: both up, migrating`);
    hmp = await Hmp.open(mon);
    await hmp.cmd('migrate_set_parameter max-bandwidth 100G');
    await sleep(3500);
    const t0 = performance.now();
    const started = await hmp.cmd(`migrate -d tcp:127.0.0.1:${port}`);
    if (/error|fail/i.test(started)) throw new Error(`migrate: ${started.trim()}`);
    let info = '';
    for (;;) {
      info = await hmp.cmd('info migrate');
      const status = /Migration status: (\S+)/.exec(info)?.[1];
      if (status === 'completed') break;
      if (status === 'failed' || status === 'cancelled') throw new Error(`QEMU migration ${status}: ${info.trim().split('\n').slice(-3).join(' | ')}`);
      if (performance.now() - t0 > MIGRATE_TIMEOUT_MS) {
        await hmp.cmd('migrate_cancel');
        throw new Error(`QEMU migration did not complete in ${MIGRATE_TIMEOUT_MS / 1000} s (did not converge)`);
      }
      await sleep(100);
    }
    const t1 = performance.now();
    const num = (re: RegExp) => { const m = re.exec(info); return m ? Number(m[1]) : undefined; };
    Object.assign(run, {
      totalMs: num(/total time: (\d+) ms/), downtimeMs: num(/downtime: (\d+) ms/), rounds: num(/dirty sync count: (\d+)/),
      bytes: (num(/transferred ram: (\d+) kbytes/) ?? 0) * 1024, converged: true,
    });
    await sleep(3000);
    run.baselineGapMs = largestGap(srcGaps, t0 - 3500, t0);
    run.guestGapMs = largestGap(dstGaps, 0, t1 + 3000);
    run.ok = true;
  } finally {
    hmp?.close();
    // the source is paused after a migration, the destination runs the guest: neither powers off by itself
    await Promise.all([src.kill(), dst.kill()]);
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const out = args[0];
  const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const initrd = opt('--initrd');
  if (!out || !initrd) throw new Error('usage: lab-migration OUT.json --initrd PATH [--runs R]');
  const rounds = Number(opt('--runs') ?? 0) || 2;
  const only = opt('--only') as Vmm | undefined;
  const res: MigrationBench = { ramMiB: RAM_MIB, cpus: CPUS, busyMiB: BUSY_MIB, runs: [] };
  const save = (): void => writeFileSync(out, JSON.stringify(res, null, 1));
  let port = 7800;
  for (let r = 0; r < rounds; r++) {
    const order = ((r % 2 ? ['qemu', 'tshyve'] : ['tshyve', 'qemu']) as Vmm[]).filter((v) => !only || v === only);
    for (const load of ['idle', 'busy'] as Load[]) {
      for (const vmm of order) {
        const run: MigrationRun = { vmm, load, round: r, ok: false };
        res.runs.push(run);
        process.stdout.write(`[bench] migration round ${r + 1} ${load} ${vmm}: booting the source and the destination\n`);
        const dir = mkdtempSync(join(tmpdir(), 'tshyve-benchmig-'));
        try {
          await (vmm === 'tshyve' ? oneTshyve : oneQemu)(dir, initrd, load, port++, run);
        } catch (e) {
          run.error = e instanceof Error ? e.message : String(e);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
        const f = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(0));
        process.stdout.write(`[bench] migration round ${r + 1} ${load} ${vmm.padEnd(6)} ${run.ok
          ? `total ${f(run.totalMs)} ms, downtime ${f(run.downtimeMs)} ms, guest gap ${run.guestGapMs === undefined ? '< 5' : f(run.guestGapMs)} ms`
            + ` (before: ${run.baselineGapMs === undefined ? '< 5' : f(run.baselineGapMs)} ms), ${run.rounds ?? '-'} rounds`
            + `${run.srcSteps ? `; source ${JSON.stringify(run.srcSteps)}; destination ${JSON.stringify(run.dstSteps)}` : ''}`
          : `FAILED: ${run.error}`}\n`);
        save();
      }
    }
  }
  save();
}

main().catch((e: unknown) => { console.error(`[bench] migration driver error: ${(e as Error)?.stack ?? String(e)}`); process.exit(1); });
