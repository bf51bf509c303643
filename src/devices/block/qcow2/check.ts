/**
 * qcow2 consistency check and refcount repair (`tshyve-img check`, and an
 * image left dirty by a crash with lazy refcounts): every reference the
 * metadata makes (header, L1 tables of the image and its snapshots, L2
 * tables, data and compressed clusters, the refcount structure, the
 * snapshot table) is counted, as QEMU counts them, and compared with the
 * stored refcounts. A stored count above the references is a leak (space
 * lost, no harm); below is corruption (a cluster could be handed out twice).
 * Memory is one counter per cluster of the file, bounded.
 */
import { BlockIoError } from '../backend.js';
import {
  COMPRESSED, HI_COPIED, L1_HI_RESERVED, L1_LO_RESERVED, NORMAL, ZERO, compressedRange, entryOffset, hiOf, loOf, putEntry,
  type CompressedRange,
} from './entries.js';
import type { Qcow2Backend } from './image.js';
import { readSnapshotTable } from './snapshot-table.js';

/** Clusters a check counts at most (a counter each). */
const MAX_CHECK_CLUSTERS = 1 << 26;

export interface CheckResult {
  /** clusters whose refcount is below their references, and broken entries */
  corruptions: number;
  /** clusters whose refcount is above their references */
  leaks: number;
  /** COPIED flags that disagree with a refcount of 1 (repair fixes them) */
  flagErrors: number;
  /** one line per problem found (the first few hundred) */
  messages: string[];
  /** clusters allocated / total for the guest's size, as qemu-img's "Image end offset" needs */
  allocatedClusters: number;
  totalClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  imageEndOffset: number;
}

class Counter {
  readonly refs: Uint32Array;
  errors = 0;
  readonly messages: string[] = [];
  constructor(n: number, private readonly cs: number) { this.refs = new Uint32Array(n); }
  note(msg: string): void {
    this.errors++;
    if (this.messages.length < 200) this.messages.push(msg);
  }
  /** One reference to each cluster of host bytes [off, off+len). */
  add(off: number, len: number, what: string): void {
    const a = Math.floor(off / this.cs), b = Math.floor((off + len - 1) / this.cs);
    if (b >= this.refs.length) { this.note(`ERROR ${what} at ${off} is past the end of the file`); return; }
    for (let c = a; c <= b; c++) if (this.refs[c]! < 0xffffffff) this.refs[c]!++;
  }
}

/** Count every reference, walk every table; nothing is written. */
export function countReferences(img: Qcow2Backend): { counter: Counter; res: CheckResult } {
  const cs = img.cs, h = img.header;
  const nb = Math.max(Math.ceil(img.fileSize / cs), img.refcounts.endCluster);
  if (nb > MAX_CHECK_CLUSTERS) throw new BlockIoError('check', 'EFBIG', `${img.path}: too many clusters to check (${nb})`);
  const k = new Counter(nb, cs);
  const res: CheckResult = {
    corruptions: 0, leaks: 0, flagErrors: 0, messages: k.messages, allocatedClusters: 0,
    totalClusters: Math.ceil(h.size / cs), fragmentedClusters: 0, compressedClusters: 0, imageEndOffset: 0,
  };
  k.add(0, cs, 'header');
  const cr: CompressedRange = { offset: 0, length: 0 };
  const l2buf = Buffer.alloc(cs);
  let lastHost = -1;
  const walk = (l1: Buffer, l1Off: number, l1Size: number, active: boolean): void => {
    if (l1Size > 0) k.add(l1Off, l1Size * 8, 'L1 table');
    for (let i = 0; i < l1Size; i++) {
      const hi = l1.readUInt32BE(8 * i), lo = l1.readUInt32BE(8 * i + 4);
      if ((hi & L1_HI_RESERVED) || (lo & L1_LO_RESERVED)) { k.note(`ERROR L1 entry ${i} has reserved bits set`); continue; }
      const off = entryOffset(hi, lo);
      if (off === 0) continue;
      if (off % cs !== 0 || off < cs || off >= img.fileSize) { k.note(`ERROR L1 entry ${i}: L2 table offset ${off} is invalid`); continue; }
      k.add(off, cs, 'L2 table');
      try {
        img.file.read(l2buf, off);
      } catch {
        k.note(`ERROR L2 table at ${off} cannot be read`);
        continue;
      }
      for (let j = 0; j < img.l2n; j++) {
        const ehi = l2buf.readUInt32BE(8 * j), elo = l2buf.readUInt32BE(8 * j + 4);
        if (ehi === 0 && elo === 0) continue;
        let t: number;
        try {
          t = img.classify(ehi, elo, 'check');
        } catch (e) {
          k.note(`ERROR L2 entry ${j} of table at ${off}: ${(e as Error).message}`);
          continue;
        }
        const guest = (i * img.l2n + j) * cs;
        if (t === COMPRESSED) {
          compressedRange(ehi, elo, img.clusterBits, cr);
          k.add(cr.offset, cr.length, 'compressed cluster');
          if (active && guest < h.size) { res.allocatedClusters++; res.compressedClusters++; }
        } else if (t === NORMAL || (t === ZERO && entryOffset(ehi, elo) !== 0)) {
          const host = entryOffset(ehi, elo);
          k.add(host, cs, 'data cluster');
          if (active && t === NORMAL && guest < h.size) {
            res.allocatedClusters++;
            if (lastHost >= 0 && host !== lastHost + cs) res.fragmentedClusters++;
            lastHost = host;
          }
        }
      }
    }
  };
  walk(img.l1, h.l1TableOffset, h.l1Size, true);
  try {
    const snaps = readSnapshotTable(img.file, h, img.fileSize, img.path);
    if (h.nbSnapshots > 0) {
      let bytes = 0;
      for (const s of snaps) bytes += Math.ceil((40 + s.extra.length + Buffer.byteLength(s.id) + Buffer.byteLength(s.name)) / 8) * 8;
      k.add(h.snapshotsOffset, bytes, 'snapshot table');
    }
    for (const s of snaps) {
      const l1 = Buffer.alloc(s.l1Size * 8);
      img.file.read(l1, s.l1TableOffset);
      walk(l1, s.l1TableOffset, s.l1Size, false);
    }
  } catch (e) {
    k.note(`ERROR snapshot table: ${(e as Error).message}`);
  }
  const rc = img.refcounts;
  k.add(rc.tableOffset, rc.tableClusters * cs, 'refcount table');
  for (let i = 0; i < rc.table.length / 8; i++) {
    const hi = rc.table.readUInt32BE(8 * i), lo = rc.table.readUInt32BE(8 * i + 4);
    const off = hi * 2 ** 32 + ((lo & ~0x1ff) >>> 0);
    if (off === 0 && (lo & 0x1ff) === 0) continue;
    if ((lo & 0x1ff) || off % cs !== 0 || off < cs || off >= img.fileSize) { k.note(`ERROR refcount block ${i} offset ${off} is invalid`); continue; }
    k.add(off, cs, 'refcount block');
  }
  return { counter: k, res };
}

