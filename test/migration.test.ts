/**
 * Level 2: migration between two tshyve processes on this host's KVM, with
 * the project's own guests: `counter` (a count in a register and in memory)
 * and `dirtier` (rewrites and checks 128 pages every round: a page a live
 * migration failed to send again makes it print X). Faults are made by a
 * proxy between source and destination that damages, cuts or holds the
 * stream, and by killing the destination.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, existsSync, writeFileSync } from 'node:fs';
import { createServer, createConnection, type Socket, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { CLI, CTL, CONTROL_DIR, guestBin, kvmUnavailable } from './helpers.js';
import { F, HEADER_BYTES } from '../src/migration/wire.js';
import { PART, joinParts, splitParts } from '../src/migration/state-parts.js';

const skip = kvmUnavailable() ?? (guestBin('dirtier') ? undefined : 'guest programs not built (nasm missing)');
const dir = mkdtempSync(join(tmpdir(), 'tshyve-mig-'));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let seq = 0;

interface Exit { code: number | null; signal: string | null; stdout: string; stderr: string }

/** A process whose output is collected as it runs. */
class Proc {
  readonly child: ChildProcess;
  readonly done: Promise<Exit>;
  stdout = '';
  stderr = '';
  constructor(script: string, args: string[]) {
    this.child = spawn(process.execPath, [script, ...args], { env: { ...process.env, TSHYVE_CONTROL_DIR: CONTROL_DIR }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (d) => { this.stdout += d; });
    this.child.stderr!.on('data', (d) => { this.stderr += d; });
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 60_000);
    this.done = new Promise((resolve) => this.child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: this.stdout, stderr: this.stderr });
    }));
  }
}

const ctl = (...args: string[]) => new Proc(CTL, args).done;

/** A guest's console file and the VM args that write it. */
function vmArgs(guest: string, out: string, extra: string[] = []): string[] {
  return ['-m', '16M', '-l', `com1,${out}`, '-o', `boot.raw=${guestBin(guest) ?? ''}`, '-o', 'x86.halt_check_ms=0', ...extra];
}

const text = (f: string) => (existsSync(f) ? readFileSync(f, 'utf8') : '');
const lineCount = (f: string) => text(f).split('\n').length - 1;
async function waitFor(pred: () => boolean, ms = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!pred()) { if (Date.now() - t0 > ms) throw new Error('timed out'); await sleep(20); }
}

/** The counts printed, checked to run on by one with no gap and no X. */
function counts(s: string): number[] {
  assert.doesNotMatch(s, /X/, 'the guest found memory it had written changed');
  const ns = s.split('\n').slice(0, -1).map((l) => { assert.match(l, /^C[0-9a-f]{8}$/, `a counter line: ${JSON.stringify(l)}`); return parseInt(l.slice(1), 16); });
  ns.forEach((n, i) => { if (i > 0) assert.equal(n, ns[i - 1]! + 1, `count ${ns[i - 1]} is followed by ${n}`); });
  return ns;
}

/** A source VM and a destination waiting on `to`, both with the guest's console in files. */
async function pair(guest: string, to: string, opts: { srcExtra?: string[]; dstExtra?: string[]; sameName?: boolean } = {}) {
  const n = seq++;
  const srcOut = join(dir, `src${n}.out`), dstOut = join(dir, `dst${n}.out`);
  const src = new Proc(CLI, [...vmArgs(guest, srcOut, opts.srcExtra), `mig-src${n}`]);
  const dst = new Proc(CLI, [...vmArgs(guest, dstOut, opts.dstExtra), '-R', to, opts.sameName ? `mig-src${n}` : `mig-dst${n}`]);
  await waitFor(() => lineCount(srcOut) >= 5 && /waiting for a migration/.test(dst.stderr));
  return { src, dst, srcOut, dstOut, srcName: `mig-src${n}`, dstName: `mig-dst${n}` };
}

const oneLine = (s: string) => { assert.equal(s.trimEnd().split('\n').length, 1, s); return s; };

test('warm migration over a unix socket: the guest counts on at the destination; the source exits 0; stats on both sides', { skip }, async () => {
  const sock = join(dir, 'warm.sock');
  const p = await pair('counter', `unix:${sock}`);
  const c = await ctl(`--vm=${p.srcName}`, `--migrate=unix:${sock}`);
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stdout, /^migrated VM mig-src\d+ to unix:\S+ \(warm\): [0-9.]+ MiB in [0-9.]+ s, downtime \d+ ms, \d+ pages \(\d+ zero\)\n$/);
  const s = await p.src.done;
  assert.equal(s.code, 0, s.stderr);
  await waitFor(() => lineCount(p.dstOut) >= 5);
  const stats = await ctl(`--vm=${p.dstName}`, '--get-stats');
  for (const k of ['total_ms', 'downtime_ms', 'bytes', 'rounds', 'pages']) assert.match(stats.stdout, new RegExp(`^migration_${k} +\\d+$`, 'm'));
  assert.match(stats.stdout, /^migration_rounds +0$/m);
  await ctl(`--vm=${p.dstName}`, '--force-poweroff');
  assert.equal((await p.dst.done).code, 1);
  // one unbroken count: what the source printed, then the destination
  const ns = counts(text(p.srcOut) + text(p.dstOut));
  assert.ok(ns.length >= 10);
});

