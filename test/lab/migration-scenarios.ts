/**
 * Lab scenario for migration (issue 18), one guest moved three times:
 * a 2-vCPU Debian guest counting on both vCPUs, writing checksummed
 * blocks to its virtio-blk disk and rewriting 8 MiB of memory all the time (the same file on every side: shared
 * storage) runs in network namespace A; it is warm-migrated with tshyvectl
 * over a unix socket to a second tshyve in A, then live-migrated over TCP
 * to a third in namespace B (a veth pair joins A and B); then a live
 * migration to a fourth is cut by killing that destination mid-transfer,
 * and the guest must run on where it was. The host reads every block back.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, openSync, readSync, closeSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI } from '../helpers.js';
import { bounded, type Bounded } from './proc.js';
import { guestCmd, vmArgs, type BootResult } from './linux-driver.js';
import { COUNTER_LINES, both, lastCount, tshyvectl, type Phase } from './snapshot-scenarios.js';
import { connectVm } from '../../src/control/client.js';
import type { MigrationResult } from '../../src/vm/control.js';

const NS_A = 'tshv-mig-a', NS_B = 'tshv-mig-b';
const IP_B = '10.98.0.2', PORT = 7700;
const sh = (cmd: string): string => execFileSync('sh', ['-c', cmd], { encoding: 'utf8' });

/** What the checks in test/linux-lab.test.ts read, besides each process's phase. */
export interface MigrationLab {
  live?: MigrationResult;
  liveError?: string;
  /** the live migration to the destination that was killed: its error */
  killedError?: string;
  /** the source's state after that, from --get-stats */
  stateAfterKill?: string;
  /** blocks 1..upTo the guest said it wrote, and those that did not read back right */
  blocks?: { upTo: number; bad: number[] };
}

/** Namespaces A (10.98.0.1) and B (10.98.0.2) joined by a veth pair (made again each time). */
function vethPair(): void {
  sh(`ip netns del ${NS_A} 2>/dev/null; ip netns del ${NS_B} 2>/dev/null; ip netns add ${NS_A} && ip netns add ${NS_B} && `
    + `ip link add tmig0 type veth peer name tmig1 && ip link set tmig0 netns ${NS_A} && ip link set tmig1 netns ${NS_B} && `
    + `ip -n ${NS_A} addr add 10.98.0.1/24 dev tmig0 && ip -n ${NS_B} addr add ${IP_B}/24 dev tmig1 && `
    + `ip -n ${NS_A} link set tmig0 up && ip -n ${NS_B} link set tmig1 up && ip -n ${NS_A} link set lo up && ip -n ${NS_B} link set lo up`);
}

/** Block i of the disk: "BLK i md5(payload-i)", zero-padded to 512 bytes, fsynced before the guest prints W=i. */
const BLOCK_LINES = [
  'i=0; while :; do i=$((i+1)); s=$(echo payload-$i | md5sum | cut -c1-32); '
    + 'printf "BLK %d %s\\n" $i $s | dd of=/dev/vda bs=512 seek=$i conv=sync,fsync 2>/dev/null && echo W=$i; usleep 200000; done &',
];

/** A guest that keeps dirtying memory: 8 MiB of a tmpfs file rewritten from /dev/urandom over and over. */
const DIRTY_LINES = ['while :; do dd if=/dev/urandom of=/tmp/dirty bs=64k count=128 conv=notrunc 2>/dev/null; usleep 100000; done &'];

const lastWrite = (out: string): number => Math.max(0, ...[...out.matchAll(/^W=(\d+)$/gm)].map((m) => Number(m[1])));

function verifyBlocks(img: string, upTo: number): number[] {
  const bad: number[] = [];
  const fd = openSync(img, 'r');
  const b = Buffer.alloc(512);
  try {
    for (let i = 1; i <= upTo; i++) {
      readSync(fd, b, 0, 512, i * 512);
      const want = Buffer.alloc(512);
      want.write(`BLK ${i} ${createHash('md5').update(`payload-${i}\n`).digest('hex')}\n`);
      if (!b.equals(want)) bad.push(i);
    }
  } finally {
    closeSync(fd);
  }
  return bad;
}

/** A tshyve in namespace `ns`. */
class Vm {
  readonly p: Bounded;
  constructor(readonly what: string, ns: string, args: string[]) {
    this.p = bounded(['ip', 'netns', 'exec', ns, process.execPath, CLI, ...args], 400_000);
  }
  get stdout(): string { return this.p.out.stdout; }
  async until(pred: (out: string, err: string) => boolean, timeoutMs = 120_000): Promise<boolean> {
    const t0 = Date.now();
    while (!pred(this.p.out.stdout, this.p.out.stderr)) {
      if (Date.now() - t0 > timeoutMs || this.p.child.exitCode !== null || this.p.child.signalCode !== null) return false;
      await new Promise((r) => setTimeout(r, 100));
    }
    return true;
  }
  async phase(): Promise<Phase> { return { what: this.what, ...(await this.p.done) }; }
}

