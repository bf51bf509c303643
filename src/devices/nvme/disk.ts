/**
 * The namespace's storage and the I/O queues over it, built the same way
 * on the main thread and on the controller's I/O thread: a raw file or
 * block device or a qcow2 image (devices/block's openImage), or bhyve's RAM
 * disk. When the I/O thread serves the queues, the main thread's instance
 * is passive (an image format keeps its metadata in one instance): it gives
 * the geometry and flushes. A checkpoint that moves the disk to an overlay
 * replaces the namespace's backend (devices/block/checkpoint.ts).
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { openImage, type BlockBackend, type ImageFormat, type OpenImageOptions } from '../block/index.js';
import { IoCommands, type Namespace } from './io.js';
import { IoQueues, type IoQueueLimits } from './io-queues.js';
import { RamBlockBackend } from './ram-backend.js';

/** What it takes to open the disk (structured-cloneable: the I/O thread opens it again). */
export interface DiskInit {
  path?: string;
  /** undefined: probed from the file's header */
  format?: ImageFormat;
  /** the RAM disk's bytes */
  ram?: SharedArrayBuffer;
  readonly: boolean;
  nocache: boolean;
  direct: boolean;
  sectorSize: number;
  /** deallocate offered: resolved from bhyve's dsm=auto|enable|disable on the main thread */
  dsm: boolean;
  limits: IoQueueLimits;
  /** Stat counters, shared with the main thread (SMART log) */
  stats: SharedArrayBuffer;
}

/** How a file or block device namespace is opened (and an overlay of it); `passive`: another instance (the I/O thread's) does the I/O. */
export function imageOptions(d: DiskInit, label: string, passive = false): OpenImageOptions {
  if (d.path === undefined) throw new Error('a ram= disk has no image file');
  return { path: d.path, format: d.format, readonly: d.readonly, nocache: d.nocache, direct: d.direct, label, passive };
}

/** The namespace's storage. */
export function openBackend(d: DiskInit, label: string, passive = false): BlockBackend {
  if (d.ram) return new RamBlockBackend(d.ram);
  return openImage(imageOptions(d, label, passive));
}

/** The namespace over `backend`. */
export function namespaceOver(backend: BlockBackend, d: DiskInit): Namespace {
  return { backend, sectorSize: d.sectorSize, readonly: d.readonly, dsm: d.dsm };
}

/** The I/O queues over `ns`. */
export function ioQueuesOver(mem: GuestMemory, ns: Namespace, d: DiskInit, signal: (vector: number) => void, onFatal: () => void): IoQueues {
  return new IoQueues(mem, new IoCommands(mem, ns, new Float64Array(d.stats)), d.limits, signal, onFatal);
}
