import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../../errors.js';
import { createQcow2 } from '../block/qcow2/create.js';
import { openBackend, type DiskInit } from './disk.js';

const init = (path: string): DiskInit => ({
  path, readonly: false, nocache: false, direct: false, sectorSize: 512, dsm: true,
  limits: { maxq: 1, maxEntries: 64, vectors: 2 }, stats: new SharedArrayBuffer(64),
});

test('nvme: a raw file opens; a qcow2 image is refused in one line (it would read as raw)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-nvme-disk-'));
  try {
    const raw = join(dir, 'raw.img');
    writeFileSync(raw, Buffer.alloc(1 << 20));
    const b = openBackend(init(raw), 'nvme');
    assert.equal(b.size, 1 << 20);
    b.close();
    const q = join(dir, 'disk.qcow2');
    createQcow2(q, { size: 1 << 20 });
    assert.throws(() => openBackend(init(q), 'nvme'), (e: unknown) =>
      e instanceof UserError && /disk\.qcow2' is a qcow2 image/.test(e.message) && !e.message.includes('\n'));
  } finally { rmSync(dir, { recursive: true }); }
});
