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
 */
import { rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { UserError } from '../../errors.js';
import type { DiskCheckpointOp, DiskState } from '../../snapshot/disks.js';
import type { BlockBackend } from './backend.js';
import { openImage, type OpenImageOptions } from './open.js';
import { createQcow2 } from './qcow2/create.js';
import { Qcow2Backend } from './qcow2/image.js';

/**
 * Do `op` on `disk`, opened with `opts`. Returns what the checkpoint made of
 * it and, after an external one, the overlay's backend, which replaces
 * `disk` (closed by then). Throws a one-line error; `disk` is then unchanged
 * and still in use.
 */
export function checkpointImage(disk: BlockBackend, opts: OpenImageOptions, op: DiskCheckpointOp): { state: DiskState; backend?: BlockBackend } {
  const path = resolve(opts.path);
  const format = disk instanceof Qcow2Backend ? 'qcow2' : 'raw';
  const state: DiskState = { path, format, readonly: disk.readonly };
  if (disk.readonly) return { state };
  const label = opts.label ?? 'disk';
  const fail = (e: unknown): never => { throw new UserError(`${label} ${path}: ${e instanceof Error ? e.message : String(e)}`, 'EDISKCKPT'); };
  if (op.t === 'internal') {
    if (!disk.snapshots) return { state };
    try {
      disk.flush();
      if (disk.snapshots.list().includes(op.name)) disk.snapshots.delete(op.name);
      disk.snapshots.create(op.name);
    } catch (e) {
      fail(e);
    }
    return { state: { ...state, snapshot: op.name } };
  }
  let created = false;
  try {
    disk.flush();
    createQcow2(op.overlay, { size: disk.size, backingFile: path, backingFormat: format, exclusive: true });
    created = true;
    const backend = openImage({ ...opts, path: op.overlay, format: 'qcow2', readonly: false });
    disk.close();
    return { state: { ...state, overlay: op.overlay }, backend };
  } catch (e) {
    if (created) rmSync(op.overlay, { force: true });
    return fail(e);
  }
}
