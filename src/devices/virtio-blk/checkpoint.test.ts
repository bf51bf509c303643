/**
 * Checkpoints that include disks, at the device: virtio-blk on its I/O
 * thread (which owns the qcow2 image) takes the checkpoint's qcow2 snapshot,
 * or goes on in a new overlay, when asked through the control message, and
 * the guest's writes after it land where they must. qemu-img is the judge.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
import { signalEventfd } from '../../host/eventfd.js';
import { VirtioCore } from '../../virtio/device.js';
import { openImage } from '../block/index.js';
import { createQcow2 } from '../block/qcow2/create.js';
import { assertOverlay, qemuImg, scratchDir, skipNoQemu } from '../block/qcow2/testing.js';
import { requestHeader as header } from './request.js';
import { driverOk } from './testing.js';
import { VirtioBlk, VIRTIO_BLK_T_OUT } from './index.js';
import { offloadVirtioBlk } from './offload.js';

const RAM = 4 << 20, SIZE = 1 << 20;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** A qcow2 or raw disk served by its I/O thread, written through guest requests. */
function setup(path: string, format: 'raw' | 'qcow2') {
  const ram = createGuestRam(RAM);
  const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
  const inner = new VirtioBlk({ path, format, passive: true });
  const dev = offloadVirtioBlk(inner, { path, format }, { hostAddr: ram.hostAddr, size: RAM, regions: [{ gpa: 0, offset: 0, size: RAM }] }, () => {});
  const core = new VirtioCore(dev, mem, { raiseQueueInterrupt: () => {}, raiseConfigInterrupt: () => {}, guestError: () => {} });
  const drv = driverOk(core, dev.features, mem);
  let done = 0;
  const write = async (sector: number, data: Buffer) => {
    const id = drv.addChain({ readable: [header(VIRTIO_BLK_T_OUT, sector), data], writable: [1] });
    signalEventfd(dev.offload.notifyFd(0));
    for (const end = Date.now() + 10_000; drv.usedIdx === done; await sleep(2)) if (Date.now() > end) throw new Error('timed out');
    done++;
    assert.equal(drv.written(id, 1)[0], 0, 'the write succeeded');
  };
  const close = () => { dev.destroy(); ram.close(); };
  return { inner, dev, write, close };
}

function readImage(path: string, off: number, len: number): Buffer {
  const b = openImage({ path, readonly: true });
  try { const out = Buffer.alloc(len); b.read(out, off); return out; } finally { b.close(); }
}

const A = Buffer.alloc(8192, 0xa1), B = Buffer.alloc(8192, 0xb2);

test('an internal checkpoint on the I/O thread: qemu-img lists the snapshot, and applying it gives back the bytes of its time', { skip: skipNoQemu }, async () => {
  const s = scratchDir();
  const disk = s.path('d.qcow2');
  createQcow2(disk, { size: SIZE, clusterSize: 4096 });
  const d = setup(disk, 'qcow2');
  try {
    await d.write(16, A);
    await d.dev.quiesce();
    assert.deepEqual(await d.dev.checkpointDisk({ t: 'internal', name: 'vm.ckp' }), { path: disk, format: 'qcow2', readonly: false, snapshot: 'vm.ckp' });
    // again under the same name: replaced, not refused
    await d.dev.checkpointDisk({ t: 'internal', name: 'vm.ckp' });
    d.dev.unquiesce();
    await d.write(16, B);
  } finally {
    d.close();
  }
  const list = qemuImg('snapshot', '-l', disk);
  assert.equal(list.status, 0, list.out);
  assert.equal(list.out.match(/vm\.ckp/g)?.length, 1, list.out);
  assert.equal(qemuImg('check', disk).status, 0);
  assert.deepEqual(readImage(disk, 16 * 512, 8192), B);
  assert.equal(qemuImg('snapshot', '-a', 'vm.ckp', disk).status, 0);
  assert.deepEqual(readImage(disk, 16 * 512, 8192), A);
  s.done();
});

test('an external checkpoint on the I/O thread: the disk goes on in an overlay whose backing file stays as it was', { skip: skipNoQemu }, async () => {
  const s = scratchDir();
  const base = s.path('base.img'), overlay = s.path('vm.ckp.pci.0.4.0.qcow2');
  writeFileSync(base, Buffer.alloc(SIZE));
  const d = setup(base, 'raw');
  let baseSum: string | undefined;
  try {
    await d.write(16, A);
    await d.dev.quiesce();
    // an existing file is never replaced: one line, and the disk goes on as it was
    writeFileSync(overlay, 'x');
    await assert.rejects(d.dev.checkpointDisk({ t: 'external', overlay }), (e: Error) => /EEXIST/.test(e.message) && !e.message.includes('\n'));
    assert.equal(readFileSync(overlay, 'utf8'), 'x');
    unlinkSync(overlay);
    const st = await d.dev.checkpointDisk({ t: 'external', overlay });
    assert.deepEqual(st, { path: base, format: 'raw', readonly: false, overlay });
    d.inner.followOverlay(overlay);
    d.dev.unquiesce();
    baseSum = sha(readFileSync(base));
    await d.write(16, B);
    await d.write(300, B);
  } finally {
    d.close();
  }
  assertOverlay(overlay, base, 'raw', SIZE);
  assert.equal(sha(readFileSync(base)), baseSum, 'the backing file is untouched by writes after the checkpoint');
  assert.deepEqual(readFileSync(base).subarray(16 * 512, 16 * 512 + 8192), A);
  assert.deepEqual(readImage(overlay, 16 * 512, 8192), B);
  s.done();
});