const listening = (_o: string, err: string) => /waiting for a migration/.test(err);

export const migrationScenarios: Record<string, () => Promise<BootResult>> = {
  async 'migration-2cpu'() {
    vethPair();
    const dir = mkdtempSync(join(tmpdir(), 'tshyve-mig-'));
    const img = join(dir, 'disk.img');
    writeFileSync(img, Buffer.alloc(16 << 20));
    const cmd = guestCmd([...DIRTY_LINES, ...BLOCK_LINES, ...COUNTER_LINES]);
    const ctl = (n: string) => join(dir, `${n}.sock`);
    // vmArgs ends with the VM's name: -R goes before it.
    const args = (n: string, recv?: string) => {
      // A live migration stops pre-copy after 4 rounds if the guest's dirtying outruns it; the source connects over TCP from the default sandbox.
      const a = vmArgs(2, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', `5,virtio-blk,${img}`, '-o', `control.path=${ctl(n)}`, '-o', 'migration.max_rounds=4']);
      return recv ? [...a.slice(0, -1), '-R', recv, a.at(-1)!] : a;
    };
    const phases: Phase[] = [];
    const lab: MigrationLab = {};
    const result = (code: number | null): BootResult => ({
      name: 'migration-2cpu', code, stdout: phases.map((p) => p.stdout).join(''), stderr: phases.map((p) => `${p.what}: ${p.stderr}`).join(''),
      ms: 0, phases, migration: lab,
    });
    // 1: the guest runs in A; warm migration over a unix socket to B, with tshyvectl.
    const a = new Vm('a', NS_A, args('a'));
    const b = new Vm('b', NS_A, args('b', `unix:${join(dir, 'warm.sock')}`));
    if (!(await a.until((o) => both(5)(o) && lastWrite(o) >= 3)) || !(await b.until(listening))) {
      a.p.child.kill('SIGKILL'); b.p.child.kill('SIGKILL');
      phases.push(await a.phase(), await b.phase());
      return result(null);
    }
    phases.push(await tshyvectl([`--socket=${ctl('a')}`, `--migrate=unix:${join(dir, 'warm.sock')}`]));
    phases.push(await a.phase());
    const fromA = lastCount(a.stdout, 0);
    // 2: B runs on; live migration over TCP into namespace B.
    const c = new Vm('c', NS_B, args('c', `${IP_B},${PORT}`));
    if (!(await b.until(both(fromA + 5), 90_000))) lab.liveError = 'the guest did not go on counting in B after the warm migration';
    else if (!(await c.until(listening))) lab.liveError = 'C did not listen for the migration';
    if (lab.liveError === undefined) try {
      const vb = await connectVm(ctl('b'));
      lab.live = await vb.migrate(`${IP_B},${PORT}`, { live: true });
      vb.close();
    } catch (e) {
      lab.liveError = (e as Error).message;
    }
    phases.push(await b.phase());
    if (lab.liveError !== undefined) {
      // nothing runs in C: say so with what C printed, not with a failed connection below
      c.p.child.kill('SIGKILL');
      phases.push(await c.phase());
      return result(null);
    }
    // 3: C runs on; a live migration to D, killed mid-transfer; C goes on.
    const fromB = lastCount(b.stdout, 0);
    await c.until(both(fromB + 5), 90_000);
    const d = new Vm('d', NS_A, args('d', `unix:${join(dir, 'cut.sock')}`));
    await d.until(listening);
    const vc = await connectVm(ctl('c'));
    try {
      await vc.migrate(`unix:${join(dir, 'cut.sock')}`, {
        live: true,
        onProgress: (p) => { if (p.phase === 'copy' && p.done > 0) d.p.child.kill('SIGKILL'); },
      });
      lab.killedError = '(the migration succeeded)';
    } catch (e) {
      lab.killedError = (e as Error).message;
    }
    phases.push(await d.phase());
    const atKill = lastCount(c.stdout, 0);
    await c.until(both(atKill + 5), 90_000);
    lab.stateAfterKill = String((await vc.stats()).state);
    await vc.forcePoweroff();
    vc.close();
    phases.push(await c.phase());
    const upTo = lastWrite(phases.map((p) => p.stdout).join(''));
    lab.blocks = { upTo, bad: verifyBlocks(img, upTo) };
    return result(phases.at(-1)!.code);
  },
};
