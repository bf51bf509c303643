/**
 * ControlServer and ControlClient over real unix sockets, serving a fake
 * VmControl that records what it was asked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, existsSync, readdirSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ControlServer, MAX_CONNECTIONS, MAX_REQUEST_BYTES } from './server.js';
import { defaultControlDir } from './paths.js';
import { ControlClient, ControlError, connectVm, listVms } from './client.js';
import { controlSocketPath } from './config.js';
import { UserError } from '../errors.js';
import { setLogSink } from '../log.js';
import { ConfigTree } from '../config/tree.js';
import type { VmControl, SnapshotOptions, SnapshotResult, MigrationOptions, MigrationResult } from '../vm/control.js';

const base = mkdtempSync(join(tmpdir(), 'tshyve-ctl-'));
let n = 0;
const freshDir = () => join(base, `d${n++}`);

class FakeVm implements VmControl {
  calls: string[] = [];
  paused = false;
  suspendDelayMs = 0;
  constructor(readonly name = 'fake') {}
  async pause() { this.calls.push('pause'); this.paused = true; }
  resume() { this.calls.push('resume'); this.paused = false; }
  stats(): Record<string, number | string> { this.calls.push('stats'); return { name: this.name, exits_pio: 42, state: 'running' }; }
  async checkpoint(file: string, opts?: SnapshotOptions): Promise<SnapshotResult> {
    this.calls.push(`checkpoint ${file}`);
    if (file.endsWith('fail')) throw new UserError(`cannot write ${file}: no space`);
    if (file.endsWith('bug')) throw new TypeError('x is undefined');
    for (let done = 0; done <= 4; done++) {
      opts?.onProgress?.({ done: done * 1024, total: 4096 });
      await new Promise((r) => setTimeout(r, 5));
    }
    return { file, ramFile: file + '.ram', ramBytes: 4096, pausedMs: 3, totalMs: 25 };
  }
  async suspend(file: string): Promise<SnapshotResult> {
    this.calls.push(`suspend ${file}`);
    await new Promise((r) => setTimeout(r, this.suspendDelayMs));
    return { file, ramFile: file + '.ram', ramBytes: 4096, pausedMs: 3, totalMs: 3 };
  }
  async migrate(target: string, opts?: MigrationOptions): Promise<MigrationResult> {
    this.calls.push(`migrate ${target} ${opts?.live === true}`);
    if (target.endsWith('refuse')) throw new UserError('the destination refused: the source VM has 2 vCPUs, this one 1');
    for (const phase of ['handshake', 'copy', 'copy', 'switchover', 'commit'] as const) {
      opts?.onProgress?.({ phase, done: 1024, total: 4096, round: 1, dirtyRate: 4096, expectedDowntimeMs: 2 });
      await new Promise((r) => setTimeout(r, 5));
    }
    return { target, live: opts?.live === true, rounds: 1, bytes: 5000, pages: 1, zeroPages: 0, totalMs: 30, downtimeMs: 3, converged: true };
  }
  forceReset() { this.calls.push('forceReset'); }
  forcePoweroff() { this.calls.push('forcePoweroff'); }
  destroy() { this.calls.push('destroy'); }
}

// Closed at the end whatever happened, so a failed assertion cannot leave the file hanging.
const servers: ControlServer[] = [];

async function serve(vm = new FakeVm(), opts = {}) {
  const dir = freshDir();
  const path = join(dir, `${vm.name}.sock`);
  const server = new ControlServer(vm, { progressPerSecond: 1e6, ...opts });
  await server.listen(path);
  servers.push(server);
  return { vm, server, path, dir };
}

/** Raw lines in, raw lines out: what a client that is not ours would see. */
function rawExchange(path: string, chunks: string[], expectLines: number): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    let got = '';
    s.on('connect', async () => {
      for (const c of chunks) { s.write(c); await new Promise((r) => setTimeout(r, 5)); }
    });
    s.on('data', (d) => {
      got += d;
      const lines = got.split('\n').filter(Boolean);
      if (lines.length >= expectLines) { s.destroy(); resolve(lines.map((l) => JSON.parse(l))); }
    });
    s.on('error', reject);
    setTimeout(() => reject(new Error(`timeout; got ${got}`)), 3000).unref();
  });
}

