import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../../errors.js';
import { FileBlockBackend, Qcow2Backend } from '../block/index.js';
import { createQcow2 } from '../block/qcow2/create.js';
import { openBackend, type DiskInit } from './disk.js';

const init = (path: string, format?: 'raw' | 'qcow2'): DiskInit => ({
  path, ...(format ? { format } : {}), readonly: false, nocache: false, direct: false, sectorSize: 512, dsm: true,
  limits: { maxq: 1, maxEntries: 64, vectors: 2 }, stats: new SharedArrayBuffer(64),
});

test('nvme: a raw file opens raw, a qcow2 image as qcow2 (probed, or format=qcow2); format=raw never probes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-nvme-disk-'));
  try {
    const raw = join(dir, 'raw.img');
    writeFileSync(raw, Buffer.alloc(1 << 20));
    const b = openBackend(init(raw), 'nvme');
    assert.ok(b instanceof FileBlockBackend);
    assert.equal(b.size, 1 << 20);
    b.close();
    const q = join(dir, 'disk.qcow2');
    createQcow2(q, { size: 8 << 20 });
    for (const f of [undefined, 'qcow2'] as const) {
      const img = openBackend(init(q, f), 'nvme');
      assert.ok(img instanceof Qcow2Backend, `format ${f}`);
      assert.equal(img.size, 8 << 20, 'the guest\'s size, not the file\'s');
      img.close();
    }
    const asRaw = openBackend(init(q, 'raw'), 'nvme');
    assert.ok(asRaw instanceof FileBlockBackend);
    asRaw.close();
    assert.throws(() => openBackend(init(raw, 'qcow2'), 'nvme'), (e: unknown) =>
      e instanceof UserError && /raw\.img/.test(e.message) && !e.message.includes('\n'));
  } finally { rmSync(dir, { recursive: true }); }
});
