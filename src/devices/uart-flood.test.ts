/**
 * A guest flooding its serial port (THR writes in a loop) while nobody reads
 * the output: memory stays within a small multiple of the backend's cap, the
 * excess is dropped and counted, and a THR write never waits.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Uart16550 } from './uart16550.js';
import { TcpSerialBackend } from './backends/index.js';

const MiB = 1 << 20;
const THR = 0;

/** Write `total` bytes to THR, 64 KiB per turn of the event loop (as exits arrive); the slowest turn's writes in ms. */
async function flood(u: Uart16550, total: number, sample: () => void): Promise<number> {
  let slowest = 0;
  for (let sent = 0; sent < total; sent += 64 * 1024) {
    const t0 = performance.now();
    for (let i = 0; i < 64 * 1024; i++) u.write(THR, 1, 0x41 + (i % 26));
    slowest = Math.max(slowest, performance.now() - t0);
    await new Promise((r) => setImmediate(r));
    sample();
  }
  return slowest;
}

test('flood to stdio whose reader never reads: bounded memory, output dropped and counted, the process still exits', { timeout: 60_000 }, async (t) => {
  const uart = fileURLToPath(new URL('./uart16550.js', import.meta.url));
  const backends = fileURLToPath(new URL('./backends/index.js', import.meta.url));
  const script = `
    const { Uart16550 } = await import(${JSON.stringify(uart)});
    const { StdioBackend } = await import(${JSON.stringify(backends)});
    const be = new StdioBackend();
    const u = new Uart16550({ set() {} }, be);
    const mem = () => { const m = process.memoryUsage(); return { rss: m.rss, heap: m.heapUsed + m.arrayBuffers }; };
    const m0 = mem(); const peak = { ...m0 }; let slowest = 0;
    for (let sent = 0; sent < ${16 * MiB}; sent += 65536) {
      const t0 = performance.now();
      for (let i = 0; i < 65536; i++) u.write(0, 1, 0x41 + (i % 26));
      slowest = Math.max(slowest, performance.now() - t0);
      await new Promise((r) => setImmediate(r));
      const m = mem(); peak.rss = Math.max(peak.rss, m.rss); peak.heap = Math.max(peak.heap, m.heap);
    }
    process.stderr.write(JSON.stringify({ m0, peak, dropped: be.droppedOutput, droppedTx: u.droppedTx, slowest }));
    await be.close();`;
  // stdout is a socket pair nobody reads (only what Node reads ahead before pause()).
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pause();
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
  clearTimeout(killer);
  assert.deepEqual([code, signal], [0, null], `the flooding process exits by itself; stderr: ${err}`);
  const r = JSON.parse(err) as { m0: { rss: number; heap: number }; peak: { rss: number; heap: number }; dropped: number; droppedTx: number; slowest: number };
  const mib = (b: number) => (b / MiB).toFixed(1);
  t.diagnostic(`16 MiB to unread stdout: RSS ${mib(r.m0.rss)} -> ${mib(r.peak.rss)} MiB peak, heap+buffers ${mib(r.m0.heap)} -> ${mib(r.peak.heap)} MiB peak; ${mib(r.dropped)} MiB dropped; slowest 64 KiB of THR writes ${r.slowest.toFixed(0)} ms`);
  assert.ok(r.peak.heap - r.m0.heap < 16 * MiB, 'heap within 4x the 4 MiB cap');
  assert.ok(r.peak.rss - r.m0.rss < 48 * MiB, 'RSS bounded');
  assert.ok(r.dropped > 10 * MiB && r.dropped <= 12 * MiB, `dropped ${r.dropped}: all but the 4 MiB held and what the socket took`);
  assert.equal(r.droppedTx, r.dropped, 'the UART reports its backend\'s count');
  assert.ok(r.slowest < 1000, 'THR writes never wait for the reader');
});

test('flood to a tcp client that stopped reading: bounded memory, dropped counted, output resumes when it reads', { timeout: 60_000 }, async (t) => {
  const b = await TcpSerialBackend.open('127.0.0.1', 0, 'tcp=127.0.0.1:0');
  const u = new Uart16550({ set() {} }, b);
  const c = net.connect(b.port, '127.0.0.1');
  await once(c, 'connect');
  c.pause();
  try {
    const m0 = process.memoryUsage();
    const base = m0.heapUsed + m0.arrayBuffers;
    let peak = base;
    const slowest = await flood(u, 16 * MiB, () => { const m = process.memoryUsage(); peak = Math.max(peak, m.heapUsed + m.arrayBuffers); });
    t.diagnostic(`16 MiB to a paused tcp client: heap+buffers ${(base / MiB).toFixed(1)} -> ${(peak / MiB).toFixed(1)} MiB peak; ${(u.droppedTx / MiB).toFixed(1)} MiB dropped; slowest ${slowest.toFixed(0)} ms`);
    assert.ok(peak - base < 16 * MiB, `heap+buffers grew ${((peak - base) / MiB).toFixed(1)} MiB`);
    assert.ok(u.droppedTx > 8 * MiB, `dropped ${u.droppedTx}`);
    assert.equal(u.droppedTx, b.droppedOutput);
    assert.ok(slowest < 1000);
    // The client reads again: what was held arrives, then new output.
    let got = '';
    c.on('data', (d: Buffer) => { got += d.toString('latin1'); });
    c.resume();
    await new Promise((r) => setTimeout(r, 200));
    for (const ch of '<END>') u.write(THR, 1, ch.charCodeAt(0));
    for (let i = 0; i < 100 && !got.endsWith('<END>'); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(got.endsWith('<END>'), `got ${got.length} bytes, ending ${JSON.stringify(got.slice(-10))}`);
    assert.equal(got.length + u.droppedTx, 16 * MiB + 5, 'every byte either arrived or was counted as dropped');
  } finally {
    c.destroy();
    await b.close();
  }
});
