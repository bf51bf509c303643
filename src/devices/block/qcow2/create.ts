/**
 * New qcow2 images, laid out as qemu-img lays them out: the header in
 * cluster 0, then the refcount table, the refcount blocks that count the
 * metadata, and the (empty) L1 table; nothing else is allocated.
 */
import * as fs from 'node:fs';
import { UserError } from '../../../errors.js';
import {
  COMPAT_LAZY_REFCOUNTS, MAX_CLUSTER_BITS, MAX_L1_BYTES, MIN_CLUSTER_BITS, encodeHeader, type Qcow2Header,
} from './header.js';

export interface Qcow2CreateOptions {
  size: number;
  /** bytes, a power of two from 512 to 2 MiB; default 64 KiB */
  clusterSize?: number;
  /** '0.10' (version 2) or '1.1' (version 3, the default) */
  compat?: '0.10' | '1.1';
  /** 1 to 64, a power of two; default 16 (version 2: 16 only) */
  refcountBits?: number;
  lazyRefcounts?: boolean;
  /** the backing file's name as it is to be stored (relative names stay relative) */
  backingFile?: string;
  backingFormat?: string;
  /** fail (EEXIST) rather than replace a file at `path`, and make it mode 0600 */
  exclusive?: boolean;
}

/** Write a new empty qcow2 image at `path` (replacing a file there, unless `exclusive`). */
export function createQcow2(path: string, o: Qcow2CreateOptions): void {
  const cs = o.clusterSize ?? 65536;
  const bits = Math.log2(cs);
  if (!Number.isInteger(bits) || bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
    throw new UserError(`cluster size ${cs} is not a power of two from 512 to 2M`);
  }
  const version = (o.compat ?? '1.1') === '0.10' ? 2 : 3;
  const rbits = o.refcountBits ?? 16;
  const order = Math.log2(rbits);
  if (!Number.isInteger(order) || order < 0 || order > 6) throw new UserError(`refcount bits ${rbits} is not a power of two from 1 to 64`);
  if (version === 2 && rbits !== 16) throw new UserError('compat=0.10 images have 16-bit refcounts only');
  if (version === 2 && o.lazyRefcounts) throw new UserError('lazy refcounts need compat=1.1');
  if (!Number.isSafeInteger(o.size) || o.size < 0) throw new UserError(`image size ${o.size} is invalid`);
  const l1Size = Math.ceil(o.size / (cs * (cs / 8)));
  if (l1Size * 8 > MAX_L1_BYTES) throw new UserError(`image size ${o.size} is too large for ${cs}-byte clusters (try a larger cluster size)`);
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const perBlock = (cs * 8) / rbits;
  // a fixpoint: the refcount blocks and table count themselves
  let blocks = 1, tableClusters = 1;
  for (;;) {
    const total = 1 + tableClusters + blocks + l1Clusters;
    const b = Math.ceil(total / perBlock), t = Math.ceil((b * 8) / cs);
    if (b === blocks && t === tableClusters) break;
    blocks = b; tableClusters = t;
  }
  const total = 1 + tableClusters + blocks + l1Clusters;
  const h: Qcow2Header = {
    version, backingFileOffset: 0, backingFileSize: 0, clusterBits: bits, size: o.size, cryptMethod: 0,
    l1Size, l1TableOffset: l1Size > 0 ? (1 + tableClusters + blocks) * cs : 0,
    refcountTableOffset: cs, refcountTableClusters: tableClusters, nbSnapshots: 0, snapshotsOffset: 0,
    incompatible: 0n, compatible: o.lazyRefcounts ? BigInt(COMPAT_LAZY_REFCOUNTS) : 0n, autoclear: 0n,
    refcountOrder: order, headerLength: version === 3 ? 112 : 72, compressionType: 0, extensions: [],
    backingFile: o.backingFile, backingFormat: o.backingFile !== undefined ? o.backingFormat : undefined,
  };
  const img = Buffer.alloc((l1Size > 0 ? total : total - l1Clusters) * cs);
  encodeHeader(h, path).copy(img, 0);
  for (let i = 0; i < blocks; i++) img.writeBigUInt64BE(BigInt((1 + tableClusters + i) * cs), cs + 8 * i);
  // refcount 1 for every metadata cluster
  for (let c = 0; c < img.length / cs; c++) {
    const block = (1 + tableClusters + Math.floor(c / perBlock)) * cs;
    const i = c % perBlock;
    if (rbits >= 8) img.writeUIntBE(1, block + (i * rbits) / 8 + rbits / 8 - Math.min(rbits / 8, 6), Math.min(rbits / 8, 6));
    else {
      const at = block + Math.floor((i * rbits) / 8);
      img[at] = img[at]! | (1 << ((i * rbits) % 8));
    }
  }
  fs.writeFileSync(path, img, o.exclusive ? { flag: 'wx', mode: 0o600 } : undefined);
}
