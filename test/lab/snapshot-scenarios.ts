/**
 * Lab scenarios for save and restore (issue 4): a 2-vCPU Linux guest
 * checkpointed with tshyvectl while it runs, killed, restored with
 * `tshyve -r`; suspended and restored twice from one snapshot; and a guest
 * whose virtio-blk, virtio-rnd and virtio-console are used across a
 * suspend/restore. Each tshyve run is one phase of the result.
 */
import type { ChildProcess } from 'node:child_process';
import { bounded } from './proc.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { ROOT, CLI } from '../helpers.js';
import { ext4WithPayload, guestCmd, hostReads, vmArgs, type BootResult } from './linux-driver.js';

const CTL = join(ROOT, 'dist', 'bundle', 'cli', 'tshyvectl.js');

export interface Phase {
  what: string;
  code: number | null;
  signal?: string | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** stdout length when the checkpoint was asked for and when it returned */
  marks?: [number, number];
}

/** A tshyve process whose output can be waited on (`prefix`: a command it runs under, e.g. `ip netns exec NS`). */
export class Vm {
  readonly child: ChildProcess;
  readonly done: Promise<Phase>;
  readonly t0 = Date.now();
  private readonly out: { stdout: string; stderr: string };
  get stdout(): string { return this.out.stdout; }
  get stderr(): string { return this.out.stderr; }
  constructor(readonly what: string, args: string[], timeoutMs = 240_000, prefix: string[] = []) {
    const p = bounded([...prefix, process.execPath, CLI, ...args], timeoutMs);
    this.child = p.child;
    this.out = p.out;
    this.done = p.done.then((e) => ({ what, ...e }));
  }
  async until(pred: (out: string) => boolean, timeoutMs = 120_000): Promise<boolean> {
    const t0 = Date.now();
    while (!pred(this.stdout)) {
      if (Date.now() - t0 > timeoutMs || this.child.exitCode !== null || this.child.signalCode !== null) return pred(this.stdout);
      await new Promise((r) => setTimeout(r, 100));
    }
    return true;
  }
}

export function tshyvectl(args: string[]): Promise<Phase> {
  return bounded([process.execPath, CTL, ...args], 120_000).done
    .then(({ code, stdout, stderr, ms }) => ({ what: `tshyvectl ${args.join(' ')}`, code, stdout, stderr, ms }));
}

/** The highest count loop `n` printed in `text` (0 if none). */
export function lastCount(text: string, n: 0 | 1): number {
  let last = 0;
  for (const m of text.matchAll(new RegExp(`^N${n}=(\\d+) P=\\d$`, 'gm'))) last = Math.max(last, Number(m[1]));
  return last;
}

/** Two loops, pinned to CPU 0 and CPU 1, each printing its count and the CPU it ran on. */
export const COUNTER_LINES = [
  'for c in 0 1; do taskset -c $c sh -c "i=0; while :; do i=\\$((i+1)); echo N$c=\\$i P=\\$(cut -d\\" \\" -f39 /proc/self/stat); usleep 100000; done" & done',
  'wait',
];
const counters = guestCmd(COUNTER_LINES);
/** Both loops have counted to `k` in `out`. */
export const both = (k: number) => (out: string) => lastCount(out, 0) >= k && lastCount(out, 1) >= k;

/** `vmArgs` with `-r FILE` before the VM name. */
export function restoreArgs(args: string[], file: string): string[] {
  return [...args.slice(0, -1), '-r', file, args.at(-1)!];
}

