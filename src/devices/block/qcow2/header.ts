/**
 * The qcow2 header and its extensions (QEMU's docs/interop/qcow2.txt),
 * parsed from untrusted bytes and checked before anything else looks at
 * the file: every field is range-checked, every table lies inside the file
 * and outside the header cluster, and features tshyve does not implement are
 * refused with one line naming them. Big-endian throughout.
 */
import { UserError } from '../../../errors.js';

export const QCOW2_MAGIC = 0x514649fb; // 'QFI\xfb'
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** QEMU's limits: an L1 table of at most 32 MiB, a refcount table of at most 8 MiB. */
export const MAX_L1_BYTES = 32 << 20;
export const MAX_REFTABLE_BYTES = 8 << 20;
export const MAX_SNAPSHOTS = 65536;
/** Offsets in qcow2 entries are bits 9..55; tshyve's stay safe integers. */
export const MAX_OFFSET = 2 ** 53 - 1;

export const V2_HEADER_BYTES = 72;
export const V3_HEADER_BYTES = 104;

// incompatible features
export const INCOMPAT_DIRTY = 1;
export const INCOMPAT_CORRUPT = 2;
export const INCOMPAT_DATA_FILE = 4;
export const INCOMPAT_COMPRESSION = 8;
export const INCOMPAT_EXTL2 = 16;
// compatible features
export const COMPAT_LAZY_REFCOUNTS = 1;

export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

export interface HeaderExtension { type: number; data: Buffer }

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** the extensions as found (kept, in order, when the header is rewritten) */
  extensions: HeaderExtension[];
  backingFile: string | undefined;
  backingFormat: string | undefined;
}

/** Every qcow2 refusal: one line, naming the file. */
export function badImage(path: string, why: string): UserError {
  return new UserError(`${path}: invalid qcow2 image: ${why}`, 'EQCOW2');
}

function u64(b: Buffer, at: number, path: string, what: string): number {
  const v = b.readBigUInt64BE(at);
  if (v > BigInt(MAX_OFFSET)) throw badImage(path, `${what} ${v} is out of range`);
  return Number(v);
}

/**
 * Parse and check the header in `head` (the file's first cluster, or as
 * much of it as the file has), for a file of `fileSize` bytes.
 */
export function parseHeader(head: Buffer, fileSize: number, path: string): Qcow2Header {
  if (head.length < V2_HEADER_BYTES) throw badImage(path, 'file too short for a header');
  if (head.readUInt32BE(0) !== QCOW2_MAGIC) throw badImage(path, 'bad magic');
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new UserError(`${path}: qcow2 version ${version} is not supported (2 and 3 are)`, 'EQCOW2');
  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw badImage(path, `cluster size 2^${clusterBits} is outside 512 B..2 MiB`);
  }
  const clusterSize = 2 ** clusterBits;
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(head, 8, path, 'backing file offset'),
    backingFileSize: head.readUInt32BE(16),
    clusterBits,
    size: u64(head, 24, path, 'virtual size'),
    cryptMethod: head.readUInt32BE(32),
    l1Size: head.readUInt32BE(36),
    l1TableOffset: u64(head, 40, path, 'L1 table offset'),
    refcountTableOffset: u64(head, 48, path, 'refcount table offset'),
    refcountTableClusters: head.readUInt32BE(56),
    nbSnapshots: head.readUInt32BE(60),
    snapshotsOffset: u64(head, 64, path, 'snapshot table offset'),
    incompatible: 0n, compatible: 0n, autoclear: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_BYTES,
    compressionType: 0,
    extensions: [],
    backingFile: undefined,
    backingFormat: undefined,
  };
  if (version === 3) {
    if (head.length < V3_HEADER_BYTES) throw badImage(path, 'file too short for a version 3 header');
    h.incompatible = head.readBigUInt64BE(72);
    h.compatible = head.readBigUInt64BE(80);
    h.autoclear = head.readBigUInt64BE(88);
    h.refcountOrder = head.readUInt32BE(96);
    h.headerLength = head.readUInt32BE(100);
    if (h.headerLength < V3_HEADER_BYTES || h.headerLength > clusterSize || h.headerLength % 8 !== 0 || h.headerLength > head.length) {
      throw badImage(path, `header length ${h.headerLength} is invalid`);
    }
    if (h.headerLength > 104) h.compressionType = head.readUInt8(104);
    if (h.refcountOrder > 6) throw badImage(path, `refcount order ${h.refcountOrder} is above 6`);
  }
  checkFeatures(h, path);
  checkTables(h, fileSize, path);
  parseExtensions(h, head, path);
  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize === 0 || h.backingFileSize > 1023) throw badImage(path, `backing file name length ${h.backingFileSize} is invalid`);
    if (h.backingFileOffset + h.backingFileSize > Math.min(clusterSize, head.length)) {
      throw badImage(path, 'backing file name is outside the header cluster');
    }
    h.backingFile = head.toString('utf8', h.backingFileOffset, h.backingFileOffset + h.backingFileSize);
    if (h.backingFile.includes('\0')) throw badImage(path, 'backing file name holds a NUL byte');
  }
  return h;
}

