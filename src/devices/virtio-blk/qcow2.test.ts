/**
 * virtio-blk over a qcow2 image, in guest memory that is a native mapping
 * (as in a VM: the vectored path): the same random requests (reads,
 * writes, discards, write-zeroes, flushes of several buffers each) on a
 * qcow2 disk and on a raw one answer alike, and qemu-img finds the qcow2
 * image clean and equal to the raw one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
import { qemuImg, randomBytes, rng, skipNoQemu } from '../block/qcow2/testing.js';
import { harness, makeImage, segment, submit } from './testing.js';
import { requestHeader as header } from './request.js';
import {
  VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
} from './index.js';

function nativeMem(size: number): GuestMemory {
  const ram = createGuestRam(size);
  return new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
}

test('virtio-blk requests on a qcow2 disk answer as on a raw one; qemu-img finds it clean and equal', { skip: skipNoQemu }, () => {
  const size = 4 << 20, sectors = size / 512;
  const rawImg = makeImage(size, (b) => b.fill(0));
  const qImg = makeImage(0);
  const q = join(qImg.dir, 'd.qcow2');
  assert.equal(qemuImg('create', '-f', 'qcow2', '-o', 'cluster_size=4k', q, String(size)).status, 0);
  copyFileSync(q, qImg.path);
  const raw = harness({ image: rawImg, mem: nativeMem(4 << 20) });
  const qc = harness({ image: qImg, mem: nativeMem(4 << 20), format: 'qcow2' });
  const r = rng(4242);
  try {
    for (let i = 0; i < 300; i++) {
      const sector = r(sectors - 64);
      const n = 1 + r(63);
      const kind = r(10);
      let a, b;
      if (kind < 4) {
        const parts = [randomBytes(r, 512 * Math.ceil(n / 2)), randomBytes(r, 512 * Math.floor(n / 2))].filter((p) => p.length > 0);
        a = submit(raw, [header(VIRTIO_BLK_T_OUT, sector), ...parts], [1]);
        b = submit(qc, [header(VIRTIO_BLK_T_OUT, sector), ...parts], [1]);
      } else if (kind < 8) {
        const w = [512 * Math.ceil(n / 2), 512 * Math.floor(n / 2), 1].filter((x) => x > 0);
        a = submit(raw, [header(VIRTIO_BLK_T_IN, sector)], w);
        b = submit(qc, [header(VIRTIO_BLK_T_IN, sector)], w);
        assert.deepEqual(Buffer.from(b.data), Buffer.from(a.data), `read ${i} at ${sector}`);
      } else if (kind === 8) {
        a = submit(raw, [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(sector, n, r(2))], [1]);
        b = submit(qc, [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(sector, n, r(2))], [1]);
      } else {
        a = submit(raw, [header(VIRTIO_BLK_T_FLUSH, 0)], [1]);
        b = submit(qc, [header(VIRTIO_BLK_T_FLUSH, 0)], [1]);
      }
      assert.equal(a.status, VIRTIO_BLK_S_OK);
      assert.equal(b.status, VIRTIO_BLK_S_OK, `request ${i}`);
    }
    // a discard of whole clusters: the qcow2 disk frees them, and they read as zeros
    assert.equal(submit(qc, [header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 64)], [1]).status, VIRTIO_BLK_S_OK);
    assert.equal(submit(raw, [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 64)], [1]).status, VIRTIO_BLK_S_OK);
  } finally {
    qc.dev.destroy();
    raw.dev.destroy();
  }
  assert.equal(qemuImg('check', qImg.path).status, 0, qemuImg('check', qImg.path).out);
  assert.equal(qemuImg('compare', '-f', 'raw', '-F', 'qcow2', rawImg.path, qImg.path).status, 0);
  raw.cleanup();
  qc.cleanup();
});
