import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { FileBlockBackend, type BlockBackend } from '../block/index.js';
import {
  VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from './device.js';
import { harness, makeImage, segment } from './testing.js';
import { requestHeader as header } from './request.js';

/** xorshift32: deterministic. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s;
  };
}

test('10^4 random requests: no throw, no I/O outside the image', () => {
  const SIZE = 64 * 1024;
  const img = makeImage(SIZE);
  const real = FileBlockBackend.open({ path: img.path });
  const violations: string[] = [];
  const chk = (op: string, off: number, len: number): void => {
    if (!(Number.isSafeInteger(off) && off >= 0 && len >= 0 && off + len <= SIZE)) violations.push(`${op} ${off}+${len}`);
  };
  const guard: BlockBackend = {
    size: real.size, readonly: false, hostSectorSizes: {},
    read: (b, o) => { chk('read', o, b.length); real.read(b, o); },
    write: (b, o) => { chk('write', o, b.length); real.write(b, o); },
    flush: () => real.flush(),
    discard: (o, l) => { chk('discard', o, l); return real.discard(o, l); },
    writeZeroes: (o, l, u) => { chk('writeZeroes', o, l); real.writeZeroes(o, l, u); },
    close: () => real.close(),
  };
  const h = harness({ image: img, backend: guard, memSize: 2 * 1024 * 1024 });
  const r = rng(0x5eed);
  const pick = <T>(a: readonly T[]): T => a[r() % a.length]!;
  const types = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_WRITE_ZEROES, 2, 7, 0xffffffff];
  const sectors = (): bigint => {
    switch (r() % 5) {
      case 0: return BigInt(r() % 130);
      case 1: return BigInt.asUintN(64, (BigInt(r()) << 32n) | BigInt(r()));
      case 2: return 0xffff_ffff_ffff_ffffn - BigInt(r() % 4);
      case 3: return (1n << 55n) - BigInt(r() % 3);
      default: return BigInt(r() % 8);
    }
  };
  const len = (): number => pick([0, 1, 15, 16, 17, 511, 512, 1024, 4096, 513, r() % 9000]);
  try {
    for (let i = 0; i < 10_000; i++) {
      const readable: (Uint8Array | number)[] = [];
      const hdrLen = r() % 8 === 0 ? r() % 17 : 16;
      const hdr = header(pick(types), sectors(), r());
      const segs = r() % 3 === 0
        ? Buffer.concat(Array.from({ length: r() % 40 }, () => segment(sectors(), pick([0, 1, 8, 200, r()]), pick([0, 0, 1, 2, r()]))))
        : Buffer.alloc(0);
      if (r() % 4 === 0) readable.push(Buffer.concat([hdr.subarray(0, hdrLen), segs]));
      else {
        readable.push(hdr.subarray(0, hdrLen));
        if (segs.length) readable.push(segs);
        for (let k = r() % 3; k > 0; k--) readable.push(len());
      }
      const writable: number[] = [];
      for (let k = r() % 4; k > 0; k--) writable.push(len());
      if (readable.every((b) => (typeof b === 'number' ? b : b.length) === 0) && writable.length === 0) writable.push(1);
      const head = h.drv.addChain({ readable: readable.filter((b) => (typeof b === 'number' ? b : b.length) > 0).length
        ? readable : [16], writable }, { indirect: r() % 2 === 0 });
      void head;
      assert.doesNotThrow(() => h.dev.queueNotify(0));
      const used = h.drv.drainUsed();
      assert.equal(used.length, 1);
      if (r() % 1000 === 0) {
        // an occasional broken ring: NEEDS_RESET, then a fresh activation
        h.drv.setAvailRing(h.drv.availIndex, 0xffff);
        h.drv.setAvailIdx(h.drv.availIndex + 1);
        assert.doesNotThrow(() => h.dev.queueNotify(0));
        assert.ok(h.resets.length > 0);
        h.restart();
      }
    }
    assert.deepEqual(violations, []);
    assert.equal(statSync(img.path).size, SIZE);
    assert.equal(readFileSync(img.path).length, SIZE);
  } finally { h.cleanup(); real.close(); }
});
