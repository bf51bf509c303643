/**
 * A checkpoint's work on one open disk (snapshot/disks.ts), done by
 * whichever instance of the image does the I/O (the disk's I/O thread, or
 * the main thread without one), with the device quiesced:
 *   internal  a qcow2 snapshot of the checkpoint's name (one of that name is
 *             replaced, as QEMU's savevm does); a raw disk only reports itself
 *   external  a new qcow2 overlay, backing file the disk as it is (absolute
 *             name, format recorded), opened with the disk's settings; the
 *             old image is closed and from then on only read, as the backing file
 * A read-only disk cannot change: nothing is done to it.
 *
 * A disk served by an I/O thread is open twice: the thread's instance owns
 * the image (a qcow2 image keeps its metadata in one instance) and does the
 * work; the main thread's passive one (geometry, flushes) follows it to the
 * overlay (diskCheckpointHook).
 */
import { rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { UserError } from '../../errors.js';
import type { DiskCheckpoint, DiskCheckpointOp, DiskState } from '../../snapshot/disks.js';
import type { BlockBackend } from './backend.js';
import { openImage, type OpenImageOptions } from './open.js';
import { createQcow2 } from './qcow2/create.js';
import { Qcow2Backend } from './qcow2/image.js';

/** One instance of an open disk: its backend, replaced when the disk moves to an overlay. */
export interface HeldImage { backend: BlockBackend }

/**
 * Do `op` on `held`'s disk, opened with `opts`; after an external one its
 * backend is the overlay's (the old one closed). Returns what the checkpoint
 * made of the disk. Throws a one-line error; the disk is then unchanged and
 * still in use.
 */
export function checkpointImage(held: HeldImage, opts: OpenImageOptions, op: DiskCheckpointOp): DiskState {
  const disk = held.backend;
  const path = resolve(opts.path);
  const format = disk instanceof Qcow2Backend ? 'qcow2' : 'raw';
  const state: DiskState = { path, format, readonly: disk.readonly };
  if (disk.readonly) return state;
  const label = opts.label ?? 'disk';
  const fail = (e: unknown): never => { throw new UserError(`${label} ${path}: ${e instanceof Error ? e.message : String(e)}`, 'EDISKCKPT'); };
  if (op.t === 'internal') {
    if (!disk.snapshots) return state;
    try {
      disk.flush();
      if (disk.snapshots.list().includes(op.name)) disk.snapshots.delete(op.name);
      disk.snapshots.create(op.name);
    } catch (e) {
      fail(e);
    }
    return { ...state, snapshot: op.name };
  }
  let created = false;
  try {
    disk.flush();
    createQcow2(op.overlay, { size: disk.size, backingFile: path, backingFormat: format, exclusive: true });
    created = true;
    held.backend = openImage({ ...opts, path: op.overlay, format: 'qcow2', readonly: false });
    disk.close();
    return { ...state, overlay: op.overlay };
  } catch (e) {
    if (created) rmSync(op.overlay, { force: true });
    return fail(e);
  }
}

/** Another instance (the I/O thread's) moved the disk to `overlay`: `held`, opened with `opts`, follows it. */
export function followOverlay(held: HeldImage, opts: OpenImageOptions, overlay: string): void {
  const next = openImage({ ...opts, path: overlay, format: 'qcow2' });
  held.backend.close();
  held.backend = next;
}

/** A disk device's instance on the main thread, as a checkpoint uses it. */
export interface CheckpointHere {
  /** do the work here (no I/O thread) */
  checkpointDisk(op: DiskCheckpointOp): DiskState;
  /** follow the I/O thread's instance to its overlay */
  followOverlay(overlay: string): void;
}

/**
 * A disk device's DiskCheckpoint hook: the work is done by the instance
 * that does the I/O, `thread` when there is one (then `here` follows it to
 * an overlay), else `here`.
 */
export function diskCheckpointHook(here: CheckpointHere, thread?: { checkpointDisk(op: DiskCheckpointOp): Promise<DiskState> }): DiskCheckpoint {
  return {
    checkpointDisk: async (op) => {
      if (!thread) return here.checkpointDisk(op);
      const state = await thread.checkpointDisk(op);
      if (state.overlay !== undefined) here.followOverlay(state.overlay);
      return state;
    },
  };
}
