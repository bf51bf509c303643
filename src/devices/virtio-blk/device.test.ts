import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmodSync, closeSync, fsyncSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { hasFeature, VIRTIO_COMMON_FEATURES } from '../../virtio/constants.js';
import { UserError } from '../../errors.js';
import {
  VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VirtioBlk, defaultSerial,
} from './device.js';
import { FileBlockBackend, type BlockBackend } from '../block/index.js';
import { harness, makeImage, segment, submit } from './testing.js';
import { requestHeader as header } from './request.js';

const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

test('config space and features', () => {
  const h = harness({ size: 1024 * 1024 + 100, sectorSize: 4096, physicalSectorSize: 8192 });
  try {
    const d = h.dev;
    // capacity: size rounded down to 4096, in 512-byte sectors
    assert.equal(d.readConfig(0, 4), (1024 * 1024) / 512);
    assert.equal(d.readConfig(4, 4), 0);
    assert.equal(d.readConfig(12, 4), 254); // seg_max
    assert.equal(d.readConfig(20, 4), 4096); // blk_size
    assert.equal(d.readConfig(24, 1), 1); // physical_block_exp
    assert.equal(d.readConfig(26, 2), 2); // min_io_size
    assert.equal(d.readConfig(32, 1), 0); // writeback
    assert.equal(d.readConfig(40, 4), 32); // max_discard_seg
    assert.equal(d.readConfig(44, 4), 16); // discard alignment: 8192/512
    assert.equal(d.readConfig(56, 1), 1); // write_zeroes_may_unmap
    assert.equal(d.readConfig(200, 4), 0);
    d.writeConfig(0, 4, 0xffff);
    assert.equal(d.readConfig(0, 4), 2048);
    assert.equal(d.queueMaxChainLen(0), 256);
    assert.ok(hasFeature(d.features, VIRTIO_BLK_F_DISCARD) && hasFeature(d.features, VIRTIO_BLK_F_WRITE_ZEROES));
    assert.equal(d.features & VIRTIO_COMMON_FEATURES, VIRTIO_COMMON_FEATURES);
    assert.ok(!hasFeature(d.features, VIRTIO_BLK_F_RO));
  } finally { h.cleanup(); }
  const r = harness({ readonly: true });
  try {
    assert.ok(hasFeature(r.dev.features, VIRTIO_BLK_F_RO));
    assert.ok(!hasFeature(r.dev.features, VIRTIO_BLK_F_DISCARD));
    assert.equal(r.dev.readConfig(36, 4), 0);
  } finally { r.cleanup(); }
  const n = harness({ nodelete: true });
  try {
    assert.ok(!hasFeature(n.dev.features, VIRTIO_BLK_F_DISCARD) && !hasFeature(n.dev.features, VIRTIO_BLK_F_WRITE_ZEROES));
  } finally { n.cleanup(); }
});

test('bad options are UserErrors', () => {
  const img = makeImage(4096);
  assert.throws(() => new VirtioBlk({ path: img.path, serial: 'x'.repeat(21) }), UserError);
  assert.throws(() => new VirtioBlk({ path: img.path, sectorSize: 1000 }), UserError);
  assert.throws(() => new VirtioBlk({ path: img.path, sectorSize: 4096, physicalSectorSize: 512 }), UserError);
  assert.throws(() => new VirtioBlk({ path: img.path + '.missing' }), /virtio-blk: cannot open '.*missing': no such file/);
  rmSync(img.dir, { recursive: true, force: true });
});

