/**
 * Save/restore bench driver. Runs INSIDE the nested lab (started by
 * bench/run.ts through `lab/run`), everything on L1's /tmp:
 *  - dd writes as many bytes as the guest has RAM (bs=1M, fsync), the yardstick;
 *  - a booted guest (-m 512M) is checkpointed with tshyvectl: the time the
 *    save took (tshyve's own report) and the bytes the RAM image holds;
 *  - the guest is suspended and restored with `-o debug.timing=1`: ms from
 *    process start to the restored vCPUs running, for 512 MiB and 2 GiB
 *    guests (it must not grow with RAM), next to a fresh boot's.
 *
 *   node dist/bench/lab-snapshot.js OUT.json [--runs R]
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, GUEST_DIR, ROOT, VCPU_RUNNING, timedRun } from './common.js';

const CTL = join(ROOT, 'dist', 'bundle', 'cli', 'tshyvectl.js');
const SAVED = /in ([\d.]+) s \(vCPUs paused ([\d.]+) s\)/;

export interface SnapshotBench {
  ramMiB: number;
  ddMs: number[];
  checkpointMs: number[];
  /** bytes the RAM image holds (allocated blocks), per checkpoint */
  imageBytes: number[];
  restoreMs: Record<string, number[]>;
  bootMs: Record<string, number[]>;
  errors: string[];
}

function vmArgs(memMiB: number, sock: string, extra: string[] = []): string[] {
  const cmd = Buffer.from('echo BENCH-READY\nwhile :; do sleep 1; done\n').toString('base64');
  return ['-c', '1', '-m', `${memMiB}M`, '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio',
    '-o', `boot.kernel=${join(GUEST_DIR, 'vmlinuz')}`, '-o', `boot.initrd=${join(GUEST_DIR, 'initrd.img')}`,
    '-o', `boot.cmdline=console=ttyS0 quiet tshyve.cmd=${cmd}`, '-o', `control.path=${sock}`, '-o', 'debug.timing=1', ...extra, 'benchsnap'];
}

function ctl(args: string[]): string {
  const r = spawnSync(process.execPath, [CTL, ...args], { encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`;
}

/** Start a VM, resolve once `marker` is printed (or it ends); returns its ms-to-running and a handle. */
function start(args: string[], marker: RegExp): Promise<{ ms?: number; child: ReturnType<typeof spawn>; out: () => string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let done = false;
    const check = () => {
      if (done || !marker.test(out)) return;
      done = true;
      const m = VCPU_RUNNING.exec(out);
      resolve({ ms: m ? Number(m[1]) : undefined, child, out: () => out });
    };
    child.stdout.on('data', (d) => { out += d; check(); });
    child.stderr.on('data', (d) => { out += d; check(); });
    child.on('close', () => { if (!done) { done = true; resolve({ child, out: () => out }); } });
    setTimeout(() => { if (!done) { done = true; child.kill('SIGKILL'); resolve({ child, out: () => out }); } }, 180_000);
  });
}

async function stop(h: { child: ReturnType<typeof spawn> }): Promise<void> {
  if (h.child.exitCode !== null) return;
  await new Promise<void>((r) => { h.child.once('close', () => r()); h.child.kill('SIGKILL'); });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const outFile = args[0];
  if (!outFile) throw new Error('usage: lab-snapshot OUT.json [--runs R]');
  const runs = Number(args[args.indexOf('--runs') + 1] ?? 0) || 3;
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-benchsnap-'));
  const res: SnapshotBench = { ramMiB: 512, ddMs: [], checkpointMs: [], imageBytes: [], restoreMs: {}, bootMs: {}, errors: [] };
  const save = () => writeFileSync(outFile, JSON.stringify(res, null, 1));
  const sock = join(dir, 'ctl.sock');

  for (let i = 0; i < runs; i++) {
    const f = join(dir, 'dd.img');
    const t = await timedRun('dd', ['if=/dev/zero', `of=${f}`, 'bs=1M', `count=${res.ramMiB}`, 'conv=fsync'], 120_000);
    if (t.code === 0) res.ddMs.push(t.wallMs); else res.errors.push(`dd: ${t.output.slice(-200)}`);
    rmSync(f, { force: true });
  }
  save();

  for (const mem of [512, 2048]) {
    const key = String(mem);
    res.restoreMs[key] = [];
    res.bootMs[key] = [];
    const vm = await start(vmArgs(mem, sock), /BENCH-READY/);
    if (vm.ms === undefined) { res.errors.push(`boot ${mem}: ${vm.out().slice(-300)}`); await stop(vm); continue; }
    res.bootMs[key]!.push(vm.ms);
    const ck = join(dir, `ck-${mem}.json`);
    if (mem === res.ramMiB) {
      for (let i = 0; i < runs; i++) {
        const o = ctl([`--socket=${sock}`, `--checkpoint=${ck}`]);
        const m = SAVED.exec(o);
        if (m) { res.checkpointMs.push(Number(m[1]) * 1000); res.imageBytes.push(statSync(`${ck}.ram`).blocks * 512); } else res.errors.push(`checkpoint: ${o.slice(-300)}`);
      }
    }
    const s = ctl([`--socket=${sock}`, `--suspend=${ck}`]);
    if (!SAVED.test(s)) res.errors.push(`suspend ${mem}: ${s.slice(-300)}`);
    await stop(vm);
    for (let i = 0; i < runs; i++) {
      const r = await start(vmArgs(mem, sock, ['-r', ck]), VCPU_RUNNING);
      if (r.ms !== undefined) res.restoreMs[key]!.push(r.ms); else res.errors.push(`restore ${mem}: ${r.out().slice(-300)}`);
      await stop(r);
    }
    rmSync(ck, { force: true });
    rmSync(`${ck}.ram`, { force: true });
    save();
  }
  save();
}

main().catch((e) => { console.error(e); process.exit(1); });