test('every operation reaches the VmControl and answers', async () => {
  const { vm, server, path, dir } = await serve();
  assert.equal(statSync(dir).mode & 0o777, 0o700, 'directory is private');
  assert.equal(statSync(path).mode & 0o777, 0o600, 'socket is private');
  const c = await ControlClient.connect(path);
  assert.equal(c.name, 'fake');
  assert.deepEqual(await c.info(), { name: 'fake', pid: process.pid, paused: false, sandbox: 'off' });
  assert.deepEqual(await c.stats(), { name: 'fake', exits_pio: 42, state: 'running' });
  await c.pause();
  assert.equal((await c.info()).paused, true);
  await c.resume();
  await c.forceReset();
  await c.forcePoweroff();
  await c.destroy();
  const r = await c.suspend('/tmp/s.ckp');
  assert.equal(r.ramFile, '/tmp/s.ckp.ram');
  assert.deepEqual(vm.calls, ['stats', 'pause', 'resume', 'forceReset', 'forcePoweroff', 'destroy', 'suspend /tmp/s.ckp']);
  c.close();
  await server.close();
});

test('checkpoint: progress events reach the caller in order, then the result', async () => {
  const { server, path } = await serve();
  const c = await ControlClient.connect(path);
  const seen: number[] = [];
  const r = await c.checkpoint('/tmp/vm.ckp', { onProgress: (p) => { assert.equal(p.total, 4096); seen.push(p.done); } });
  assert.deepEqual(seen, [0, 1024, 2048, 3072, 4096]);
  assert.deepEqual(r, { file: '/tmp/vm.ckp', ramFile: '/tmp/vm.ckp.ram', ramBytes: 4096, pausedMs: 3, totalMs: 25 });
  c.close();
  await server.close();
});

test('migrate: the target and live flag reach the VM; the progress JSON carries phase, round, dirty rate and expected downtime', async () => {
  const { vm, server, path } = await serve(new FakeVm(), { progressPerSecond: 1 });
  const c = await ControlClient.connect(path);
  const phases: string[] = [];
  const r = await c.migrate('unix:rel.sock', { live: true, onProgress: (p) => {
    assert.ok('phase' in p, 'a migration progress event');
    assert.deepEqual({ round: p.round, dirtyRate: p.dirtyRate, expectedDowntimeMs: p.expectedDowntimeMs }, { round: 1, dirtyRate: 4096, expectedDowntimeMs: 2 });
    phases.push(p.phase);
  } });
  // throttled to one a second, but every change of phase arrives
  assert.deepEqual(phases, ['handshake', 'copy', 'switchover', 'commit']);
  assert.equal(r.downtimeMs, 3);
  assert.deepEqual(vm.calls, [`migrate unix:${join(process.cwd(), 'rel.sock')} true`]);
  await assert.rejects(c.migrate('h,1refuse'), /the destination refused: the source VM has 2 vCPUs, this one 1/);
  c.close();
  await server.close();
});

test('progress is throttled but the first and last events always arrive', async () => {
  const { server, path } = await serve(new FakeVm(), { progressPerSecond: 1 });
  const c = await ControlClient.connect(path);
  const seen: number[] = [];
  await c.checkpoint('/tmp/vm.ckp', { onProgress: (p) => seen.push(p.done) });
  assert.deepEqual(seen, [0, 4096]);
  c.close();
  await server.close();
});

test('a failing operation is an error reply; the server goes on serving', async () => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  try {
    const { vm, server, path } = await serve();
    const c = await ControlClient.connect(path);
    await assert.rejects(c.checkpoint('/x/fail'), (e: unknown) => e instanceof ControlError && e.remote && e.message === 'cannot write /x/fail: no space');
    // Our own bug: still one line back to the client, the stack in our log.
    await assert.rejects(c.checkpoint('/x/bug'), (e: unknown) => e instanceof ControlError && e.message === 'x is undefined');
    assert.ok(lines.some((l) => /TypeError: x is undefined/.test(l)));
    await assert.rejects(c.call('checkpoint', { file: 'relative.ckp' }), /must be an absolute path/);
    await assert.rejects(c.call('suspend', {}), /suspend needs a file/);
    assert.equal((await c.stats()).exits_pio, 42);
    assert.deepEqual(vm.calls.filter((x) => x.startsWith('checkpoint')), ['checkpoint /x/fail', 'checkpoint /x/bug']);
    c.close();
    await server.close();
  } finally {
    setLogSink((l) => process.stderr.write(l + '\n'));
  }
});

