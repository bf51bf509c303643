/**
 * The namespace's storage and the I/O queues over it, built the same way
 * on the main thread and on the controller's I/O thread: a raw file or
 * block device (devices/block), or bhyve's RAM disk.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { UserError } from '../../errors.js';
import { FileBlockBackend, probeFormat, type BlockBackend } from '../block/index.js';
import { IoCommands, type Namespace } from './io.js';
import { IoQueues, type IoQueueLimits } from './io-queues.js';
import { RamBlockBackend } from './ram-backend.js';

/** What it takes to open the disk (structured-cloneable: the I/O thread opens it again). */
export interface DiskInit {
  path?: string;
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

export function openBackend(d: DiskInit, label: string): BlockBackend {
  if (d.ram) return new RamBlockBackend(d.ram);
  const file = FileBlockBackend.open({ path: d.path!, readonly: d.readonly, nocache: d.nocache, direct: d.direct, label });
  // A qcow2 image read as raw would show the guest qcow2's metadata: refuse
  // it until the namespace opens images through the block layer's probe.
  if (probeFormat(file) !== 'raw') {
    file.close();
    throw new UserError(`${label}: '${d.path}' is a qcow2 image; NVMe namespaces take raw files for now (virtio-blk takes qcow2)`, 'EBADIMAGE');
  }
  return file;
}

/** The I/O queues over `backend`. */
export function ioQueuesOver(mem: GuestMemory, backend: BlockBackend, d: DiskInit,
  signal: (vector: number) => void, onFatal: () => void): IoQueues {
  const ns: Namespace = { backend, sectorSize: d.sectorSize, readonly: d.readonly, dsm: d.dsm };
  return new IoQueues(mem, new IoCommands(mem, ns, new Float64Array(d.stats)), d.limits, signal, onFatal);
}
