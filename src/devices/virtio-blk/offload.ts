/**
 * virtio-blk with its queue on an I/O thread of its own (io-thread.ts, run by
 * the shared IoThreadHost): the main thread's VirtioBlk serves the config
 * and flushes for snapshots; the worker opens the same disk with the same
 * settings and serves the requests.
 */
import { IoThreadHost, type SharedGuestRam } from '../io-thread/index.js';
import type { VirtioBlk, VirtioBlkOptions } from './device.js';
import type { BlkIoThreadInit } from './io-thread.js';

export function offloadVirtioBlk(inner: VirtioBlk, opts: VirtioBlkOptions, ram: SharedGuestRam, onError: (msg: string) => void,
  threadName = 'blk-io', openAfter?: Promise<void>): IoThreadHost<BlkIoThreadInit> {
  return new IoThreadHost<BlkIoThreadInit>(inner, {
    worker: new URL('./io-thread.js', import.meta.url),
    init: {
      path: opts.path, readonly: inner.readonly, sectorSize: inner.sectorSize, physicalSectorSize: inner.physicalSectorSize,
      serial: inner.serial, format: opts.format, nodelete: opts.nodelete, direct: opts.direct, nocache: opts.nocache, queueSize: inner.maxQueueSize,
    },
    ram, label: 'virtio-blk', threadName, onError, ...(openAfter && { openAfter }),
  });
}