test('raw framing: split and merged request lines, a garbage line gets an error reply, not a crash', async () => {
  const { server, path } = await serve();
  const out = await rawExchange(path, ['{"id":1,"o', 'p":"info"}\n{"id":2,"op":"stats"}\nthis is not json\n{"id":3,"op":"frob"}\n', '\n{"id":4,"op":"info"}\n'], 5);
  // Replies come as operations finish, not in request order: the id pairs them.
  const byId = (id: unknown) => out.find((m) => (m as { id: unknown }).id === id);
  assert.deepEqual(byId(1), { id: 1, ok: true, result: { name: 'fake', pid: process.pid, paused: false, sandbox: 'off' } });
  assert.equal((byId(2) as { ok: boolean }).ok, true);
  assert.deepEqual(byId(null), { id: null, ok: false, error: 'bad request: not JSON' });
  assert.deepEqual(byId(3), { id: 3, ok: false, error: "unknown operation 'frob'" });
  assert.equal((byId(4) as { ok: boolean }).ok, true);
  await server.close();
});

test('a line longer than 64 KiB (or 1 MiB) is refused and the peer dropped; a long line within the limit is served; the server lives on', async () => {
  const { server, path } = await serve();
  for (const len of [(1 << 20) + 10, MAX_REQUEST_BYTES + 1]) {
    const out = await rawExchange(path, ['{"id":1,"op":"info","pad":"' + 'x'.repeat(len)], 1);
    assert.deepEqual(out[0], { id: null, ok: false, error: 'bad request: line too long' });
  }
  const long = '{"id":1,"op":"info","args":{"pad":"' + 'x'.repeat(MAX_REQUEST_BYTES - 64) + '"}}';
  assert.ok(Buffer.byteLength(long) <= MAX_REQUEST_BYTES);
  assert.deepEqual((await rawExchange(path, [long + '\n'], 1))[0], { id: 1, ok: true, result: { name: 'fake', pid: process.pid, paused: false, sandbox: 'off' } });
  const c = await ControlClient.connect(path);
  assert.equal((await c.info()).name, 'fake');
  c.close();
  await server.close();
});

test('close() removes the socket file; a stale socket is replaced; a live one is refused', async () => {
  const { server, path } = await serve();
  assert.ok(existsSync(path));
  // live: a second server on the same path says so, and leaves the first alone
  await assert.rejects(new ControlServer(new FakeVm()).listen(path), (e: unknown) => e instanceof UserError && e.code === 'EINUSE' && /belongs to a running VM/.test(e.message));
  assert.equal((await (await ControlClient.connect(path)).info()).name, 'fake');
  await server.close();
  assert.ok(!existsSync(path), 'socket removed on close');
  // stale: a process that bound the socket and died without removing it
  execFileSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`]);
  assert.ok(statSync(path).isSocket());
  await assert.rejects(ControlClient.connect(path), /VM fake is not answering \(stale socket/);
  const again = new ControlServer(new FakeVm('second'));
  await again.listen(path);
  assert.equal((await (await ControlClient.connect(path)).info()).name, 'second');
  await again.close();
  assert.ok(!existsSync(path));
});

test('a path that is not a socket, or too long, is refused with one line', async () => {
  const dir = freshDir();
  mkdirSync(dir);
  const f = join(dir, 'file.sock');
  writeFileSync(f, 'precious');
  await assert.rejects(new ControlServer(new FakeVm()).listen(f), /exists and is not a socket/);
  assert.ok(existsSync(f), 'a regular file is never removed');
  await assert.rejects(new ControlServer(new FakeVm()).listen(join(dir, 'x'.repeat(120))), /too long/);
});

test('close() waits for an operation in flight and flushes its reply (suspend then exit)', async () => {
  const vm = new FakeVm();
  vm.suspendDelayMs = 150;
  const { server, path } = await serve(vm);
  const c = await ControlClient.connect(path);
  const reply = c.suspend('/tmp/s.ckp');
  await new Promise((r) => setTimeout(r, 30)); // the request is in flight
  const closed = server.close();
  assert.equal((await reply).file, '/tmp/s.ckp');
  await closed;
  assert.ok(!existsSync(path));
  // a new request during close gets an answer too, not silence
  await assert.rejects(c.stats(), /closed the connection|shutting down/);
});

test('client errors: no socket, one line naming the VM and the path', async () => {
  const dir = freshDir();
  await assert.rejects(connectVm('ghost', { dir }), (e: unknown) => e instanceof ControlError && e.message === `no VM named ghost (no socket at ${join(dir, 'ghost.sock')})`);
});

test('listVms: the VMs that answer, by socket name; stale sockets and other files skipped', async () => {
  const dir = freshDir();
  const a = new ControlServer(new FakeVm('a'));
  const b = new ControlServer(new FakeVm('b'));
  await a.listen(join(dir, 'alpha.sock'));
  await b.listen(join(dir, 'beta.sock'));
  execFileSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(join(dir, 'dead.sock'))}, () => process.exit(0))`]);
  writeFileSync(join(dir, 'notes.txt'), '');
  assert.deepEqual((await listVms(dir)).map((v) => v.name), ['alpha', 'beta']);
  assert.deepEqual(await listVms(join(dir, 'missing')), []);
  await a.close(); await b.close();
});

