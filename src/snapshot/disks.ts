/**
 * Checkpoints that include disks (bhyve's --checkpoint and --ext-checkpoint):
 * the hook a device with a disk offers, the rule that names what a
 * checkpoint makes of a disk, and the document's `disks` part, one record
 * per disk:
 *
 *   { "id$str": "pci.0.4.0", "path$str": "/abs/disk.qcow2", "format$str": "qcow2",
 *     "snapshot$str": "vm.ckp" }                    internal: a qcow2 snapshot in the disk
 *   { ..., "overlay$str": "/abs/vm.ckp.pci.0.4.0.qcow2" }  external: the VM went on in this overlay
 *
 * A raw disk of an internal checkpoint, and a read-only disk, have neither.
 * The document is untrusted: its paths are only compared with the disks the
 * command line names (never opened as disks), and every field is checked.
 */
import { basename, isAbsolute } from 'node:path';
import { StateWriter, type StateReader } from './state.js';
import { MAX_DEVICES } from './persist.js';

export type DiskFormat = 'raw' | 'qcow2';

/** What a checkpoint does to each disk, while the vCPUs are parked and the device quiesced. */
export type DiskCheckpointOp =
  /** take the qcow2 snapshot `name` (one of that name is replaced) */
  | { t: 'internal'; name: string }
  /** go on in a new qcow2 overlay at `overlay` whose backing file is the disk as it is */
  | { t: 'external'; overlay: string };

/** One disk as a checkpoint left it. */
export interface DiskState {
  /** the image the VM was using at the checkpoint (absolute) */
  path: string;
  format: DiskFormat;
  readonly: boolean;
  /** internal: the qcow2 snapshot taken */
  snapshot?: string;
  /** external: the overlay the VM goes on writing in */
  overlay?: string;
}

export interface DiskRecord extends DiskState {
  /** the device's id (`pci.0.4.0`) */
  id: string;
}

/** The hook of a device that has a disk; errors are one line. */
export interface DiskCheckpoint {
  checkpointDisk(op: DiskCheckpointOp): Promise<DiskState>;
}

/** The qcow2 snapshot an internal checkpoint to `file` takes: the file's base name (`/var/tmp/vm.ckp` -> `vm.ckp`). */
export function diskSnapshotName(file: string): string { return basename(file); }

/** The overlay an external checkpoint to `file` starts for device `id`: next to it, `FILE.ID.qcow2`. */
export function overlayFile(file: string, id: string): string { return `${file}.${id}.qcow2`; }

/** The `disks` part. */
export function saveDisks(records: readonly DiskRecord[]): StateWriter[] {
  return records.map((d) => {
    const w = new StateWriter().str('id', d.id).str('path', d.path).str('format', d.format).bool('readonly', d.readonly);
    if (d.snapshot !== undefined) w.str('snapshot', d.snapshot);
    if (d.overlay !== undefined) w.str('overlay', d.overlay);
    return w;
  });
}

const MAX_PATH = 4096;
/** qcow2 keeps names of up to 65535 bytes; a file's base name is at most 255. */
const MAX_SNAPSHOT_NAME = 255;

function absPath(r: StateReader, name: string): string {
  const p = r.str(name, MAX_PATH);
  if (!isAbsolute(p) || p.includes('\0')) r.fail(name, 'not an absolute path');
  return p;
}

/** Read and check the `disks` part (SnapshotError on anything odd). */
export function readDisks(entries: readonly StateReader[]): DiskRecord[] {
  const seen = new Set<string>();
  return entries.map((r) => {
    const id = r.str('id', 64);
    if (!/^pci\.[0-9]{1,3}\.[0-9]{1,2}\.[0-7]$/.test(id)) r.fail('id', 'not a PCI device id');
    if (seen.has(id)) r.fail('id', `${id} is in the snapshot twice`);
    seen.add(id);
    const format = r.str('format', 8);
    if (format !== 'raw' && format !== 'qcow2') r.fail('format', 'not raw or qcow2');
    const d: DiskRecord = { id, path: absPath(r, 'path'), format: format as DiskFormat, readonly: r.bool('readonly') };
    if (r.has('snapshot')) {
      const s = r.str('snapshot', MAX_SNAPSHOT_NAME);
      if (s === '' || /[\0-\x1f\x7f]/.test(s)) r.fail('snapshot', 'not a snapshot name');
      if (format !== 'qcow2') r.fail('snapshot', 'only qcow2 disks hold snapshots');
      d.snapshot = s;
    }
    if (r.has('overlay')) {
      if (d.snapshot !== undefined) r.fail('overlay', 'a disk has a snapshot or an overlay, not both');
      d.overlay = absPath(r, 'overlay');
    }
    return d;
  });
}

/** Longest `disks` part (one disk per device). */
export const MAX_DISKS = MAX_DEVICES;

/** The one warning line for disks an internal checkpoint could not include (raw ones), or undefined. */
export function rawDisksWarning(records: readonly DiskRecord[]): string | undefined {
  const raw = records.filter((d) => d.format === 'raw' && !d.readonly && d.snapshot === undefined && d.overlay === undefined);
  if (raw.length === 0) return undefined;
  return `raw disks have no snapshots and are not part of the checkpoint (writes after it stay): ${raw.map((d) => `${d.id} (${d.path})`).join(', ')}`;
}