/** Check the image; with `repair`, set every refcount to its references and fix COPIED flags. */
export function checkImage(img: Qcow2Backend, repair: boolean): CheckResult {
  const { counter: k, res } = countReferences(img);
  res.corruptions = k.errors;
  const refs = k.refs;
  let end = 0;
  const fixes: { c: number; v: number }[] = [];
  for (let c = 0; c < refs.length; c++) {
    let stored: number;
    try {
      stored = img.refcounts.get(c);
    } catch (e) {
      res.corruptions++;
      k.messages.push(`ERROR refcount of cluster ${c}: ${(e as Error).message}`);
      continue;
    }
    const want = refs[c]!;
    if (stored > 0 || want > 0) end = c + 1;
    if (stored === want) continue;
    if (stored > want) {
      res.leaks++;
      if (k.messages.length < 200) k.messages.push(`Leaked cluster ${c} refcount=${stored} reference=${want}`);
    } else {
      res.corruptions++;
      if (k.messages.length < 200) k.messages.push(`ERROR cluster ${c} refcount=${stored} reference=${want}`);
    }
    fixes.push({ c, v: want });
  }
  res.imageEndOffset = Math.min(end * img.cs, Math.max(img.fileSize, end * img.cs));
  // COPIED flags of the active tables
  const l1 = img.l1, cs = img.cs;
  for (let i = 0; i < img.header.l1Size; i++) {
    let off: number;
    try {
      off = img.l1Entry(i, 'check');
    } catch {
      continue; // counted above
    }
    if (off === 0) continue;
    const copied = (l1.readUInt32BE(8 * i) & HI_COPIED) !== 0;
    const rcL2 = off / cs < refs.length ? refs[off / cs]! : 0;
    if (copied !== (rcL2 === 1)) {
      res.flagErrors++;
      if (repair) {
        putEntry(l1, i, hiOf(off, rcL2 === 1 ? HI_COPIED : 0), loOf(off));
        img.file.write(l1.subarray(8 * i, 8 * i + 8), img.header.l1TableOffset + 8 * i);
      }
    }
    const t = img.cache.get(off);
    let dirty = false;
    for (let j = 0; j < img.l2n; j++) {
      const hi = t.readUInt32BE(8 * j), lo = t.readUInt32BE(8 * j + 4);
      let kind: number;
      try { kind = img.classify(hi, lo, 'check'); } catch { continue; }
      const host = entryOffset(hi, lo);
      if (kind === COMPRESSED || host === 0) continue;
      const r = host / cs < refs.length ? refs[host / cs]! : 0;
      if (((hi & HI_COPIED) !== 0) !== (r === 1)) {
        res.flagErrors++;
        if (repair) { putEntry(t, j, r === 1 ? (hi | HI_COPIED) >>> 0 : (hi & ~HI_COPIED) >>> 0, lo); dirty = true; }
      }
    }
    if (dirty) img.cache.writeEntries(off, t, 0, img.l2n);
  }
  if (repair) {
    for (const f of fixes) img.refcounts.set(f.c, f.v);
    img.file.flush();
  }
  return res;
}

/** Open-time repair of an image left dirty (lazy refcounts): fix, then clear the dirty bit. */
export function repairRefcounts(img: Qcow2Backend): void {
  const r = checkImage(img, false);
  const damaged = r.messages.find((m) => m.startsWith('ERROR') && !m.startsWith('ERROR cluster'));
  if (damaged) throw new BlockIoError('open', 'EIO', `${img.path}: qcow2 image is dirty and its metadata is damaged: ${damaged}`);
  checkImage(img, true);
  img.header.incompatible &= ~1n;
  img.writeHeader();
  img.file.flush();
}