test('controlSocketPath: default DIR/NAME.sock, control.path, empty or control.enable=false disables', () => {
  const c = (kv: Record<string, string>) => { const t = new ConfigTree(); for (const [k, v] of Object.entries(kv)) t.set(k, v); return t; };
  const env = { TSHYVE_CONTROL_DIR: '/x/ctl' };
  assert.equal(controlSocketPath(c({ name: 'vm1' }), env), '/x/ctl/vm1.sock');
  // Without XDG_RUNTIME_DIR everyone gets /run/tshyve; with it, only root does.
  assert.equal(controlSocketPath(c({ name: 'vm1' }), {}), '/run/tshyve/vm1.sock');
  const xdg = { XDG_RUNTIME_DIR: '/run/user/1000' };
  assert.equal(defaultControlDir(xdg, 1000), '/run/user/1000/tshyve');
  assert.equal(defaultControlDir(xdg, 0), '/run/tshyve');
  assert.equal(controlSocketPath(c({ name: 'vm1' }), xdg), process.getuid?.() === 0 ? '/run/tshyve/vm1.sock' : '/run/user/1000/tshyve/vm1.sock');
  assert.equal(controlSocketPath(c({ name: 'vm1', 'control.path': '/tmp/a.sock' }), env), '/tmp/a.sock');
  assert.equal(controlSocketPath(c({ name: 'vm1', 'control.path': '' }), env), undefined);
  assert.equal(controlSocketPath(c({ name: 'vm1', 'control.enable': 'false' }), env), undefined);
  assert.throws(() => controlSocketPath(c({ name: 'vm1', 'control.enable': 'maybe' }), env), /not a boolean/);
});

test('at most 16 clients at once: the next one gets one error line and is closed; a freed slot is used again', async () => {
  const { server, path } = await serve();
  const clients = await Promise.all(Array.from({ length: MAX_CONNECTIONS }, () => ControlClient.connect(path)));
  for (const c of clients) assert.equal((await c.info()).name, 'fake');
  assert.deepEqual(await rawExchange(path, [], 1), [{ id: null, ok: false, error: `too many connections (at most ${MAX_CONNECTIONS})` }]);
  const extra = await ControlClient.connect(path);
  await assert.rejects(extra.info(), (e: unknown) => e instanceof ControlError && e.message === `VM fake: too many connections (at most ${MAX_CONNECTIONS})`);
  clients.pop()!.close();
  const again = await until(async () => { try { const c = await ControlClient.connect(path); await c.info(); return c; } catch { return undefined; } });
  assert.equal((await again.info()).name, 'fake');
  for (const c of [...clients, again]) c.close();
  await server.close();
});

test('the directory: made 0700; one others can write, or another user owns, is refused; the socket is 0600 even under umask 0', async () => {
  const old = process.umask(0);
  try {
    const { server, path, dir } = await serve();
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(dir), ['fake.sock'], 'the private directory it was bound in is gone');
    await server.close();
  } finally {
    process.umask(old);
  }
  const d = freshDir();
  mkdirSync(d);
  for (const [mode, shown] of [[0o770, '0770'], [0o1777, '1777'], [0o702, '0702']] as const) {
    chmodSync(d, mode);
    await assert.rejects(new ControlServer(new FakeVm()).listen(join(d, 'a.sock')), (e: unknown) => e instanceof UserError && e.message === `control socket directory ${d} is writable by others (mode ${shown}); use a directory only its owner can write`);
  }
  chmodSync(d, 0o755); // readable by others is fine: the socket itself is 0600
  const ok = new ControlServer(new FakeVm());
  await ok.listen(join(d, 'a.sock'));
  await ok.close();
  if (process.getuid?.() === 0) {
    chownSync(d, 65534, 65534);
    await assert.rejects(new ControlServer(new FakeVm()).listen(join(d, 'a.sock')), (e: unknown) => e instanceof UserError && e.message === `control socket directory ${d} belongs to uid 65534, not to us (uid 0) or root`);
  }
  assert.deepEqual(readdirSync(d), [], 'nothing left behind by a refusal');
  const f = join(base, 'plain-file');
  writeFileSync(f, '');
  await assert.rejects(new ControlServer(new FakeVm()).listen(join(f, 'a.sock')), UserError);
});

