/**
 * What `-s N,virtio-blk,...` parsing and snapshots need of virtio-blk,
 * without its model (devices/all.ts registers it lazily from this).
 */
import { parsePciLegacyConfig } from '../../config/options.js';
import { UserError } from '../../errors.js';
import type { ConfigTreeWriter, PciDeviceInfo } from '../../pci/device.js';

/**
 * bhyve's blockif_legacy_config(): `PATH[,ro][,sectorsize=L/P][,nocache][,direct][,nodelete][,ser=ID]`.
 * The first field is always the path; the rest are `key=value` or bare flags (`key=true`).
 */
export function virtioBlkLegacyConfig(writer: ConfigTreeWriter, opts: string): void {
  const comma = opts.indexOf(',');
  const path = comma < 0 ? opts : opts.slice(0, comma);
  if (path === '') throw new UserError('virtio-blk: empty backing file path');
  writer.set('path', path);
  if (comma >= 0) parsePciLegacyConfig(writer, opts.slice(comma + 1));
}

export const virtioBlkInfo: PciDeviceInfo = {
  name: 'virtio-blk', legacyConfig: virtioBlkLegacyConfig, hostPathKeys: ['path'],
  // on its I/O thread, the disk is read and written by the thread's instance, which opens it after the gate
  waitsForStorageGate: (node) => node.getBool('worker', true),
  diskImage: (node) => { const path = node.get('path'); return path ? { path, format: node.get('format') } : undefined; },
};
