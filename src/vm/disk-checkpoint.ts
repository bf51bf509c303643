/**
 * Checkpoints that include disks (snapshot/disks.ts), the VM's side: a save
 * asks every device with a disk to take the checkpoint's qcow2 snapshot
 * (internal) or to go on in a new overlay (external), the vCPUs parked and
 * the devices quiesced; a restore checks the disks the command line names
 * against the document and reverts qcow2 disks to the checkpoint's snapshot
 * before any device opens them.
 *
 * The document is untrusted: the disks opened are the command line's; the
 * document's paths are only compared with them. As with QEMU's loadvm, the
 * disks are reverted before the device state is loaded, so a snapshot
 * refused after that leaves them reverted (every disk is checked first, so a
 * missing snapshot changes none).
 */
import { statSync, type Stats } from 'node:fs';
import { UserError } from '../errors.js';
import type { ConfigTree } from '../config/tree.js';
import { SnapshotError } from '../snapshot/state.js';
import type { PersistentDevice } from '../snapshot/persist.js';
import { diskSnapshotName, overlayFile, type DiskCheckpointOp, type DiskRecord } from '../snapshot/disks.js';
import { findPciDevice } from '../pci/device.js';
import { openImage } from '../devices/block/index.js';

/** Every device's disk through the checkpoint to `file`; devices quiesced. Throws one line naming the device. */
export async function checkpointDisks(devices: readonly PersistentDevice[], file: string, external: boolean): Promise<DiskRecord[]> {
  const records: DiskRecord[] = [];
  for (const d of devices) {
    if (!d.disk) continue;
    const op: DiskCheckpointOp = external ? { t: 'external', overlay: overlayFile(file, d.id) } : { t: 'internal', name: diskSnapshotName(file) };
    try {
      records.push({ id: d.id, ...(await d.disk.checkpointDisk(op)) });
    } catch (e) {
      const done = records.length > 0 ? ` (done before it: ${records.map((r) => r.id).join(', ')})` : '';
      throw new UserError(`checkpoint of disk ${d.id} failed: ${(e as Error).message.split('\n')[0]}${done}; nothing was saved`, 'EDISKCKPT');
    }
  }
  return records;
}

const statOf = (p: string): Stats | undefined => { try { return statSync(p); } catch { return undefined; } };
const sameFile = (a: Stats, b: Stats): boolean => a.dev === b.dev && a.ino === b.ino;

/**
 * Check the disks `config` names against the checkpoint's records, then
 * revert each qcow2 disk to its snapshot (SnapshotError, one line, when a
 * disk does not fit: missing, another format, no such snapshot, the overlay).
 */
export function applyDiskCheckpoints(file: string, records: readonly DiskRecord[], config: ConfigTree): void {
  const fail = (d: DiskRecord, why: string): never => { throw new SnapshotError(`snapshot ${file}: disk ${d.id}: ${why}`, 'EMISMATCH'); };
  const reverts: { path: string; format: string; name: string }[] = [];
  for (const d of records) {
    const node = config.node(d.id);
    const img = node && findPciDevice(node.get('device') ?? '')?.diskImage?.(node);
    if (!img) fail(d, 'this VM has no disk there');
    const st = statOf(img!.path);
    if (!st) fail(d, `'${img!.path}' is missing`);
    if (d.overlay !== undefined) {
      // an external checkpoint goes on from the disk as it was: the overlay's backing file, never the overlay
      const ov = statOf(d.overlay), was = statOf(d.path);
      if (ov && sameFile(ov, st!)) fail(d, `'${img!.path}' is the overlay this checkpoint started; restore with the disk it was taken of ('${d.path}')`);
      if (was && !sameFile(was, st!)) fail(d, `the checkpoint was taken of '${d.path}', not '${img!.path}'`);
    }
    const disk = openImage({ path: img!.path, readonly: true, format: img!.format as 'raw' | 'qcow2' | undefined, label: d.id });
    try {
      const format = disk.snapshots ? 'qcow2' : 'raw';
      if (format !== d.format) fail(d, `'${img!.path}' is a ${format} image, the checkpoint's was ${d.format}`);
      if (d.snapshot !== undefined && !disk.snapshots!.list().includes(d.snapshot)) {
        fail(d, `'${img!.path}' holds no qcow2 snapshot '${d.snapshot}'`);
      }
    } finally {
      disk.close();
    }
    if (d.snapshot !== undefined) reverts.push({ path: img!.path, format: d.format, name: d.snapshot });
  }
  for (const r of reverts) {
    const disk = openImage({ path: r.path, format: 'qcow2', label: 'disk' });
    try { disk.snapshots!.apply(r.name); } finally { disk.close(); }
  }
}
