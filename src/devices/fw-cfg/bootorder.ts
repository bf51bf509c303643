/**
 * fw_cfg's "bootorder" file from bhyve's `bootindex=N` device option
 * (pci.B.S.F.bootindex): the boot devices' OpenFirmware paths, lowest index
 * first, as QEMU writes them (softmmu/bootdevice.c get_boot_devices_list:
 * one per line, the last one NUL-terminated). OVMF's QemuBootOrderLib
 * translates each to a UEFI device path prefix and boots the matching boot
 * options in that order.
 *
 * A path is QEMU's qdev_get_fw_dev_path() of the same device on an i440FX:
 * the root `/pci@i0cf8`, the function's node (pcibus_get_fw_dev_path: its
 * class's firmware name or `pciVVVV,DDDD`, `@slot[,func]` in hex), then the
 * suffix QEMU's device model registers with its bootindex property.
 */
import type { ConfigNode, ConfigTree } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import type { PciConfigSpace } from '../../pci/device.js';

export const BOOTORDER_FILE = 'bootorder';

/** The devices that take bootindex, and the suffix QEMU's model of each gives its path. */
const BOOT_SUFFIX: Readonly<Record<string, string>> = {
  'virtio-blk': '/disk@0,0', // virtio_blk_instance_init
  nvme: '/namespace@1,0', // nvme_instance_init
  'virtio-net': '/ethernet-phy@0', // virtio_net_instance_init
};

/** QEMU's pci_class_descriptions firmware names (hw/pci/pci.c), the storage and network classes, by class << 8 | subclass. */
const CLASS_FW_NAME: ReadonlyMap<number, string> = new Map([
  [0x0100, 'scsi'], [0x0101, 'ide'], [0x0102, 'fdc'], [0x0103, 'ipi'], [0x0104, 'raid'],
  [0x0200, 'ethernet'], [0x0201, 'token-ring'], [0x0202, 'fddi'], [0x0203, 'atm'],
]);

/** bootindex is QEMU's int32 property; -1 (unset) is not taken here: leave the key out. */
const MAX_BOOTINDEX = 0x7fffffff;

/** QEMU's pcibus_get_fw_dev_path for a function on the i440FX's root bus. */
export function pciFwDevPath(slot: number, func: number, config: PciConfigSpace): string {
  const cls = config.read(0x0a, 2);
  const name = CLASS_FW_NAME.get(cls)
    ?? `pci${config.read(0x00, 2).toString(16).padStart(4, '0')},${config.read(0x02, 2).toString(16).padStart(4, '0')}`;
  return `/pci@i0cf8/${name}@${slot.toString(16)}${func ? `,${func.toString(16)}` : ''}`;
}

/** The file's bytes: the paths one per line, NUL-terminated (QEMU's size counts the NUL). */
export function bootOrderFile(paths: readonly string[]): Uint8Array {
  return Buffer.from(`${paths.join('\n')}\0`, 'latin1');
}

/**
 * The boot devices' paths in bootindex order; empty when no device has a
 * bootindex. `pciConfig` finds a configured function's config space. Throws
 * UserError (one line naming the key) on a value that is not an index, an
 * index given twice, or a device that cannot boot.
 */
export function bootOrderPaths(config: ConfigTree, pciConfig: (bus: number, slot: number, func: number) => PciConfigSpace | undefined): string[] {
  const boot: { index: number; key: string; path: string }[] = [];
  for (const [bus, bnode] of config.node('pci')?.children ?? []) {
    for (const [slot, snode] of bnode.children) {
      for (const [func, fnode] of snode.children) {
        const entry = bootEntry(fnode, Number(bus), Number(slot), Number(func), pciConfig);
        if (!entry) continue;
        const dup = boot.find((b) => b.index === entry.index);
        if (dup) throw new UserError(`${entry.key}: bootindex ${entry.index} is already ${dup.key}'s`);
        boot.push(entry);
      }
    }
  }
  return boot.sort((a, b) => a.index - b.index).map((b) => b.path);
}

function bootEntry(node: ConfigNode, bus: number, slot: number, func: number,
  pciConfig: (bus: number, slot: number, func: number) => PciConfigSpace | undefined): { index: number; key: string; path: string } | undefined {
  const v = node.get('bootindex');
  if (v === undefined) return undefined;
  const key = `${node.path}.bootindex`;
  const index = /^[0-9]{1,10}$/.test(v) ? Number(v) : NaN;
  if (!(index <= MAX_BOOTINDEX)) throw new UserError(`${key}: '${v}' is not a boot index (0 to ${MAX_BOOTINDEX})`);
  const device = node.get('device') ?? '';
  const suffix = BOOT_SUFFIX[device];
  if (suffix === undefined) throw new UserError(`${key}: ${device || 'no device'} cannot boot (bootindex is taken by ${Object.keys(BOOT_SUFFIX).join(', ')})`);
  if (bus !== 0) throw new UserError(`${key}: the firmware boots devices on PCI bus 0 only`);
  const cs = pciConfig(bus, slot, func);
  if (!cs) throw new Error(`${node.path}: no PCI function built there`);
  return { index, key, path: pciFwDevPath(slot, func, cs) + suffix };
}
