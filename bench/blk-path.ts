/**
 * The virtio-blk request path on the host, without I/O: how many µs of
 * JavaScript one request costs from the avail ring to the used ring, for
 * the request shape Linux sends for a 1 MiB O_DIRECT dd (an indirect table
 * of a header, 254 4 KiB pages and a status byte). The backend records the
 * vectored call and does not touch a file, so only tshyve's own code is
 * timed. In the lab this path runs under TCG, where it is many times
 * slower; this is where it is made cheaper.
 *
 *   node dist/bench/blk-path.js [--requests N]
 */
import { GuestMemory } from '../src/memory/guest-memory.js';
import { SplitQueueDriver } from '../src/virtio/driver-queue.js';
import type { VirtioInterrupt } from '../src/virtio/device.js';
import { VirtioBlk, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../src/devices/virtio-blk/device.js';
import type { BlockBackend } from '../src/devices/block/index.js';
import type { IoVecs } from '../src/memory/iovec.js';
import { requestHeader } from '../src/devices/virtio-blk/request.js';

export interface BlkPathResult { op: 'read' | 'write'; requests: number; segments: number; usPerRequest: number }

/** Time `requests` requests of `segments` 4 KiB pages each, in batches of `batch` per notify. */
export function runBlkPath(op: 'read' | 'write', requests: number, segments = 254, batch = 64): BlkPathResult {
  const memSize = 64 << 20;
  // A fake host address: the backend only records it.
  const mem = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(memSize), hostAddr: 0x7f00_0000_0000n }]);
  let iovs = 0;
  const backend: BlockBackend = {
    size: 1 << 30, readonly: false, hostSectorSizes: {},
    read: () => { throw new Error('per-piece read'); },
    write: () => { throw new Error('per-piece write'); },
    readv: (iov: IoVecs) => { iovs += iov.count; },
    writev: (iov: IoVecs) => { iovs += iov.count; },
    flush: () => {}, discard: () => true, writeZeroes: () => {}, close: () => {},
  };
  const dev = new VirtioBlk({ path: 'bench', backend });
  const drv = new SplitQueueDriver(mem, 256);
  const q = drv.makeQueue({ maxChainLen: dev.queueMaxChainLen(0) ?? 256 });
  const irq: VirtioInterrupt = { signalUsed: () => true, signalConfig: () => {}, needsReset: (r) => { throw r; } };
  dev.activate([q], mem, irq, dev.features);
  const pages = new Array<number>(segments).fill(4096);
  let ns = 0n, done = 0;
  while (done < requests) {
    const n = Math.min(batch, requests - done);
    for (let i = 0; i < n; i++) {
      const sector = ((done + i) * segments * 8) % ((1 << 30) / 512 - segments * 8);
      if (op === 'read') drv.addChain({ readable: [requestHeader(VIRTIO_BLK_T_IN, sector)], writable: [...pages, 1] }, { indirect: true, gap: 64 });
      else drv.addChain({ readable: [requestHeader(VIRTIO_BLK_T_OUT, sector), ...pages], writable: [1] }, { indirect: true, gap: 64 });
    }
    const t0 = process.hrtime.bigint();
    dev.queueNotify(0);
    ns += process.hrtime.bigint() - t0;
    const used = drv.drainUsed();
    if (used.length !== n) throw new Error(`${used.length} of ${n} requests completed`);
    done += n;
  }
  // (the mock driver's allocator wraps around now and then, which joins a few pages)
  if (iovs < requests * segments * 0.9) throw new Error(`${iovs} pieces passed to the backend, expected about ${requests * segments}`);
  return { op, requests, segments, usPerRequest: Number(ns) / 1000 / requests };
}

/** Reads then writes, `requests` each, after a warm-up of each that lets the JIT optimize the path. */
export function blkPathBench(requests: number): BlkPathResult[] {
  runBlkPath('read', 500); runBlkPath('write', 500);
  return (['read', 'write'] as const).map((op) => runBlkPath(op, requests));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const requests = Number(args[args.indexOf('--requests') + 1] ?? 0) || 4000;
  for (const r of blkPathBench(requests)) {
    process.stdout.write(`${r.op.padEnd(5)} ${r.requests} requests of ${r.segments} pages: ${r.usPerRequest.toFixed(1)} µs each\n`);
  }
}
