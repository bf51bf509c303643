import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { UserError } from '../../errors.js';
import {
  openSerialBackend, parseSerialSpec, TcpSerialBackend, FILE_MAX_BYTES_DEFAULT, type UnixSerialBackend, type SerialBackend,
} from './index.js';

/** Collects what a socket receives until `want` bytes arrived. */
function readN(s: net.Socket, want: number, timeoutMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const t = setTimeout(() => reject(new Error(`timeout, got ${JSON.stringify(got)}`)), timeoutMs);
    const on = (b: Buffer) => {
      got += b.toString('latin1');
      if (got.length >= want) { clearTimeout(t); s.off('data', on); resolve(got); }
    };
    s.on('data', on);
  });
}

function nextData(b: SerialBackend, want: number): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    b.onData((bytes) => { got += Buffer.from(bytes).toString('latin1'); if (got.length >= want) resolve(got); });
  });
}

test('spec parsing and bad specs', { timeout: 15_000 }, async () => {
  assert.deepEqual(parseSerialSpec('stdio'), { kind: 'stdio' });
  assert.deepEqual(parseSerialSpec('tcp=127.0.0.1:4000'), { kind: 'tcp', host: '127.0.0.1', port: 4000 });
  assert.deepEqual(parseSerialSpec('tcp=4000'), { kind: 'tcp', host: '127.0.0.1', port: 4000 });
  assert.deepEqual(parseSerialSpec('tcp=[::1]:5'), { kind: 'tcp', host: '::1', port: 5 });
  assert.deepEqual(parseSerialSpec('unix=/tmp/x.sock'), { kind: 'unix', path: '/tmp/x.sock' });
  assert.deepEqual(parseSerialSpec('/dev/null'), { kind: 'file', path: '/dev/null' });
  assert.deepEqual(parseSerialSpec('/var/log/vm,1.log,maxsize=64M'), { kind: 'file', path: '/var/log/vm,1.log', maxBytes: 64 << 20 });
  assert.deepEqual(parseSerialSpec('./c.log,maxsize=0'), { kind: 'file', path: './c.log', maxBytes: 0 });
  assert.throws(() => parseSerialSpec('/c.log,maxsize=lots'), (e: unknown) => e instanceof UserError && e.message === "serial backend '/c.log,maxsize=lots': bad maxsize 'lots' (expected a size such as 64M, or 0 for no limit)");
  for (const bad of ['', 'stdout', 'tcp=', 'tcp=1.2.3.4', 'tcp=1.2.3.4:99999', 'tcp=1.2.3.4:-1', 'tcp=host.example:1',
    'tcp=1.2.3.4:80x', 'unix=', 'nmdm0A', 'tcp=::1:80', '/c.log,maxsize=', '/c.log,maxsize=-1', '/dir/,maxsize=1M']) {
    assert.throws(() => parseSerialSpec(bad), UserError, bad);
    await assert.rejects(openSerialBackend(bad), UserError, bad);
  }
  // Messages are one line.
  try { parseSerialSpec('bogus'); } catch (e) { assert.ok(!(e as Error).message.includes('\n')); }
});

test('tcp: one client, both directions, early output kept, extras refused', { timeout: 15_000 }, async () => {
  const b = (await openSerialBackend('tcp=127.0.0.1:0')) as TcpSerialBackend;
  assert.ok(b instanceof TcpSerialBackend);
  assert.ok(b.port > 0);
  assert.equal(b.address.address, '127.0.0.1');
  try {
    b.write(Buffer.from('boot log\r\n')); // before anyone connects: held
    const guestIn = nextData(b, 5);
    const c = net.connect(b.port, '127.0.0.1');
    await once(c, 'connect');
    assert.equal(await readN(c, 10), 'boot log\r\n');
    c.write('hello');
    assert.equal(await guestIn, 'hello');
    for (const ch of 'guest says hi') b.write(Buffer.from(ch)); // byte at a time, as the UART does
    assert.equal(await readN(c, 13), 'guest says hi');
    // A second client is dropped; the first keeps working.
    const c2 = net.connect(b.port, '127.0.0.1');
    await once(c2, 'close');
    assert.equal(b.refused, 1);
    b.write(Buffer.from('still here'));
    assert.equal(await readN(c, 10), 'still here');
    // Pause stops delivery; resume restarts it.
    const got: string[] = [];
    b.onData((x) => got.push(Buffer.from(x).toString()));
    b.pause();
    c.write('later');
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(got, []);
    b.resume();
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(got.join(''), 'later');
    // After the client leaves, another can connect.
    c.destroy();
    await new Promise((r) => setTimeout(r, 50));
    const c3 = net.connect(b.port, '127.0.0.1');
    await once(c3, 'connect');
    b.write(Buffer.from('again'));
    assert.equal(await readN(c3, 5), 'again');
    c3.destroy();
  } finally {
    await b.close();
  }
});

test('tcp: output with no client is bounded to the latest 64 KiB', { timeout: 15_000 }, async () => {
  const b = (await openSerialBackend('tcp=127.0.0.1:0')) as TcpSerialBackend;
  try {
    for (let i = 0; i < 100; i++) b.write(Buffer.alloc(1024, i));
    await new Promise((r) => setImmediate(r));
    assert.equal(b.droppedOutput, 36 * 1024);
    const c = net.connect(b.port, '127.0.0.1');
    const got = await readN(c, 64 * 1024);
    assert.equal(got.length, 64 * 1024);
    assert.equal(got.charCodeAt(0), 36);
    assert.equal(got.charCodeAt(got.length - 1), 99);
    c.destroy();
  } finally {
    await b.close();
  }
});

