/**
 * Internal snapshots, as QEMU keeps them (block/qcow2-snapshot.c), so that
 * qemu-img and tshyve-img list, apply and delete each other's: a snapshot
 * is a copy of the L1 table plus one more reference to every L2 table and
 * data cluster it reaches; COPIED flags then say which clusters the active
 * image owns alone. Offline operations on an image opened read-write.
 *
 * Each operation starts with a flush, so that frees the open image deferred
 * (refcount.ts) are applied before the refcounts are walked.
 *
 * Order, for crash safety: references are added before anything points at
 * them, the snapshot table is written to new clusters and made durable
 * before the header names it, and references are dropped last (a crash
 * leaks, it never frees a cluster still in use).
 */
import { BlockIoError } from '../backend.js';
import {
  COMPRESSED, HI_COPIED, NORMAL, ZERO, compressedRange, entryOffset, hiOf, loOf, putEntry, type CompressedRange,
} from './entries.js';
import type { Qcow2Backend } from './image.js';
import { encodeSnapshotTable, readSnapshotTable, type SnapshotEntry } from './snapshot-table.js';

export function listSnapshots(img: Qcow2Backend): SnapshotEntry[] {
  return readSnapshotTable(img.file, img.header, img.fileSize, img.path);
}

function find(list: SnapshotEntry[], nameOrId: string): number {
  const byName = list.findIndex((s) => s.name === nameOrId);
  return byName >= 0 ? byName : list.findIndex((s) => s.id === nameOrId);
}

/**
 * Add `addend` to the references of every L2 table and cluster under the
 * L1 table `l1` (its first l1Size entries, stored at l1Off, or nowhere any
 * more), and set the COPIED flags of the entries walked to refcount == 1
 * (written back).
 */
function updateTree(img: Qcow2Backend, l1: Buffer, l1Size: number, l1Off: number | undefined, addend: number): void {
  const cs = img.cs, rc = img.refcounts;
  const cr: CompressedRange = { offset: 0, length: 0 };
  const t = Buffer.alloc(cs);
  for (let i = 0; i < l1Size; i++) {
    const hi = l1.readUInt32BE(8 * i), lo = l1.readUInt32BE(8 * i + 4);
    const off = entryOffset(hi, lo);
    if (off === 0) continue;
    if (off % cs !== 0 || off < cs || off >= img.fileSize) throw new BlockIoError('snapshot', 'EIO', `L1 entry ${i} points at ${off}`);
    img.file.read(t, off);
    let changed = false;
    for (let j = 0; j < img.l2n; j++) {
      const ehi = t.readUInt32BE(8 * j), elo = t.readUInt32BE(8 * j + 4);
      if (ehi === 0 && elo === 0) continue;
      const kind = img.classify(ehi, elo, 'snapshot');
      if (kind === COMPRESSED) {
        compressedRange(ehi, elo, img.clusterBits, cr);
        if (addend !== 0) {
          const a = Math.floor(cr.offset / cs), b = Math.floor((cr.offset + cr.length - 1) / cs);
          for (let x = a; x <= b; x++) rc.update(x, addend);
        }
        continue;
      }
      const host = entryOffset(ehi, elo);
      if ((kind !== NORMAL && kind !== ZERO) || host === 0) continue;
      const r = addend !== 0 ? rc.update(host / cs, addend) : rc.get(host / cs);
      const nhi = r === 1 ? (ehi | HI_COPIED) >>> 0 : (ehi & ~HI_COPIED) >>> 0;
      if (nhi !== ehi) { putEntry(t, j, nhi, elo); changed = true; }
    }
    if (changed) img.file.write(t, off);
    const r = addend !== 0 ? rc.update(off / cs, addend) : rc.get(off / cs);
    putEntry(l1, i, hiOf(off, r === 1 ? HI_COPIED : 0), loOf(off));
  }
  if (l1Size > 0 && l1Off !== undefined) img.file.write(l1.subarray(0, l1Size * 8), l1Off);
}