test('read and write round trips match the file', () => {
  const h = harness({ size: 64 * 1024 });
  try {
    // read sectors 3..5 (three buffers, status separate)
    let r = submit(h, [header(VIRTIO_BLK_T_IN, 3)], [512, 1024, 1]);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.equal(r.usedLen, 1537);
    assert.deepEqual(Buffer.from(r.data), readFileSync(h.path).subarray(3 * 512, 6 * 512));

    // write header+data in one buffer, then more data split
    const data = Buffer.alloc(2048);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
    r = submit(h, [Buffer.concat([header(VIRTIO_BLK_T_OUT, 10), data.subarray(0, 100)]), data.subarray(100, 1500), data.subarray(1500)], [1]);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.equal(r.usedLen, 1);
    assert.deepEqual(readFileSync(h.path).subarray(10 * 512, 10 * 512 + 2048), data);

    // read it back with data and status in one writable buffer, through an indirect table
    r = submit(h, [header(VIRTIO_BLK_T_IN, 10)], [2049], true);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(Buffer.from(r.data), data);

    // last sector of the disk
    r = submit(h, [header(VIRTIO_BLK_T_IN, 127)], [512, 1]);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    // zero-length read and write are fine
    assert.equal(submit(h, [header(VIRTIO_BLK_T_IN, 128)], [1]).status, VIRTIO_BLK_S_OK);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_OUT, 128)], [1]).status, VIRTIO_BLK_S_OK);
    assert.ok(h.signals > 0);
    assert.equal(h.resets.length, 0);
  } finally { h.cleanup(); }
});

test('seg_max: a read of 254 data buffers through an indirect table', () => {
  const h = harness({ size: 256 * 1024 });
  try {
    const r = submit(h, [header(VIRTIO_BLK_T_IN, 0)], [...Array<number>(254).fill(512), 1], true);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(Buffer.from(r.data), readFileSync(h.path).subarray(0, 254 * 512));
  } finally { h.cleanup(); }
});

test('queueSize: seg_max and the chain limit follow it; a 1 MiB read is one chain of 256 pages at 1024', () => {
  const h = harness({ size: 2 << 20, queueSize: 1024, memSize: 8 << 20 });
  try {
    assert.equal(h.dev.maxQueueSize, 1024);
    assert.equal(h.dev.readConfig(12, 4), 1022); // seg_max
    assert.equal(h.dev.queueMaxChainLen(0), 1024);
    const r = submit(h, [header(VIRTIO_BLK_T_IN, 8)], [...Array<number>(256).fill(4096), 1], true);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(Buffer.from(r.data), readFileSync(h.path).subarray(4096, 4096 + (1 << 20)));
    // one more buffer than the queue size: a bad chain, the device needs a reset
    submit(h, [header(VIRTIO_BLK_T_IN, 0)], [...Array<number>(1024).fill(512), 1], true);
    assert.equal(h.resets.length, 1);
  } finally { h.cleanup(); }
  for (const bad of [0, 2, 100, 2048]) {
    assert.throws(() => new VirtioBlk({ path: '/nonexistent', queueSize: bad }), (e: unknown) => e instanceof UserError && /queue size/.test(e.message));
  }
});

test('FLUSH and GET_ID', () => {
  const h = harness({ serial: 'SER123' });
  try {
    assert.equal(submit(h, [header(VIRTIO_BLK_T_FLUSH, 0)], [1]).status, VIRTIO_BLK_S_OK);
    const r = submit(h, [header(VIRTIO_BLK_T_GET_ID, 0)], [20, 1]);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.equal(r.usedLen, 21);
    assert.deepEqual(Buffer.from(r.data), Buffer.concat([Buffer.from('SER123'), Buffer.alloc(14)]));
    // a short id buffer gets a truncated id
    const s = submit(h, [header(VIRTIO_BLK_T_GET_ID, 0)], [4, 1]);
    assert.equal(s.status, VIRTIO_BLK_S_OK);
    assert.equal(Buffer.from(s.data).toString(), 'SER1');
  } finally { h.cleanup(); }
  assert.match(defaultSerial('/tmp/x.img'), /^BHYVE-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}$/);
  assert.equal(defaultSerial('/tmp/x.img').length, 20);
});

test('DISCARD punches holes (st_blocks drops) and WRITE_ZEROES zeroes', (t) => {
  const h = harness({ size: 1024 * 1024 });
  try {
    const fd = openSync(h.path, 'r+');
    fsyncSync(fd);
    closeSync(fd);
    const before = statSync(h.path).blocks;
    const r = submit(h, [header(VIRTIO_BLK_T_DISCARD, 0), segment(256, 1024)], [1]); // 512 KiB at 128 KiB
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    const after = statSync(h.path).blocks;
    const file = readFileSync(h.path);
    assert.equal(file.length, 1024 * 1024);
    if (after >= before) {
      t.skip(`filesystem of ${h.path} did not punch a hole (st_blocks ${before} -> ${after})`);
    } else {
      assert.ok(file.subarray(128 * 1024, 640 * 1024).every((b) => b === 0));
    }
    assert.notEqual(file[128 * 1024 - 1], undefined);

    // WRITE_ZEROES, two segments, with and without unmap
    const w = submit(h, [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(1, 2), segment(1500, 3, 1)], [1]);
    assert.equal(w.status, VIRTIO_BLK_S_OK);
    const f2 = readFileSync(h.path);
    assert.ok(f2.subarray(512, 1536).every((b) => b === 0));
    assert.ok(f2.subarray(1500 * 512, 1503 * 512).every((b) => b === 0));
    assert.notEqual(f2.subarray(0, 512).some((b) => b !== 0), false);
    assert.notEqual(f2.subarray(1536, 2048).some((b) => b !== 0), false);
  } finally { h.cleanup(); }
});