export const snapshotScenarios: Record<string, () => Promise<BootResult>> = {
  async 'snapshot-2cpu-counter'() {
    const dir = mkdtempSync(join(tmpdir(), 'tshyve-snap-'));
    const sock = join(dir, 'ctl.sock'), ck = join(dir, 'ck.json'), susp = join(dir, 'susp.json');
    const args = vmArgs(2, `hello tshyve.cmd=${counters}`, 'stdio', ['-o', `control.path=${sock}`]);
    const phases: Phase[] = [];
    // 1: runs; checkpoint while it runs; it keeps running; killed.
    const a = new Vm('run', args);
    if (await a.until(both(5))) {
      const m0 = a.stdout.length;
      const c = await tshyvectl([`--socket=${sock}`, `--checkpoint=${ck}`]);
      const m1 = a.stdout.length;
      phases.push(c);
      const after = lastCount(a.stdout, 0);
      await a.until((o) => lastCount(o, 0) >= after + 3, 30_000);
      a.child.kill('SIGKILL');
      phases.push({ ...(await a.done), marks: [m0, m1] });
    } else {
      a.child.kill('SIGKILL');
      phases.push(await a.done);
      return { name: 'snapshot-2cpu-counter', code: null, stdout: a.stdout, stderr: a.stderr, ms: Date.now() - a.t0, phases };
    }
    // 2: restored from the checkpoint; runs on; suspended.
    const b = new Vm('restore', restoreArgs(args, ck));
    await b.until(both(lastCount(phases.at(-1)!.stdout.slice(0, phases.at(-1)!.marks![1]), 0) + 5), 90_000);
    phases.push(await tshyvectl([`--socket=${sock}`, `--suspend=${susp}`]));
    phases.push(await b.done);
    // 3, 4: two restores of the one suspended snapshot.
    for (const what of ['resume-1', 'resume-2']) {
      const r = new Vm(what, restoreArgs(args, susp));
      await r.until((o) => (o.match(/^N0=/gm)?.length ?? 0) >= 3 && (o.match(/^N1=/gm)?.length ?? 0) >= 3, 90_000);
      phases.push(await tshyvectl([`--socket=${sock}`, '--force-poweroff']));
      phases.push(await r.done);
    }
    const last = phases.at(-1)!;
    return { name: 'snapshot-2cpu-counter', code: last.code, stdout: last.stdout, stderr: last.stderr, ms: 0, phases };
  },

  async 'snapshot-virtio'() {
    // Disk, entropy and a console port, used before a suspend and after the restore.
    const { dir, img, md5 } = ext4WithPayload('tshyve-snapv-', 200_000, 13);
    const sock = join(dir, 'ctl.sock'), port = join(dir, 'port1.sock'), susp = join(dir, 'susp.json');
    const cmd = guestCmd([
      'mkdir -p /mnt && mount -t ext4 /dev/vda /mnt',
      'echo before-suspend > /mnt/a.txt && sync',
      'for i in $(seq 50); do P=$(ls /dev/vport*p0 2>/dev/null | head -1); [ -n "$P" ] && break; sleep 0.2; done',
      'exec 3<>$P',
      'echo PHASE1-READY',
      'read -t 300 line <&3; echo GOT=$line',
      'echo HWRNG=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d " \\n")',
      'echo GUEST_MD5=$(md5sum /mnt/payload.bin | cut -d" " -f1)',
      'echo written-after-restore > /mnt/b.txt && sync && umount /mnt && echo GUEST_WROTE=yes',
      'echo after-restore >&3',
      'sleep 1; poweroff -f',
    ]);
    const args = vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', [
      '-s', '4,virtio-rnd', '-s', `5,virtio-blk,${img}`, '-s', `6,virtio-console,port1=${port}`, '-o', `control.path=${sock}`,
    ]);
    const phases: Phase[] = [];
    const hold = (onData?: (d: string, s: Socket) => void): { got: () => string; close: () => void } => {
      let got = '', s: Socket | undefined, closed = false;
      const attempt = () => {
        if (closed) return;
        s = connect(port);
        s.on('error', () => setTimeout(attempt, 200));
        s.on('connect', () => onData?.('', s!));
        s.on('data', (d) => { got += d; onData?.(got, s!); });
      };
      attempt();
      return { got: () => got, close: () => { closed = true; s?.destroy(); } };
    };
    const a = new Vm('run', args);
    const c1 = hold();
    const ready = await a.until((o) => o.includes('PHASE1-READY'));
    phases.push(await tshyvectl([`--socket=${sock}`, `--suspend=${susp}`]));
    phases.push(await a.done);
    c1.close();
    if (!ready) return { name: 'snapshot-virtio', code: null, stdout: a.stdout, stderr: a.stderr, ms: 0, phases };
    const b = new Vm('restore', restoreArgs(args, susp));
    const c2 = hold((_got, s) => { if (!(s as Socket & { sent?: boolean }).sent) { (s as Socket & { sent?: boolean }).sent = true; s.write('go\n'); } });
    const rb = await b.done;
    c2.close();
    phases.push(rb);
    const hostA = hostReads(img, '/a.txt'), hostB = hostReads(img, '/b.txt');
    return {
      name: 'snapshot-virtio', code: rb.code, stdout: a.stdout + rb.stdout, stderr: rb.stderr, ms: 0, phases,
      expectedMd5: md5, hostReadBack: hostA + hostB, tcp: c2.got(),
    };
  },
};
