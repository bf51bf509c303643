/**
 * ControlServer and ControlClient over real unix sockets, serving a fake
 * VmControl that records what it was asked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, existsSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ControlServer } from './server.js';
import { ControlClient, ControlError, connectVm, listVms } from './client.js';
import { controlSocketPath } from './config.js';
import { UserError } from '../errors.js';
import { setLogSink } from '../log.js';
import { ConfigTree } from '../config/tree.js';
import type { VmControl, SnapshotOptions, SnapshotResult } from '../vm/control.js';

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
  stats() { this.calls.push('stats'); return { name: this.name, exits_pio: 42, state: 'running' }; }
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
  assert.deepEqual(await c.info(), { name: 'fake', pid: process.pid, paused: false });
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
  assert.deepEqual(byId(1), { id: 1, ok: true, result: { name: 'fake', pid: process.pid, paused: false } });
  assert.equal((byId(2) as { ok: boolean }).ok, true);
  assert.deepEqual(byId(null), { id: null, ok: false, error: 'bad request: not JSON' });
  assert.deepEqual(byId(3), { id: 3, ok: false, error: "unknown operation 'frob'" });
  assert.equal((byId(4) as { ok: boolean }).ok, true);
  await server.close();
});

test('a line longer than 1 MiB is refused and the peer dropped; the server lives on', async () => {
  const { server, path } = await serve();
  const out = await rawExchange(path, ['{"id":1,"op":"info","pad":"' + 'x'.repeat((1 << 20) + 10)], 1);
  assert.deepEqual(out[0], { id: null, ok: false, error: 'bad request: line too long' });
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
  const { mkdirSync } = await import('node:fs');
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
  assert.equal(controlSocketPath(c({ name: 'vm1' }), {}), process.getuid?.() === 0 ? '/run/tshyve/vm1.sock' : controlSocketPath(c({ name: 'vm1' }), {}));
  assert.equal(controlSocketPath(c({ name: 'vm1', 'control.path': '/tmp/a.sock' }), env), '/tmp/a.sock');
  assert.equal(controlSocketPath(c({ name: 'vm1', 'control.path': '' }), env), undefined);
  assert.equal(controlSocketPath(c({ name: 'vm1', 'control.enable': 'false' }), env), undefined);
  assert.throws(() => controlSocketPath(c({ name: 'vm1', 'control.enable': 'maybe' }), env), /not a boolean/);
});

test.after(async () => {
  await Promise.all(servers.map((s) => s.close()));
  rmSync(base, { recursive: true, force: true });
});