test('hostile requests get IOERR / UNSUPP, never a throw', () => {
  const h = harness({ size: 64 * 1024 });
  try {
    const orig = sha(h.path);
    const io = (readable: (Uint8Array | number)[], writable: number[]): number | undefined => submit(h, readable, writable).status;
    // out of range, including u64 overflow of sector*512
    assert.equal(io([header(VIRTIO_BLK_T_IN, 128)], [512, 1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_IN, 127)], [1024, 1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_IN, 0xffff_ffff_ffff_ffffn)], [512, 1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_IN, 1n << 55n)], [512, 1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_OUT, 0x0080_0000_0000_0000n), 512], [1]), VIRTIO_BLK_S_IOERR);
    // a high word that is small (sector 2^32) or just at the 2^44-sector (2^53-byte) bound
    assert.equal(io([header(VIRTIO_BLK_T_IN, 1n << 32n)], [512, 1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_OUT, (1n << 44n) - 1n), 512], [1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_OUT, 1n << 44n), 512], [1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(1n << 32n, 1)], [1]), VIRTIO_BLK_S_IOERR);
    // the last sector is in range, one past it is not
    assert.equal(io([header(VIRTIO_BLK_T_IN, 127)], [512, 1]), VIRTIO_BLK_S_OK);
    // length not a multiple of 512
    assert.equal(io([header(VIRTIO_BLK_T_IN, 0)], [100, 1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_OUT, 0), 513], [1]), VIRTIO_BLK_S_IOERR);
    // header too short
    assert.equal(io([8], [512, 1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_IN, 0).subarray(0, 15)], [1]), VIRTIO_BLK_S_IOERR);
    // unknown type
    assert.equal(io([header(99, 0)], [1]), VIRTIO_BLK_S_UNSUPP);
    assert.equal(io([header(0xffffffff, 0)], [1]), VIRTIO_BLK_S_UNSUPP);
    // discard: too many segments, bad lengths, flags, too many sectors, out of range
    assert.equal(io([header(VIRTIO_BLK_T_DISCARD, 0), Buffer.concat(Array.from({ length: 33 }, () => segment(0, 1)))], [1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_DISCARD, 0), 17], [1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_DISCARD, 0)], [1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 1, 1)], [1]), VIRTIO_BLK_S_UNSUPP);
    assert.equal(io([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 1, 2)], [1]), VIRTIO_BLK_S_UNSUPP);
    assert.equal(io([header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 0xffffffff)], [1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_DISCARD, 0), segment(127, 2)], [1]), VIRTIO_BLK_S_IOERR);
    assert.equal(io([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0xffff_ffff_ffff_fff0n, 0x20)], [1]), VIRTIO_BLK_S_IOERR);
    // a bad segment after a good one: nothing done
    assert.equal(io([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 1), segment(200, 1)], [1]), VIRTIO_BLK_S_IOERR);
    assert.equal(sha(h.path), orig, 'no hostile request changed the image');

    // missing status byte: the chain comes back with len 0, the device keeps going
    const r = submit(h, [header(VIRTIO_BLK_T_OUT, 0), 512], []);
    assert.equal(r.usedLen, 0);
    assert.equal(r.status, undefined);
    assert.equal(io([header(VIRTIO_BLK_T_FLUSH, 0)], [1]), VIRTIO_BLK_S_OK);
    assert.equal(sha(h.path), orig);
    assert.equal(h.resets.length, 0);
    assert.ok(h.dev.stats.ioErrors > 5 && h.dev.stats.unsupported >= 4 && h.dev.stats.badChains === 1);
  } finally { h.cleanup(); }
});

