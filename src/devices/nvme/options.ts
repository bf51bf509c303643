/**
 * bhyve's nvme options (pci_nvme.c, bhyve_config(5)): `-s N,nvme,PATH[,opts]`
 * or `-s N,nvme,ram=MiB[,opts]`, the keys pci.B.S.F.{path, ram, ro, maxq, qsz,
 * ioslots, sectsz, ser, eui64, dsm} (plus blockif's nocache, direct/sync, and
 * virtio-blk's format=raw|qcow2, tshyve's: probed from the header when absent), with
 * bhyve's defaults: 16 queue pairs of 2048 entries, 8 I/O slots, 512-byte
 * sectors, serial NVME-SLOT-FUNC, an EUI-64 derived from the VM's name and
 * the device's address, deallocate when the storage can.
 */
import { createHash } from 'node:crypto';
import type { ConfigNode } from '../../config/tree.js';
import { parsePciLegacyConfig } from '../../config/options.js';
import { UserError } from '../../errors.js';
import { parseImageFormat, type ImageFormat } from '../block/format.js';
import type { ConfigTreeWriter, PciDeviceInfo } from '../../pci/device.js';

export interface NvmeOptions {
  /** the disk: a file or block device, or RAM of this many MiB */
  path?: string;
  /** the file's image format; undefined: probed from its header */
  format?: ImageFormat;
  ramMiB?: number;
  readonly: boolean;
  nocache: boolean;
  direct: boolean;
  /** I/O queue pairs */
  maxq: number;
  /** entries per queue at most */
  qsz: number;
  /** commands in flight per controller (bhyve's; accepted and bounded, commands here run one at a time per thread) */
  ioslots: number;
  sectorSize: 512 | 4096;
  serial: string;
  eui64: bigint;
  dsm: 'auto' | 'enable' | 'disable';
}

export const MAX_QUEUE_PAIRS = 64;
const MAX_ENTRIES = 4096;

function intOpt(node: ConfigNode, where: (k: string) => string, key: string, dflt: number, min: number, max: number): number {
  const v = node.get(key);
  if (v === undefined) return dflt;
  const n = /^[0-9]{1,9}$/.test(v.trim()) ? Number(v) : NaN;
  if (!(n >= min && n <= max)) throw new UserError(`${where(key)}: '${v}' is not a number from ${min} to ${max}`);
  return n;
}

/** Options from the device's node; UserError (one line naming the key) on a bad value. Opens nothing. */
export function parseNvmeOptions(node: ConfigNode, bdf: { bus: number; slot: number; func: number }, vmName: string): NvmeOptions {
  const where = (k: string): string => (node.path ? `${node.path}.${k}` : k);
  const path = node.get('path');
  const ram = node.get('ram');
  if ((path === undefined || path === '') === (ram === undefined)) {
    throw new UserError(`nvme: give a backing file (${where('path')}) or a RAM size in MiB (${where('ram')}), not both`);
  }
  const sectsz = intOpt(node, where, 'sectsz', 512, 0, 999_999_999);
  if (sectsz !== 512 && sectsz !== 4096) throw new UserError(`${where('sectsz')}: '${sectsz}' is not 512 or 4096`);
  const dsm = node.get('dsm') ?? 'auto';
  if (dsm !== 'auto' && dsm !== 'enable' && dsm !== 'disable') throw new UserError(`${where('dsm')}: '${dsm}' is not auto, enable or disable`);
  const serial = node.get('ser') ?? `NVME-${bdf.slot}-${bdf.func}`;
  if (!/^[\x20-\x7e]{1,20}$/.test(serial)) throw new UserError(`${where('ser')}: '${serial}' is not 1-20 printable ASCII characters`);
  const eui = node.get('eui64');
  let eui64: bigint;
  if (eui !== undefined) {
    if (!/^(0x[0-9a-fA-F]{1,16}|[0-9]{1,20})$/.test(eui.trim()) || BigInt(eui.trim()) >= 1n << 64n) {
      throw new UserError(`${where('eui64')}: '${eui}' is not a 64-bit number`);
    }
    eui64 = BigInt(eui.trim());
  } else {
    // bhyve's: the FreeBSD OUI, 16 bits from the VM's name and the PCI address, the NSID
    const h = createHash('sha256').update(`${vmName}${bdf.bus}${bdf.slot}${bdf.func}`).digest().readUInt16BE(0);
    eui64 = ((0x589cfcn << 24n | BigInt(h)) << 16n) | 1n;
  }
  const opts: NvmeOptions = {
    readonly: node.getBool('ro', false),
    nocache: node.getBool('nocache', false),
    direct: node.getBool('direct', false) || node.getBool('sync', false),
    maxq: intOpt(node, where, 'maxq', 16, 1, MAX_QUEUE_PAIRS),
    qsz: intOpt(node, where, 'qsz', 2048, 2, MAX_ENTRIES),
    ioslots: intOpt(node, where, 'ioslots', 8, 1, 128),
    sectorSize: sectsz,
    serial,
    eui64,
    dsm,
  };
  const format = parseImageFormat(node.get('format'), where('format'));
  if (ram !== undefined) {
    if (format !== undefined) throw new UserError(`${where('format')}: a ram= disk has no image format`);
    opts.ramMiB = intOpt(node, where, 'ram', 0, 1, 16384);
  } else {
    opts.path = path;
    if (format !== undefined) opts.format = format;
  }
  return opts;
}

/** bhyve's pci_nvme_legacy_config: `ram=MiB[,opts]`, else blockif's `PATH[,opts]`. */
export function nvmeLegacyConfig(writer: ConfigTreeWriter, opts: string): void {
  const comma = opts.indexOf(',');
  const first = comma < 0 ? opts : opts.slice(0, comma);
  if (first.startsWith('ram=')) writer.set('ram', first.slice(4));
  else if (first !== '') writer.set('path', first);
  else throw new UserError('empty backing file path');
  if (comma >= 0) parsePciLegacyConfig(writer, opts.slice(comma + 1));
}

/** What `-s N,nvme,...` parsing and snapshots need, without the model (devices/all.ts registers it lazily from this). */
export const nvmeInfo: PciDeviceInfo = {
  name: 'nvme',
  legacyConfig: nvmeLegacyConfig,
  hostPathKeys: ['path'],
  hostOnlyKeys: ['nocache', 'direct', 'sync', 'ioslots'],
  diskImage: (node) => { const path = node.get('path'); return path ? { path, format: node.get('format') } : undefined; },
};