test('a client of another uid is refused with one line (SO_PEERCRED) even when the socket lets it connect', { skip: process.getuid?.() === 0 ? undefined : 'needs root to run a client as another uid' }, async () => {
  const { vm, server, path, dir } = await serve();
  // A mistake, or permissions loosened on purpose: the kernel lets uid 65534 connect.
  chmodSync(base, 0o711); chmodSync(dir, 0o711); chmodSync(path, 0o666);
  const script = `const s = require('net').connect(${JSON.stringify(path)}, () => s.write('{"id":1,"op":"destroy"}\\n'));
    let got = ''; s.on('data', (d) => { got += d; }); s.on('error', () => {}); s.on('close', () => { process.stdout.write(got); });`;
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], { uid: 65534, gid: 65534, timeout: 10_000 });
  assert.equal(stdout, '{"id":null,"ok":false,"error":"permission denied"}\n');
  assert.deepEqual(vm.calls, [], 'nothing it asked for was done');
  const c = await ControlClient.connect(path); // our own uid still gets in
  assert.equal((await c.info()).name, 'fake');
  c.close();
  await server.close();
});

test('a client that pipelines many requests and reads slowly gets every answer, in bounded memory', async () => {
  const { server, path } = await serve(new CountingVm());
  const n = 20_000;
  const got = await new Promise<number>((resolve, reject) => {
    const s = createConnection(path, () => s.write(Buffer.from('{"id":1,"op":"stats"}\n'.repeat(n))));
    let lines = 0;
    s.pause();
    const t = setInterval(() => { // reads in bursts, 20 ms apart
      for (let d = s.read() as Buffer | null; d; d = s.read() as Buffer | null) lines += d.toString().split('\n').length - 1;
      if (lines >= n) { clearInterval(t); s.destroy(); resolve(lines); }
    }, 20);
    s.on('error', reject);
    s.on('close', () => { clearInterval(t); resolve(lines); });
  });
  assert.equal(got, n);
  await server.close();
});

/** stats() answers as long as a real VM's (about 40 keys), counted rather than recorded. */
class CountingVm extends FakeVm {
  served = 0;
  private readonly keys = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`exits_counter_${i}`, 1_234_567 + i]));
  override stats() { this.served++; return { name: this.name, ...this.keys }; }
}

/** Run `body` while sampling this process's RSS and heap; before and peak values in MiB. */
async function memoryPeak<T>(body: () => Promise<T>): Promise<{ result: T; rss: [number, number]; heap: [number, number] }> {
  const mib = (b: number) => Math.round(b / 1048576);
  const m0 = process.memoryUsage();
  let rss = m0.rss, heap = m0.heapUsed + m0.arrayBuffers;
  const t = setInterval(() => { const m = process.memoryUsage(); rss = Math.max(rss, m.rss); heap = Math.max(heap, m.heapUsed + m.arrayBuffers); }, 5);
  try {
    const result = await body();
    return { result, rss: [mib(m0.rss), mib(rss)], heap: [mib(m0.heapUsed + m0.arrayBuffers), mib(heap)] };
  } finally {
    clearInterval(t);
  }
}

/** Run an attacking client in a process of its own (so its buffers are not ours); its stdout. */
async function attacker(script: string): Promise<string> {
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], { timeout: 60_000, maxBuffer: 1 << 20 });
  return stdout;
}