function checkFeatures(h: Qcow2Header, path: string): void {
  const refuse = (what: string): never => { throw new UserError(`${path}: qcow2 feature not supported: ${what}`, 'EQCOW2'); };
  if (h.cryptMethod !== 0) refuse('encryption');
  const inc = h.incompatible;
  if (inc & BigInt(INCOMPAT_DATA_FILE)) refuse('external data file');
  if (inc & BigInt(INCOMPAT_EXTL2)) refuse('extended L2 entries');
  if (inc & BigInt(INCOMPAT_COMPRESSION)) {
    if (h.compressionType === 1) refuse('zstd compression');
    if (h.compressionType !== 0) refuse(`compression type ${h.compressionType}`);
  } else if (h.compressionType !== 0) {
    throw badImage(path, 'compression type set without its feature bit');
  }
  const known = BigInt(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION);
  if (inc & ~known) refuse(`incompatible feature bits 0x${(inc & ~known).toString(16)}`);
}

/** Every table inside the file, past the header cluster, of bounded size. */
function checkTables(h: Qcow2Header, fileSize: number, path: string): void {
  const cs = 2 ** h.clusterBits;
  const inFile = (off: number, len: number, what: string, allowEmpty = false): void => {
    if (len === 0 && allowEmpty) return;
    if (off % cs !== 0) throw badImage(path, `${what} offset ${off} is not cluster aligned`);
    if (off < cs) throw badImage(path, `${what} overlaps the header`);
    if (off + len > fileSize) throw badImage(path, `${what} lies past the end of the file`);
  };
  if (h.refcountTableClusters === 0) throw badImage(path, 'no refcount table');
  const rtBytes = h.refcountTableClusters * cs;
  if (rtBytes > MAX_REFTABLE_BYTES) throw badImage(path, `refcount table of ${rtBytes} bytes is too large`);
  inFile(h.refcountTableOffset, rtBytes, 'refcount table');
  if (h.l1Size * 8 > MAX_L1_BYTES) throw badImage(path, `L1 table of ${h.l1Size} entries is too large`);
  inFile(h.l1TableOffset, h.l1Size * 8, 'L1 table', true);
  // every guest byte must have an L1 entry
  const l2Entries = cs / 8;
  const needed = Math.ceil(h.size / (cs * l2Entries));
  if (needed > h.l1Size) throw badImage(path, `L1 table of ${h.l1Size} entries is too small for ${h.size} bytes`);
  if (h.size > 2 ** 62) throw badImage(path, 'virtual size is too large');
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw badImage(path, `${h.nbSnapshots} snapshots is too many`);
  if (h.nbSnapshots > 0) inFile(h.snapshotsOffset, 40 * h.nbSnapshots, 'snapshot table');
}

