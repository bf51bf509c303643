/**
 * Test helpers for virtio-blk: a temp image, a device over it with a mock
 * driver queue, and request builders. Used by the tests in this folder.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest-memory.js';
import type { VirtioCore, VirtioInterrupt } from '../../virtio/device.js';
import { VIRTIO_F_VERSION_1, featureBit } from '../../virtio/constants.js';
import type { Virtqueue } from '../../virtio/queue.js';
import { MockSplitQueue } from '../../virtio/testing/mock-driver.js';
import { VirtioBlk, type VirtioBlkOptions } from './device.js';

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
