/**
 * The host bridge and the LPC (PCI-ISA) bridge: identity-only functions, as
 * in bhyve's pci_hostbridge.c and pci_lpc.c. The LPC bridge's ISA devices
 * (com1-4, RTC) are attached by the VM builder from lpc.* config.
 */
import { PciConfig } from './config-space.js';
import { registerPciDevice, type DeviceContext, type PciFunction } from './device.js';
import type { ConfigNode } from '../config/tree.js';
import { UserError } from '../errors.js';

function identityOnly(cfg: PciConfig): PciFunction {
  return { config: cfg };
}

/** Intel 82441FX (i440FX): the host bridge OVMF's PlatformPei knows (it stops on an unknown one). */
export const I440FX = { vendor: 0x8086, device: 0x1237 } as const;

/** bhyve's `vendor=`/`devid=` (pci_hostbridge.c): a number, decimal or 0x hex, 16 bits. */
function idOption(node: ConfigNode, key: string, dflt: number): number {
  const v = node.get(key);
  if (v === undefined) return dflt;
  const n = /^(0x[0-9a-f]{1,4}|[0-9]{1,5})$/i.test(v) ? Number(v) : NaN;
  if (!(n <= 0xffff)) throw new UserError(`${node.path}.${key}: '${v}' is not a 16-bit PCI id`);
  return n;
}

/** A host bridge: its identity from vendor=/devid=, else the default (i440FX's when booting firmware). */
function hostBridge(ctx: DeviceContext, node: ConfigNode, dflt: { vendor: number; device: number }): PciFunction {
  const id = ctx.firmware ? I440FX : dflt;
  return identityOnly(new PciConfig({
    vendor: idOption(node, 'vendor', id.vendor), device: idOption(node, 'devid', id.device), classCode: 0x06, subclass: 0x00,
  }));
}

registerPciDevice({
  name: 'hostbridge',
  create: (ctx, node) => hostBridge(ctx, node, { vendor: 0x1275, device: 0x1275 }),
});

registerPciDevice({
  name: 'amd_hostbridge',
  create: (ctx, node) => hostBridge(ctx, node, { vendor: 0x1022, device: 0x7432 }),
});

registerPciDevice({
  name: 'lpc',
  create: () => identityOnly(new PciConfig({ vendor: 0x8086, device: 0x7000, classCode: 0x06, subclass: 0x01 })),
});