test('live migration over TCP of a guest rewriting 128 pages a round: every page it checks is right after the move', { skip }, async () => {
  const port = 20000 + (process.pid % 20000);
  // the source runs in the default sandbox: it connects through a socket reserved before lock-down
  const p = await pair('dirtier', `127.0.0.1,${port}`);
  const c = await ctl(`--vm=${p.srcName}`, `--migrate-live=127.0.0.1,${port}`);
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stdout, /\(live, \d+ rounds?\)/);
  assert.equal((await p.src.done).code, 0);
  const at = lineCount(p.dstOut);
  await waitFor(() => lineCount(p.dstOut) >= at + 5);
  await ctl(`--vm=${p.dstName}`, '--force-poweroff');
  await p.dst.done;
  counts(text(p.srcOut) + text(p.dstOut));
});

test('a machine that differs is refused before anything pauses: one line on both sides, the source runs on', { skip }, async () => {
  const sock = join(dir, 'mismatch.sock');
  const p = await pair('counter', `unix:${sock}`, { dstExtra: ['-c', '2'] });
  const c = await ctl(`--vm=${p.srcName}`, `--migrate-live=unix:${sock}`);
  assert.equal(c.code, 1);
  assert.match(oneLine(c.stderr), /^tshyvectl: VM mig-src\d+: migration to unix:\S+ failed, the VM runs on here: the destination .* refused: the source VM has 1 vCPUs, this one 2\n$/);
  const d = await p.dst.done;
  assert.equal(d.code, 4);
  assert.match(d.stderr, /^tshyve: waiting for a migration on .*\ntshyve: the source VM has 1 vCPUs, this one 2\n$/);
  assert.equal(text(p.dstOut), '', 'nothing ran at the destination');
  const at = lineCount(p.srcOut);
  await waitFor(() => lineCount(p.srcOut) >= at + 3);
  await ctl(`--vm=${p.srcName}`, '--force-poweroff');
  await p.src.done;
  counts(text(p.srcOut));
});

test('a destination that cannot make its control socket (the source\'s name, on the same host) refuses before taking over; the source runs on', { skip }, async () => {
  const sock = join(dir, 'samename.sock');
  const p = await pair('counter', `unix:${sock}`, { sameName: true });
  const c = await ctl(`--vm=${p.srcName}`, `--migrate=unix:${sock}`);
  assert.equal(c.code, 1);
  assert.match(oneLine(c.stderr), /refused: control socket .* belongs to a running VM/);
  const d = await p.dst.done;
  assert.equal(d.code, 4);
  assert.equal(text(p.dstOut), '', 'nothing ran at the destination');
  await sourceRunsOn(p);
});

test('in the sandbox, each TCP attempt uses a reserved socket: a name is refused, then a used-up reserve is one line; the source runs on', { skip }, async () => {
  const closed = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const { port } = s.address() as { port: number }; s.close(() => resolve(port)); });
  });
  const p = await pair('counter', `unix:${join(dir, 'never.sock')}`);
  const migrate = async (to: string) => {
    const c = await ctl(`--vm=${p.srcName}`, `--migrate=${to}`);
    assert.equal(c.code, 1, c.stderr);
    return oneLine(c.stderr);
  };
  assert.match((await ctl(`--vm=${p.srcName}`, '--get-stats')).stdout, /^sandbox +on$/m);
  assert.match(await migrate(`localhost,${closed}`), /IP address only .*localhost is a name/);
  for (let i = 0; i < 3; i++) assert.match(await migrate(`127.0.0.1,${closed}`), /cannot connect to 127\.0\.0\.1,\d+: ECONNREFUSED\n$/);
  assert.match(await migrate(`127.0.0.1,${closed}`), /the sandbox's reserve of IPv4 sockets for migrations is used up \(3 per VM, one per attempt\)/);
  // IPv6 has its own: still a connect, whatever this host answers for ::1
  assert.match(await migrate(`::1,${closed}`), /cannot connect to ::1,\d+: E[A-Z]+\n$/);
  p.dst.child.kill('SIGTERM');
  await p.dst.done;
  await sourceRunsOn(p);
});

type Action = 'pass' | 'corrupt' | 'cut' | 'hold' | Buffer;