function parseExtensions(h: Qcow2Header, head: Buffer, path: string): void {
  const end = Math.min(head.length, 2 ** h.clusterBits, h.backingFileOffset || Infinity);
  let at = h.headerLength;
  for (let n = 0; ; n++) {
    if (at + 8 > end) return; // v2 images may have no end marker before the backing name
    const type = head.readUInt32BE(at);
    const len = head.readUInt32BE(at + 4);
    if (type === EXT_END) return;
    if (n > 1024 || len > end - at - 8) throw badImage(path, 'header extension runs past the header');
    const data = Buffer.from(head.subarray(at + 8, at + 8 + len));
    switch (type) {
      case EXT_DATA_FILE: throw new UserError(`${path}: qcow2 feature not supported: external data file`, 'EQCOW2');
      case EXT_CRYPTO: throw new UserError(`${path}: qcow2 feature not supported: encryption`, 'EQCOW2');
      case EXT_BACKING_FORMAT: h.backingFormat = data.toString('utf8'); break;
      default: break;
    }
    h.extensions.push({ type, data });
    at += 8 + Math.ceil(len / 8) * 8;
  }
}

/**
 * Serialize the header with its extensions (the backing file name after
 * them, as QEMU lays it out) into one cluster. Throws if it does not fit.
 */
export function encodeHeader(h: Qcow2Header, path: string): Buffer {
  const cs = 2 ** h.clusterBits;
  const out = Buffer.alloc(cs);
  out.writeUInt32BE(QCOW2_MAGIC, 0);
  out.writeUInt32BE(h.version, 4);
  out.writeUInt32BE(h.clusterBits, 20);
  out.writeBigUInt64BE(BigInt(h.size), 24);
  out.writeUInt32BE(h.cryptMethod, 32);
  out.writeUInt32BE(h.l1Size, 36);
  out.writeBigUInt64BE(BigInt(h.l1TableOffset), 40);
  out.writeBigUInt64BE(BigInt(h.refcountTableOffset), 48);
  out.writeUInt32BE(h.refcountTableClusters, 56);
  out.writeUInt32BE(h.nbSnapshots, 60);
  out.writeBigUInt64BE(BigInt(h.snapshotsOffset), 64);
  let at = V2_HEADER_BYTES;
  if (h.version === 3) {
    out.writeBigUInt64BE(h.incompatible, 72);
    out.writeBigUInt64BE(h.compatible, 80);
    out.writeBigUInt64BE(h.autoclear, 88);
    out.writeUInt32BE(h.refcountOrder, 96);
    h.headerLength = Math.max(h.headerLength, V3_HEADER_BYTES);
    out.writeUInt32BE(h.headerLength, 100);
    if (h.headerLength > 104) out.writeUInt8(h.compressionType, 104);
    at = h.headerLength;
  }
  const exts = h.extensions.filter((e) => e.type !== EXT_BACKING_FORMAT);
  if (h.backingFormat !== undefined) exts.unshift({ type: EXT_BACKING_FORMAT, data: Buffer.from(h.backingFormat) });
  for (const e of exts) {
    const padded = Math.ceil(e.data.length / 8) * 8;
    if (at + 8 + padded + 8 > cs) throw badImage(path, 'header extensions do not fit in the header cluster');
    out.writeUInt32BE(e.type, at);
    out.writeUInt32BE(e.data.length, at + 4);
    e.data.copy(out, at + 8);
    at += 8 + padded;
  }
  at += 8; // end marker (zeros)
  if (h.backingFile !== undefined) {
    const name = Buffer.from(h.backingFile);
    if (at + name.length > cs) throw badImage(path, 'backing file name does not fit in the header cluster');
    name.copy(out, at);
    h.backingFileOffset = at;
    h.backingFileSize = name.length;
  } else {
    h.backingFileOffset = 0;
    h.backingFileSize = 0;
  }
  out.writeBigUInt64BE(BigInt(h.backingFileOffset), 8);
  out.writeUInt32BE(h.backingFileSize, 16);
  return out;
}
