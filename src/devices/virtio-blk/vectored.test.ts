/**
 * virtio-blk over guest memory that is a native mapping (as in a VM): data
 * goes through one preadv/pwritev per request, straight between the image
 * and guest RAM, split over the chain's buffers in order.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, truncateSync } from 'node:fs';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
import { harness, makeImage, submit } from './testing.js';
import { requestHeader as header } from './request.js';
import { FileBlockBackend } from '../block/index.js';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from './index.js';

function nativeMem(size: number): GuestMemory {
  const ram = createGuestRam(size);
  return new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
}

test('writes and reads of several buffers go through the vectored calls and land at the right offsets', () => {
  const img = makeImage(256 * 1024);
  const backend = FileBlockBackend.open({ path: img.path });
  const calls: string[] = [];
  const spy = Object.assign(Object.create(Object.getPrototypeOf(backend) as object) as FileBlockBackend, backend);
  const readv = backend.readv.bind(backend), writev = backend.writev.bind(backend);
  Object.assign(spy, {
    readv: (iov: Parameters<typeof readv>[0], off: number) => { calls.push(`readv ${iov.count}@${off}`); readv(iov, off); },
    writev: (iov: Parameters<typeof writev>[0], off: number) => { calls.push(`writev ${iov.count}@${off}`); writev(iov, off); },
    read: () => { throw new Error('per-piece read used'); },
    write: () => { throw new Error('per-piece write used'); },
  });
  const h = harness({ image: img, mem: nativeMem(4 << 20), backend: spy });
  try {
    const parts = [Buffer.alloc(512, 1), Buffer.alloc(1536, 2), Buffer.alloc(2048, 3)];
    const w = submit(h, [header(VIRTIO_BLK_T_OUT, 8), ...parts], [1]);
    assert.equal(w.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(readFileSync(img.path).subarray(8 * 512, 8 * 512 + 4096), Buffer.concat(parts));
    const r = submit(h, [header(VIRTIO_BLK_T_IN, 8)], [1024, 3072, 1]);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.equal(r.usedLen, 4097);
    assert.deepEqual(Buffer.from(r.data), Buffer.concat(parts));
    assert.deepEqual(calls.map((c) => c.replace(/ \d+@/, ' @')), ['writev @4096', 'readv @4096']);
    // the last sector of the disk
    const tail = submit(h, [header(VIRTIO_BLK_T_IN, 511)], [512, 1]);
    assert.equal(tail.status, VIRTIO_BLK_S_OK);
  } finally {
    h.cleanup();
    backend.close();
  }
});

test('a short file under a vectored read gives IOERR', () => {
  const img = makeImage(64 * 1024);
  const h = harness({ image: img, mem: nativeMem(4 << 20) });
  try {
    // shrink the file under the device: the capacity check passes, the read comes up short

    truncateSync(img.path, 1024);
    const r = submit(h, [header(VIRTIO_BLK_T_IN, 4)], [2048, 1]);
    assert.equal(r.status, VIRTIO_BLK_S_IOERR);
  } finally {
    h.cleanup();
  }
});
