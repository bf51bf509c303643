/**
 * Test helpers for virtio-blk: a temp image, a device over it with a mock
 * driver queue, request builders, and the workload of the virtio-pci fuzz
 * driver (virtio/pci/testing.ts) on a read-only disk. Used by the tests in
 * this folder.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest-memory.js';
import type { VirtioCore, VirtioInterrupt } from '../../virtio/device.js';
import { VIRTIO_F_VERSION_1, featureBit } from '../../virtio/constants.js';
import type { Virtqueue } from '../../virtio/queue.js';
import { MockSplitQueue } from '../../virtio/testing/mock-driver.js';
import type { ChainSpec } from '../../virtio/driver-queue.js';
import type { Workload } from '../../virtio/pci/testing.js';
import {
  VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlk, type VirtioBlkOptions,
} from './device.js';
import { requestHeader as header } from './request.js';

export interface Harness {
  dir: string;
  path: string;
  dev: VirtioBlk;
  mem: GuestMemory;
  drv: MockSplitQueue;
  q: Virtqueue;
  resets: unknown[];
  signals: number;
  /** Recreate queue + driver after a NEEDS_RESET (device reset and re-activated). */
  restart(): void;
  cleanup(): void;
}

/** A temp dir holding `disk.img` of `size` bytes filled by `fill` (default: pseudo-random). */
export function makeImage(size: number, fill?: (b: Buffer) => void): { dir: string; path: string; bytes: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-vblk-'));
  const path = join(dir, 'disk.img');
  const bytes = Buffer.alloc(size);
  if (fill) fill(bytes);
  else for (let i = 0; i < size; i++) bytes[i] = (i * 131 + (i >>> 9) * 7 + 1) & 0xff;
  writeFileSync(path, bytes);
  return { dir, path, bytes };
}

export function harness(opts: Partial<VirtioBlkOptions> & { size?: number; memSize?: number; image?: { dir: string; path: string }; mem?: GuestMemory } = {}): Harness {
  const img = opts.image ?? makeImage(opts.size ?? 64 * 1024);
  const { size: _s, memSize, image: _i, mem: givenMem, ...devOpts } = opts;
  const dev = new VirtioBlk({ path: img.path, ...devOpts });
  const mem = givenMem ?? GuestMemory.ofSize(memSize ?? 4 * 1024 * 1024);
  const h: Harness = {
    dir: img.dir, path: img.path, dev, mem,
    drv: undefined as unknown as MockSplitQueue,
    q: undefined as unknown as Virtqueue,
    resets: [], signals: 0,
    restart() {
      dev.reset();
      h.drv = new MockSplitQueue(mem, dev.maxQueueSize);
      const mcl = dev.queueMaxChainLen(0);
      h.q = h.drv.makeQueue(mcl === undefined ? {} : { maxChainLen: mcl });
      const irq: VirtioInterrupt = {
        signalUsed: () => { h.signals++; return true; },
        signalConfig: () => {},
        needsReset: (r) => { h.resets.push(r); },
      };
      dev.activate([h.q], mem, irq, dev.features);
    },
    cleanup() {
      dev.destroy();
      rmSync(img.dir, { recursive: true, force: true });
    },
  };
  h.restart();
  return h;
}

/** Take `core` from reset to DRIVER_OK as a driver would (every offered feature), its queue 0 on a mock driver ring. */
export function driverOk(core: VirtioCore, features: bigint, mem: GuestMemory): MockSplitQueue {
  core.writeStatus(1); core.writeStatus(3);
  core.writeDriverFeatures(features | featureBit(VIRTIO_F_VERSION_1));
  core.writeStatus(0x0b);
  const drv = new MockSplitQueue(mem, 256, { base: 0x10000 });
  drv.configure(core.queues[0]!);
  core.writeStatus(0x0f);
  return drv;
}

export function segment(sector: bigint | number, num: number, flags = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(sector)), 0);
  b.writeUInt32LE(num >>> 0, 8);
  b.writeUInt32LE(flags >>> 0, 12);
  return b;
}

export interface Result {
  head: number;
  status: number | undefined;
  usedLen: number;
  /** writable bytes before the status */
  data: Uint8Array;
}

/**
 * Submit one chain (readable buffers, writable buffer lengths; the status
 * byte must be included by the caller in `writable`), notify, and collect it.
 */
export function submit(h: Harness, readable: (Uint8Array | number)[], writable: number[], indirect = false): Result {
  const head = h.drv.addChain({ readable, writable }, { indirect });
  h.dev.queueNotify(0);
  const used = h.drv.drainUsed();
  const mine = used.find((u) => u.id === head);
  if (!mine) return { head, status: undefined, usedLen: -1, data: new Uint8Array() };
  const wl = writable.reduce((a, b) => a + b, 0);
  const all = h.drv.written(head, wl);
  return {
    head,
    status: wl > 0 && mine.len > 0 ? all[wl - 1] : undefined,
    usedLen: mine.len,
    data: all.subarray(0, Math.max(0, wl - 1)),
  };
}

/**
 * virtio-blk on a read-only 1 MiB image, and its workload: reads come back
 * with the image's bytes, GET_ID and FLUSH succeed, writes and discards are
 * refused. sha256() hashes the image file as it is now.
 */
export function readOnlyDisk(): { dev: VirtioBlk; work: Workload; sha256(): string } {
  const { path, bytes: image } = makeImage(1 << 20);
  const dev = new VirtioBlk({ path, readonly: true });
  const sha256 = () => createHash('sha256').update(readFileSync(path)).digest('hex');
  return { dev, work: blkWork(image), sha256 };
}

function blkWork(image: Uint8Array): Workload {
  const sectors = image.length / 512;
  return {
    request(r) {
      const kind = r() % 8;
      if (kind < 4) {
        const n = 1 + r() % 8, s = r() % (sectors - n + 1);
        const parts = n > 1 && r() % 2 ? [512, n * 512 - 512] : [n * 512];
        return {
          spec: { readable: [header(VIRTIO_BLK_T_IN, s)], writable: [...parts, 1] },
          check: (u, written) => {
            const got = written(n * 512 + 1);
            if (u.len !== n * 512 + 1 || got[n * 512] !== VIRTIO_BLK_S_OK) return `read of ${n} at ${s}: used ${u.len}, status ${got[n * 512]}`;
            return Buffer.compare(got.subarray(0, n * 512), image.subarray(s * 512, (s + n) * 512)) === 0 ? undefined : `read of ${n} at ${s}: wrong data`;
          },
        };
      }
      const expectOk = kind === 4 || kind === 5;
      const spec: ChainSpec = kind === 4 ? { readable: [header(VIRTIO_BLK_T_GET_ID, 0)], writable: [20, 1] }
        : kind === 5 ? { readable: [header(VIRTIO_BLK_T_FLUSH, 0)], writable: [1] }
        : kind === 6 ? { readable: [header(VIRTIO_BLK_T_OUT, r() % sectors), Buffer.alloc(512, 0x5a)], writable: [1] }
        : { readable: [header(VIRTIO_BLK_T_DISCARD, 0), segment(r() % sectors, 1)], writable: [1] };
      const statusAt = (spec.writable ?? []).reduce((a, b) => a + b, 0) - 1;
      return {
        spec,
        check: (u, written) => {
          const st = written(statusAt + 1)[statusAt];
          return (st === VIRTIO_BLK_S_OK) === expectOk && u.len === statusAt + 1 ? undefined : `request kind ${kind}: status ${st}, used ${u.len}`;
        },
      };
    },
  };
}