test('a read-only disk refuses writes, discard and write-zeroes; the image stays bit-identical', () => {
  const h = harness({ readonly: true, size: 16 * 1024 });
  try {
    const orig = sha(h.path);
    const data = Buffer.alloc(512, 0x5a);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_OUT, 0), data], [1]).status, VIRTIO_BLK_S_IOERR);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 8)], [1]).status, VIRTIO_BLK_S_IOERR);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 8, 1)], [1]).status, VIRTIO_BLK_S_IOERR);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_FLUSH, 0)], [1]).status, VIRTIO_BLK_S_OK);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_IN, 0)], [512, 1]).status, VIRTIO_BLK_S_OK);
    assert.equal(sha(h.path), orig);
  } finally { h.cleanup(); }
  // a read-only file opened rw fails with a clear line, unless running as root
  if (process.getuid?.() !== 0) {
    const img = makeImage(4096);
    chmodSync(img.path, 0o444);
    assert.throws(() => new VirtioBlk({ path: img.path }), /cannot open .*permission denied/);
    rmSync(img.dir, { recursive: true, force: true });
  }
});


test('DISCARD / WRITE_ZEROES not negotiated or nodelete -> UNSUPP', () => {
  const h = harness({ nodelete: true });
  try {
    assert.equal(submit(h, [header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 1)], [1]).status, VIRTIO_BLK_S_UNSUPP);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 1)], [1]).status, VIRTIO_BLK_S_UNSUPP);
  } finally { h.cleanup(); }
});

test('host I/O errors become IOERR', () => {
  const img = makeImage(8192);
  const real = FileBlockBackend.open({ path: img.path });
  const failing: BlockBackend = {
    size: real.size, readonly: false, hostSectorSizes: {},
    read: () => { throw Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }); },
    write: () => { throw Object.assign(new Error('ENOSPC: no space'), { code: 'ENOSPC' }); },
    flush: () => { throw new Error('EIO'); },
    discard: () => { throw new Error('EIO'); },
    writeZeroes: () => { throw new Error('EIO'); },
    close: () => real.close(),
  };
  const errors: string[] = [];
  const h = harness({ image: img, backend: failing, onError: (m) => errors.push(m) });
  try {
    assert.equal(submit(h, [header(VIRTIO_BLK_T_IN, 0)], [512, 1]).status, VIRTIO_BLK_S_IOERR);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_OUT, 0), 512], [1]).status, VIRTIO_BLK_S_IOERR);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_FLUSH, 0)], [1]).status, VIRTIO_BLK_S_IOERR);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 1)], [1]).status, VIRTIO_BLK_S_IOERR);
    assert.equal(submit(h, [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 1)], [1]).status, VIRTIO_BLK_S_IOERR);
    assert.ok(errors.some((m) => m.includes('ENOSPC')));
    assert.equal(h.resets.length, 0);
  } finally { h.cleanup(); real.close(); }
});

test('queue protocol violations set NEEDS_RESET without throwing', () => {
  const h = harness();
  try {
    h.drv.setAvailRing(0, 999); // head >= size
    h.drv.setAvailIdx(1);
    assert.doesNotThrow(() => h.dev.queueNotify(0));
    assert.equal(h.resets.length, 1);
    assert.doesNotThrow(() => h.dev.queueNotify(0));
    // other queue numbers and a reset device are ignored
    h.restart();
    h.dev.queueNotify(5);
    h.dev.reset();
    h.dev.queueNotify(0);
  } finally { h.cleanup(); }
});

test('a read whose status byte shares the last buffer with data, or has one of its own after empty ones, gets both right', () => {
  const h = harness();
  try {
    const r = submit(h, [header(VIRTIO_BLK_T_IN, 1)], [513]);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.equal(r.usedLen, 513);
    assert.deepEqual(Buffer.from(r.data), readFileSync(h.path).subarray(512, 1024));
    const s = submit(h, [header(VIRTIO_BLK_T_IN, 2)], [256, 256, 0, 1]);
    assert.equal(s.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(Buffer.from(s.data), readFileSync(h.path).subarray(1024, 1536));
  } finally {
    h.cleanup();
  }
});
