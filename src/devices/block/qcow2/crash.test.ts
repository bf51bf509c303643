/**
 * Crash safety: a process writing through the qcow2 backend (with flushes)
 * is killed with SIGKILL; `qemu-img check` then finds at most leaked
 * clusters, and every write flushed before the kill reads back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { qemuImg, scratchDir, skipNoQemu } from './testing.js';
import { slotData, slotOrder } from './testing/slots.js';

const writer = new URL('./testing/crash-writer.js', import.meta.url).pathname;

/** Start the writer; kill it with SIGKILL once `after` flushes are reported; resolves with the writes known flushed. */
function runAndKill(image: string, seed: number, slots: number, slotBytes: number, after: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [writer, image, String(seed), String(slots), String(slotBytes)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let flushed = 0, seen = 0, out = '', err = '';
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      for (;;) {
        const nl = out.indexOf('\n');
        if (nl < 0) break;
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        const m = /^F (\d+)$/.exec(line);
        if (m) { flushed = Number(m[1]); if (++seen === after) child.kill('SIGKILL'); }
      }
    });
    child.on('exit', (code, sig) => {
      if (sig !== 'SIGKILL') reject(new Error(`writer ended before the kill (${code}): ${err}`));
      else resolve(flushed);
    });
  });
}

const cases = [
  { opts: 'compat=1.1,cluster_size=64k', slotBytes: 96 * 1024, seed: 1 },
  { opts: 'compat=0.10,cluster_size=4k', slotBytes: 6 * 1024, seed: 2 },
  { opts: 'compat=1.1,cluster_size=512,refcount_bits=4', slotBytes: 3 * 1024, seed: 3 },
];

for (const c of cases) {
  test(`kill -9 while writing (${c.opts}): at most leaks, every flushed write there`, { skip: skipNoQemu }, async () => {
    const s = scratchDir();
    try {
      const slots = 4000;
      const q = s.path('crash.qcow2');
      assert.equal(qemuImg('create', '-f', 'qcow2', '-o', c.opts, q, String(slots * c.slotBytes)).status, 0);
      const flushed = await runAndKill(q, c.seed, slots, c.slotBytes, 40);
      assert.ok(flushed >= 40 * 7);
      const chk = qemuImg('check', q);
      assert.ok(chk.status === 0 || chk.status === 3, `check: ${chk.status} ${chk.out}`);
      assert.doesNotMatch(chk.out, /ERROR/);
      assert.equal(qemuImg('convert', '-O', 'raw', q, s.path('out.raw')).status, 0);
      const raw = readFileSync(s.path('out.raw'));
      const order = slotOrder(c.seed, slots);
      for (let i = 0; i < flushed; i++) {
        const slot = order[i]!;
        const { data, at } = slotData(c.seed, slot, c.slotBytes);
        const off = slot * c.slotBytes + at;
        assert.ok(raw.subarray(off, off + data.length).equals(data), `flushed write ${i} (slot ${slot}) is there`);
      }
    } finally {
      s.done();
    }
  });
}
