/**
 * The qcow2 snapshot table (internal snapshots, as `qemu-img snapshot` and
 * QEMU's savevm keep them): read from untrusted bytes with every length
 * bounded, and written back in QEMU's layout (entries padded to 8 bytes, a
 * version 3 entry with the 16 bytes of extra data QEMU requires: the VM
 * state size and the disk size).
 */
import type { FileBlockBackend } from '../file.js';
import { MAX_L1_BYTES, badImage, type Qcow2Header } from './header.js';

/** QEMU's limits: the table at most 64 MiB, extra data at most 1 KiB per entry. */
const MAX_TABLE_BYTES = 64 << 20;
const MAX_EXTRA = 1024;

export interface SnapshotEntry {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize: number;
  /** extra data as found (kept when the table is rewritten) */
  extra: Buffer;
  /** the disk size when taken (extra data, version 3), if recorded */
  diskSize: number | undefined;
}

export function readSnapshotTable(file: FileBlockBackend, h: Qcow2Header, fileSize: number, path: string): SnapshotEntry[] {
  const out: SnapshotEntry[] = [];
  const cs = 2 ** h.clusterBits;
  let at = h.snapshotsOffset;
  const fixed = Buffer.alloc(40);
  for (let i = 0; i < h.nbSnapshots; i++) {
    if (at + 40 > fileSize || at - h.snapshotsOffset > MAX_TABLE_BYTES) throw badImage(path, 'snapshot table runs past the end of the file');
    file.read(fixed, at);
    const l1Off = Number(fixed.readBigUInt64BE(0));
    const l1Size = fixed.readUInt32BE(8);
    const idLen = fixed.readUInt16BE(12), nameLen = fixed.readUInt16BE(14);
    const extraLen = fixed.readUInt32BE(36);
    if (extraLen > MAX_EXTRA) throw badImage(path, `snapshot ${i} has ${extraLen} bytes of extra data`);
    const varLen = extraLen + idLen + nameLen;
    if (at + 40 + varLen > fileSize) throw badImage(path, 'snapshot table runs past the end of the file');
    const v = Buffer.alloc(varLen);
    file.read(v, at + 40);
    if (l1Size * 8 > MAX_L1_BYTES) throw badImage(path, `snapshot ${i} has an L1 table of ${l1Size} entries`);
    if (l1Size > 0 && (l1Off % cs !== 0 || l1Off < cs || l1Off + l1Size * 8 > fileSize)) {
      throw badImage(path, `snapshot ${i} L1 table is outside the file`);
    }
    const extra = Buffer.from(v.subarray(0, extraLen));
    out.push({
      l1TableOffset: l1Off, l1Size,
      id: v.toString('utf8', extraLen, extraLen + idLen),
      name: v.toString('utf8', extraLen + idLen, varLen),
      dateSec: fixed.readUInt32BE(16), dateNsec: fixed.readUInt32BE(20),
      vmClockNsec: fixed.readBigUInt64BE(24), vmStateSize: fixed.readUInt32BE(32),
      extra,
      diskSize: extraLen >= 16 ? Number(extra.readBigUInt64BE(8)) : undefined,
    });
    at += Math.ceil((40 + varLen) / 8) * 8;
  }
  return out;
}

export function encodeSnapshotTable(list: readonly SnapshotEntry[], version: number): Buffer {
  const parts: Buffer[] = [];
  for (const s of list) {
    let extra = s.extra;
    if (version >= 3 && extra.length < 16) {
      extra = Buffer.alloc(16);
      s.extra.copy(extra);
    }
    if (extra.length >= 16 && s.diskSize !== undefined) extra.writeBigUInt64BE(BigInt(s.diskSize), 8);
    const id = Buffer.from(s.id), name = Buffer.from(s.name);
    const len = Math.ceil((40 + extra.length + id.length + name.length) / 8) * 8;
    const b = Buffer.alloc(len);
    b.writeBigUInt64BE(BigInt(s.l1TableOffset), 0);
    b.writeUInt32BE(s.l1Size, 8);
    b.writeUInt16BE(id.length, 12);
    b.writeUInt16BE(name.length, 14);
    b.writeUInt32BE(s.dateSec, 16);
    b.writeUInt32BE(s.dateNsec, 20);
    b.writeBigUInt64BE(s.vmClockNsec, 24);
    b.writeUInt32BE(s.vmStateSize, 32);
    b.writeUInt32BE(extra.length, 36);
    extra.copy(b, 40);
    id.copy(b, 40 + extra.length);
    name.copy(b, 40 + extra.length + id.length);
    parts.push(b);
  }
  return Buffer.concat(parts);
}
