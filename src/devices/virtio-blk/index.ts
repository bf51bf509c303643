/**
 * virtio-blk: the device model (its storage is a devices/block backend), and bhyve's
 * configuration keys (pci.B.S.F.{path,ro,sectorsize,nocache,direct,sync,nodelete,ser}, and
 * queuesize (not bhyve's: QEMU's queue-size) and format (raw or qcow2; probed when absent)).
 * Wiring to a virtio-pci transport and the PCI registry happens elsewhere.
 */
import type { ConfigNode } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import { parseImageFormat } from '../block/index.js';
import { isValidQueueSize, VIRTIO_BLK_MAX_QUEUE_SIZE, type VirtioBlkOptions } from './device.js';

export * from './device.js';
export { virtioBlkLegacyConfig } from './info.js';

/** Parse bhyve's `sectorsize=L[/P]` value. */
export function parseSectorSize(v: string, what = 'sectorsize'): { logical: number; physical: number } {
  const m = /^([0-9]{1,6})(?:\/([0-9]{1,7}))?$/.exec(v.trim());
  if (!m) throw new UserError(`${what}: '${v}' is not LOGICAL or LOGICAL/PHYSICAL`);
  const logical = Number(m[1]);
  const physical = m[2] === undefined ? logical : Number(m[2]);
  const pow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
  if (!pow2(logical) || logical < 512 || logical > 65536) {
    throw new UserError(`${what}: logical sector size ${logical} is not a power of two between 512 and 65536`);
  }
  if (!pow2(physical) || physical < logical || physical > 65536) {
    throw new UserError(`${what}: physical sector size ${physical} is not a power of two between ${logical} and 65536`);
  }
  return { logical, physical };
}

/**
 * Options for VirtioBlk from a device's config node. Throws UserError (one
 * line naming the key) on bad values. Does not open the file.
 */
export function parseVirtioBlkOptions(node: ConfigNode): VirtioBlkOptions {
  const where = (k: string): string => (node.path ? `${node.path}.${k}` : k);
  const path = node.get('path');
  if (path === undefined || path === '') throw new UserError(`virtio-blk: no backing file (set ${where('path')})`);
  const opts: VirtioBlkOptions = { path };
  if (node.getBool('ro', false)) opts.readonly = true;
  if (node.getBool('nodelete', false)) opts.nodelete = true;
  if (node.getBool('nocache', false)) opts.nocache = true;
  if (node.getBool('direct', false) || node.getBool('sync', false)) opts.direct = true;
  const ss = node.get('sectorsize');
  if (ss !== undefined) {
    const { logical, physical } = parseSectorSize(ss, where('sectorsize'));
    opts.sectorSize = logical;
    opts.physicalSectorSize = physical;
  }
  const qs = node.get('queuesize');
  if (qs !== undefined) {
    const n = /^[0-9]{1,5}$/.test(qs.trim()) ? Number(qs) : NaN;
    if (!isValidQueueSize(n)) throw new UserError(`${where('queuesize')}: '${qs}' is not a power of two between 4 and ${VIRTIO_BLK_MAX_QUEUE_SIZE}`);
    opts.queueSize = n;
  }
  const format = parseImageFormat(node.get('format'), where('format'));
  if (format !== undefined) opts.format = format;
  const ser = node.get('ser');
  if (ser !== undefined) {
    if (Buffer.byteLength(ser, 'utf8') > 20) throw new UserError(`${where('ser')}: serial '${ser}' is longer than 20 bytes`);
    opts.serial = ser;
  }
  return opts;
}