/** Replace the snapshot table by `list` (new clusters, durable, then the header; the old clusters freed). */
function writeTable(img: Qcow2Backend, old: SnapshotEntry[], list: SnapshotEntry[]): void {
  const h = img.header, cs = img.cs;
  const oldBytes = encodeSnapshotTable(old, h.version).length, oldOff = h.snapshotsOffset;
  const b = encodeSnapshotTable(list, h.version);
  let off = 0;
  if (b.length > 0) {
    const n = Math.ceil(b.length / cs);
    off = img.refcounts.alloc(n);
    img.file.write(Buffer.concat([b, Buffer.alloc(n * cs - b.length)]), off);
    img.grew(off + n * cs);
    img.file.flush();
  }
  h.nbSnapshots = list.length;
  h.snapshotsOffset = off;
  img.writeHeader();
  img.file.flush();
  if (oldBytes > 0 && oldOff > 0) {
    for (let c = oldOff / cs; c < Math.ceil((oldOff + oldBytes) / cs); c++) img.refcounts.update(c, -1);
  }
}

export function createSnapshot(img: Qcow2Backend, name: string, vmClockNsec = 0n, now = Date.now()): SnapshotEntry {
  img.flush(); // frees the open image deferred are applied first: the walks below must see final refcounts
  const list = listSnapshots(img);
  if (find(list, name) >= 0) throw new BlockIoError('snapshot', 'EEXIST', `snapshot '${name}' exists`);
  const h = img.header, cs = img.cs;
  // a copy of the L1 table, with references for everything under it
  const n = Math.ceil((h.l1Size * 8) / cs);
  const copyOff = n > 0 ? img.refcounts.alloc(n) : 0;
  updateTree(img, img.l1, h.l1Size, h.l1TableOffset, 1);
  if (n > 0) {
    const copy = Buffer.alloc(n * cs);
    img.l1.copy(copy, 0, 0, h.l1Size * 8);
    img.file.write(copy, copyOff);
    img.grew(copyOff + copy.length);
  }
  img.file.flush();
  const id = String(list.reduce((m, s) => Math.max(m, Number(s.id) || 0), 0) + 1);
  const entry: SnapshotEntry = {
    l1TableOffset: copyOff, l1Size: h.l1Size, id, name,
    dateSec: Math.floor(now / 1000), dateNsec: (now % 1000) * 1e6, vmClockNsec, vmStateSize: 0,
    extra: Buffer.alloc(24), diskSize: h.size, // vm_state_size_large, disk_size, icount (as QEMU writes them)
  };
  writeTable(img, list, [...list, entry]);
  img.resetCaches();
  return entry;
}

export function applySnapshot(img: Qcow2Backend, nameOrId: string): void {
  img.flush();
  const list = listSnapshots(img);
  const i = find(list, nameOrId);
  if (i < 0) throw new BlockIoError('snapshot', 'ENOENT', `no snapshot '${nameOrId}'`);
  const s = list[i]!, h = img.header;
  if (s.diskSize !== undefined && s.diskSize !== h.size) throw new BlockIoError('snapshot', 'EINVAL', `snapshot '${s.name}' has another disk size`);
  const snapL1 = Buffer.alloc(s.l1Size * 8);
  img.file.read(snapL1, s.l1TableOffset);
  img.growL1(s.l1Size);
  // references for the snapshot's tree first, then it becomes the active table, then the old tree loses its own
  updateTree(img, Buffer.from(snapL1), s.l1Size, s.l1TableOffset, 1);
  img.file.read(snapL1, s.l1TableOffset); // with the flags the walk set
  const old = Buffer.from(img.l1);
  img.l1.fill(0);
  snapL1.copy(img.l1);
  img.file.write(img.l1, h.l1TableOffset);
  img.file.flush();
  updateTree(img, old, h.l1Size, undefined, -1);
  updateTree(img, img.l1, h.l1Size, h.l1TableOffset, 0);
  img.file.flush();
  img.resetCaches();
}

export function deleteSnapshot(img: Qcow2Backend, nameOrId: string): void {
  img.flush();
  const list = listSnapshots(img);
  const i = find(list, nameOrId);
  if (i < 0) throw new BlockIoError('snapshot', 'ENOENT', `no snapshot '${nameOrId}'`);
  const s = list[i]!, cs = img.cs;
  writeTable(img, list, list.filter((_, k) => k !== i));
  const l1 = Buffer.alloc(s.l1Size * 8);
  img.file.read(l1, s.l1TableOffset);
  updateTree(img, l1, s.l1Size, s.l1TableOffset, -1);
  const n = Math.ceil((s.l1Size * 8) / cs);
  for (let c = s.l1TableOffset / cs; c < s.l1TableOffset / cs + n; c++) img.refcounts.update(c, -1);
  updateTree(img, img.l1, img.header.l1Size, img.header.l1TableOffset, 0);
  img.file.flush();
  img.resetCaches();
}