/** `frame` with another payload, its length and CRC made right: only the payload's own checks can find the change. */
function reframe(frame: Buffer, payload: Buffer): Buffer {
  const h = Buffer.from(frame.subarray(0, HEADER_BYTES));
  h.writeUInt32LE(payload.length, 8);
  h.writeUInt32LE(crc32(payload), 12);
  return Buffer.concat([h, payload]);
}

/** A JSON frame changed by `edit` (reframe). */
function rewriteJson<T>(frame: Buffer, edit: (v: T) => void): Buffer {
  const v = JSON.parse(frame.subarray(HEADER_BYTES).toString('utf8')) as T;
  edit(v);
  return reframe(frame, Buffer.from(JSON.stringify(v)));
}

/**
 * A proxy on `listen` to the destination at `dest`: source-to-destination
 * frames go through `onFrame` (its n-th frame of that type), which passes,
 * damages (one payload byte flipped), cuts (both connections closed),
 * holds (stops forwarding) or replaces each; the other way is passed as is.
 * `afterEnd` is told once END has been written to the destination.
 */
function proxy(listen: string, dest: string, onFrame: (type: number, n: number, frame: Buffer) => Action, afterEnd?: () => void): Promise<Server> {
  return new Promise((resolve) => {
    const server = createServer((src: Socket) => {
      server.close();
      const dst = createConnection(dest);
      dst.on('data', (d) => src.write(d));
      dst.on('error', () => src.destroy());
      dst.on('close', () => src.destroy());
      src.on('error', () => dst.destroy());
      src.on('close', () => dst.destroy());
      let buf = Buffer.alloc(0), held = false;
      const seen = new Map<number, number>();
      src.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        while (!held && buf.length >= HEADER_BYTES && buf.length >= HEADER_BYTES + buf.readUInt32LE(8)) {
          const len = HEADER_BYTES + buf.readUInt32LE(8);
          const frame = Buffer.from(buf.subarray(0, len));
          buf = buf.subarray(len);
          const type = frame[4]!, n = seen.get(type) ?? 0;
          seen.set(type, n + 1);
          const a = onFrame(type, n, frame);
          if (a === 'cut') { src.destroy(); dst.destroy(); return; }
          if (a === 'hold') { held = true; return; }
          if (a === 'corrupt') frame[HEADER_BYTES + Math.floor((len - HEADER_BYTES) / 2)]! ^= 0x40;
          const out = Buffer.isBuffer(a) ? a : frame;
          if (type === F.END && afterEnd) dst.write(out, () => afterEnd()); else dst.write(out);
        }
      });
    });
    server.listen(listen, () => resolve(server));
  });
}

/** After a failed migration: the source's guest goes on counting, unbroken. */
async function sourceRunsOn(p: Awaited<ReturnType<typeof pair>>): Promise<void> {
  const at = lineCount(p.srcOut);
  await waitFor(() => lineCount(p.srcOut) >= at + 3);
  const st = await ctl(`--vm=${p.srcName}`, '--get-stats');
  assert.match(st.stdout, /^state +running$/m);
  await ctl(`--vm=${p.srcName}`, '--force-poweroff');
  assert.equal((await p.src.done).code, 1);
  counts(text(p.srcOut));
}

test('a damaged page frame is refused by the destination (exit 4, one line); the source resumes its guest', { skip }, async () => {
  const sock = join(dir, 'dmg.sock'), via = join(dir, 'dmg-proxy.sock');
  const p = await pair('dirtier', `unix:${sock}`);
  await proxy(via, sock, (type, n) => (type === F.PAGES && n === 0 ? 'corrupt' : 'pass'));
  const c = await ctl(`--vm=${p.srcName}`, `--migrate-live=unix:${via}`);
  assert.equal(c.code, 1);
  assert.match(oneLine(c.stderr), /failed, the VM runs on here: .*(refused: the source \(.*\) sent a PAGES whose checksum does not match|closed the connection|failed \(EPIPE|ECONNRESET\))/);
  const d = await p.dst.done;
  assert.equal(d.code, 4);
  assert.match(d.stderr.split('\n')[1]!, /sent a PAGES whose checksum does not match \(damaged stream\)$/);
  assert.equal(text(p.dstOut), '', 'nothing ran at the destination');
  await sourceRunsOn(p);
});

