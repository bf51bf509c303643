/**
 * The host bridge and the LPC (PCI-ISA) bridge: identity-only functions, as
 * in bhyve's pci_hostbridge.c and pci_lpc.c. The LPC bridge's ISA devices
 * (com1-4, RTC) are attached by the VM builder from lpc.* config.
 */
import { PciConfig } from './config-space.js';
import { registerPciDevice, type PciFunction } from './device.js';

function identityOnly(cfg: PciConfig): PciFunction {
  return { config: cfg };
}

registerPciDevice({
  name: 'hostbridge',
  create: () => identityOnly(new PciConfig({ vendor: 0x1275, device: 0x1275, classCode: 0x06, subclass: 0x00 })),
});

registerPciDevice({
  name: 'amd_hostbridge',
  create: () => identityOnly(new PciConfig({ vendor: 0x1022, device: 0x7432, classCode: 0x06, subclass: 0x00 })),
});

registerPciDevice({
  name: 'lpc',
  create: () => identityOnly(new PciConfig({ vendor: 0x8086, device: 0x7000, classCode: 0x06, subclass: 0x01 })),
});