async function until<T>(f: () => Promise<T | undefined>, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('attack: 990 000 pipelined stats requests, replies never read: memory stays bounded, the client is dropped, others are served', { timeout: 60_000 }, async (t) => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  const vm = new CountingVm();
  const { server, path } = await serve(vm, { replyTimeoutMs: 1000 });
  const other = await ControlClient.connect(path);
  try {
    const { result, rss, heap } = await memoryPeak(async () => {
      const attack = attacker(`const s = require('net').connect(${JSON.stringify(path)}, () => {
          s.pause(); s.write(Buffer.from('{"id":1,"op":"stats"}\\n'.repeat(990000)));
        });
        s.on('error', () => {}); s.on('close', () => process.stdout.write('closed'));`);
      let answered = 0;
      let slowest = 0;
      let done = false;
      void attack.finally(() => { done = true; });
      while (!done) {
        const t0 = performance.now();
        assert.equal((await other.stats()).name, 'fake');
        slowest = Math.max(slowest, performance.now() - t0);
        answered++;
        await new Promise((r) => setTimeout(r, 50));
      }
      return { out: await attack, answered, slowest };
    });
    t.diagnostic(`990k stats, unread: RSS ${rss[0]} -> ${rss[1]} MiB peak, heap+buffers ${heap[0]} -> ${heap[1]} MiB peak; ${vm.served} served; another client answered ${result.answered} times, slowest ${result.slowest.toFixed(0)} ms`);
    assert.equal(result.out, 'closed', 'the attacker was dropped');
    assert.ok(lines.some((l) => /dropped a client: replies unread for 1000 ms/.test(l)), lines.join('\n'));
    assert.ok(vm.served < 990_000 / 10, `stopped reading: ${vm.served} requests served`);
    assert.ok(result.answered >= 5 && result.slowest < 1000, `others served: ${result.answered} answers, slowest ${result.slowest} ms`);
    assert.ok(rss[1] - rss[0] < 64, `RSS grew ${rss[1] - rss[0]} MiB`);
    assert.ok(heap[1] - heap[0] < 64, `heap grew ${heap[1] - heap[0]} MiB`);
  } finally {
    setLogSink((l) => process.stderr.write(l + '\n'));
    other.close();
    await server.close();
  }
});

test('attack: 150 clients each sending 1 MiB without a newline: 16 at a time, each dropped at 64 KiB; memory stays bounded', { timeout: 60_000 }, async (t) => {
  const { server, path } = await serve();
  let peak = 0;
  const sampler = setInterval(() => { peak = Math.max(peak, server.clients); }, 1);
  const { result, rss, heap } = await memoryPeak(() => attacker(`
    const res = { tooMany: 0, tooLong: 0, noLine: 0, other: [] }; let closed = 0;
    for (let i = 0; i < 150; i++) {
      const s = require('net').connect(${JSON.stringify(path)}, () => s.write(Buffer.alloc(1 << 20, 0x78)));
      let got = ''; s.on('data', (d) => { got += d; }); s.on('error', () => {});
      s.on('close', () => {
        const line = got.split('\\n')[0];
        if (line === '') res.noLine++; else if (/too many connections/.test(line)) res.tooMany++; else if (/line too long/.test(line)) res.tooLong++; else res.other.push(line);
        if (++closed === 150) process.stdout.write(JSON.stringify(res));
      });
    }`));
  clearInterval(sampler);
  const res = JSON.parse(result) as { tooMany: number; tooLong: number; noLine: number; other: string[] };
  t.diagnostic(`150 x 1 MiB partial lines: RSS ${rss[0]} -> ${rss[1]} MiB peak, heap+buffers ${heap[0]} -> ${heap[1]} MiB peak; at most ${peak} served at once; ${JSON.stringify(res)}`);
  // Every one closed; each told why, unless refused while 64 others were still reading their line.
  assert.deepEqual(res.other, []);
  assert.equal(res.tooMany + res.tooLong + res.noLine, 150);
  assert.ok(res.tooMany > 0 && res.tooLong >= MAX_CONNECTIONS, JSON.stringify(res));
  assert.ok(peak > 0 && peak <= MAX_CONNECTIONS, `${peak} clients at once`);
  assert.ok(rss[1] - rss[0] < 64, `RSS grew ${rss[1] - rss[0]} MiB`);
  assert.ok(heap[1] - heap[0] < 64, `heap grew ${heap[1] - heap[0]} MiB`);
  const c = await until(async () => { try { const x = await ControlClient.connect(path); await x.info(); return x; } catch { return undefined; } });
  c.close();
  await server.close();
});

test.after(async () => {
  await Promise.all(servers.map((s) => s.close()));
  rmSync(base, { recursive: true, force: true });
});