test('tcp: address in use is a UserError', { timeout: 15_000 }, async () => {
  const b = (await openSerialBackend('tcp=127.0.0.1:0')) as TcpSerialBackend;
  try {
    await assert.rejects(openSerialBackend(`tcp=127.0.0.1:${b.port}`), (e: unknown) =>
      e instanceof UserError && /address already in use/.test(e.message));
  } finally {
    await b.close();
  }
});

test('unix: listen, talk, stale socket removed, cleanup on close', { timeout: 15_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-uart-'));
  const path = join(dir, 'com1.sock');
  try {
    const b = (await openSerialBackend(`unix=${path}`)) as UnixSerialBackend;
    try {
      assert.equal(b.address, path);
      const guestIn = nextData(b, 3);
      const c = net.connect(path);
      await once(c, 'connect');
      c.write('abc');
      assert.equal(await guestIn, 'abc');
      b.write(Buffer.from('xyz'));
      assert.equal(await readN(c, 3), 'xyz');
      // A second monitor on the same live socket is refused.
      await assert.rejects(openSerialBackend(`unix=${path}`), (e: unknown) => e instanceof UserError && /in use/.test(e.message));
      c.destroy();
    } finally {
      await b.close();
    }
    assert.equal(existsSync(path), false);

    // Stale socket file: a monitor killed with SIGKILL leaves it behind; it is replaced.
    const crashed = spawn(process.execPath, ['-e',
      `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(crashed.stdout, 'data');
    crashed.kill('SIGKILL');
    await once(crashed, 'exit');
    assert.equal(existsSync(path), true, 'leftover socket file');
    const b2 = (await openSerialBackend(`unix=${path}`)) as UnixSerialBackend;
    await b2.close();

    // A regular file in the way is not deleted.
    writeFileSync(path, 'precious');
    await assert.rejects(openSerialBackend(`unix=${path}`), (e: unknown) => e instanceof UserError && /not a socket/.test(e.message));
    assert.equal(readFileSync(path, 'utf8'), 'precious');
    // Missing directory.
    await assert.rejects(openSerialBackend(`unix=${join(dir, 'nope', 'x.sock')}`), UserError);
    await assert.rejects(openSerialBackend(`unix=/${'x'.repeat(200)}.sock`), UserError);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('file: output-only path appends', { timeout: 15_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-uart-'));
  try {
    const path = join(dir, 'console.log');
    const b = await openSerialBackend(path);
    for (const ch of 'hello file') b.write(Buffer.from(ch));
    await b.close();
    assert.equal(readFileSync(path, 'utf8'), 'hello file');
    await assert.rejects(openSerialBackend(dir), UserError);
    await assert.rejects(openSerialBackend(join(dir, 'no', 'such')), UserError);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('file: a regular file stops growing at maxsize (64 MiB unless set); the rest is dropped and counted; a device has no cap', { timeout: 15_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-uart-'));
  try {
    const path = join(dir, 'console.log');
    writeFileSync(path, Buffer.alloc(512 * 1024, 0x2e)); // an earlier run's output
    const b = await openSerialBackend(`${path},maxsize=1M`);
    for (let i = 0; i < 3 * 1024; i++) b.write(Buffer.alloc(1024, 0x41));
    await b.close();
    assert.equal(statSync(path).size, 1 << 20);
    assert.equal(b.droppedOutput, 3 * (1 << 20) - (512 << 10));
    // The default cap, without writing 64 MiB: a sparse file just under it.
    const big = join(dir, 'big.log');
    writeFileSync(big, '');
    truncateSync(big, FILE_MAX_BYTES_DEFAULT - 10);
    const d = await openSerialBackend(big);
    d.write(Buffer.alloc(100, 0x42));
    await d.close();
    assert.equal(FILE_MAX_BYTES_DEFAULT, 64 << 20);
    assert.equal(statSync(big).size, FILE_MAX_BYTES_DEFAULT);
    assert.equal(d.droppedOutput, 90);
    const n = await openSerialBackend('/dev/null,maxsize=1M');
    n.write(Buffer.alloc(2 << 20));
    await n.close();
    assert.equal(n.droppedOutput, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('stdio with piped stdin/stdout: echoes, survives EOF, no bytes lost', { timeout: 15_000 }, async () => {
  const mod = fileURLToPath(new URL('./index.js', import.meta.url));
  // Child: echo stdin to stdout through the backend (uppercased), a big write too, then close at EOF.
  const script = `
    const { openSerialBackend } = await import(${JSON.stringify(mod)});
    const b = await openSerialBackend('stdio');
    b.onData((x) => b.write(Buffer.from(Buffer.from(x).toString().toUpperCase())));
    for (let i = 0; i < 200000; i++) b.write(Uint8Array.of(0x2e));
    process.stdin.on('end', async () => { b.write(Buffer.from('|END')); await b.close(); });
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('latin1');
  child.stdout.on('data', (d: string) => { out += d; });
  child.stdin.write('abc');
  await new Promise((r) => setTimeout(r, 200));
  child.stdin.end('def');
  const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  const [code] = (await once(child, 'exit')) as [number];
  clearTimeout(killer);
  assert.equal(code, 0);
  assert.equal(out.replace(/[A-Z|]/g, '').length, 200000, 'all 200000 dots arrived');
  assert.equal(out.replace(/\./g, ''), 'ABCDEF|END');
});