test('a state whose part does not match its checksum (frame CRC made right) is refused; the source resumes', { skip }, async () => {
  const sock = join(dir, 'st.sock'), via = join(dir, 'st-proxy.sock');
  const p = await pair('counter', `unix:${sock}`);
  await proxy(via, sock, (type, _n, frame) => {
    if (type !== F.STATE) return 'pass';
    // vCPU 0's part changed, its checksum left as it was
    const parts = splitParts(frame.subarray(HEADER_BYTES));
    const vcpu = parts.find((p) => p.kind === PART.vcpus)!;
    const doc = JSON.parse(vcpu.body.toString('utf8')) as Record<string, unknown>;
    doc['mpState$u32'] = 3;
    vcpu.body = Buffer.from(JSON.stringify(doc));
    return reframe(frame, joinParts(parts));
  });
  const c = await ctl(`--vm=${p.srcName}`, `--migrate=unix:${via}`);
  assert.equal(c.code, 1);
  assert.match(oneLine(c.stderr), /refused: the migration state: checksum of part 'vcpus' does not match/);
  const d = await p.dst.done;
  assert.equal(d.code, 4);
  assert.equal(text(p.dstOut), '');
  await sourceRunsOn(p);
});

test('the destination killed mid-transfer: tshyvectl says why in one line, exit 1; the source runs on', { skip }, async () => {
  const sock = join(dir, 'kill.sock'), via = join(dir, 'kill-proxy.sock');
  const p = await pair('dirtier', `unix:${sock}`);
  let killed = false;
  await proxy(via, sock, (type) => {
    if (type === F.PAGES && !killed) { killed = true; p.dst.child.kill('SIGKILL'); return 'hold'; }
    return 'pass';
  });
  const c = await ctl(`--vm=${p.srcName}`, `--migrate-live=unix:${via}`);
  assert.equal(c.code, 1);
  assert.match(oneLine(c.stderr), /failed, the VM runs on here: .*(closed the connection|failed \()/);
  assert.equal((await p.dst.done).signal, 'SIGKILL');
  await sourceRunsOn(p);
});

test('a destination that refuses after the source\'s END (its counts changed, the frame\'s CRC made right): the source resumes its guest', { skip }, async () => {
  const sock = join(dir, 'end.sock'), via = join(dir, 'end-proxy.sock');
  const p = await pair('counter', `unix:${sock}`);
  await proxy(via, sock, (type, _n, frame) => (type !== F.END ? 'pass'
    : rewriteJson<Record<string, number>>(frame, (end) => { end['pages$int']! += 1; })));
  const c = await ctl(`--vm=${p.srcName}`, `--migrate=unix:${via}`);
  assert.equal(c.code, 1);
  assert.match(oneLine(c.stderr), /failed, the VM runs on here: .*refused: the source says it sent \d+ pages, \d+ arrived \(stream damaged\)\n$/);
  const d = await p.dst.done;
  assert.equal(d.code, 4);
  assert.equal(text(p.dstOut), '', 'nothing ran at the destination');
  await sourceRunsOn(p);
});

test('the destination killed after the source\'s END, before its DONE: the source resumes its guest', { skip }, async () => {
  const sock = join(dir, 'enddie.sock'), via = join(dir, 'enddie-proxy.sock');
  const p = await pair('counter', `unix:${sock}`);
  await proxy(via, sock, (type) => {
    // stopped first: END reaches a destination that cannot answer it before it dies
    if (type === F.END) p.dst.child.kill('SIGSTOP');
    return 'pass';
  }, () => p.dst.child.kill('SIGKILL'));
  const c = await ctl(`--vm=${p.srcName}`, `--migrate=unix:${via}`);
  assert.equal(c.code, 1);
  assert.match(oneLine(c.stderr), /failed, the VM runs on here: .*(closed the connection|failed \()/);
  assert.equal((await p.dst.done).signal, 'SIGKILL');
  assert.equal(text(p.dstOut), '', 'nothing ran at the destination');
  await sourceRunsOn(p);
});

test('a source that vanishes mid-transfer: the destination exits 4 without running the guest or touching its disk', { skip }, async () => {
  const sock = join(dir, 'gone.sock'), via = join(dir, 'gone-proxy.sock'), disk = join(dir, 'shared.img');
  writeFileSync(disk, Buffer.alloc(1 << 20, 0x5a));
  const sha = () => createHash('sha256').update(readFileSync(disk)).digest('hex');
  const before = sha();
  const blk = ['-s', '0,hostbridge', '-s', `3,virtio-blk,${disk}`];
  const p = await pair('counter', `unix:${sock}`, { srcExtra: blk, dstExtra: blk });
  await proxy(via, sock, (type) => (type === F.END ? 'cut' : 'pass'));
  const c = await ctl(`--vm=${p.srcName}`, `--migrate=unix:${via}`);
  assert.equal(c.code, 1);
  const d = await p.dst.done;
  assert.equal(d.code, 4);
  assert.match(d.stderr, /closed the connection\n$/);
  assert.equal(text(p.dstOut), '');
  assert.equal(sha(), before, 'the disk is untouched');
  await sourceRunsOn(p);
});
