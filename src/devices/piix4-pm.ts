/**
 * The PIIX4 power-management function (00:01.3, 8086:7113) that OVMF
 * programs on an i440FX machine (OvmfPkg PlatformInitLib, Platform.c:
 * PlatformMiscInitialization): PMBA at 0x40 (I/O base, bits 15:6), PMREGMISC
 * at 0x80 (bit 0, PMIOSE, turns the block on). The ACPI PM device's PM1 and
 * timer blocks follow them, as QEMU's piix4_pm does. Function 0 of slot 1
 * is absent, so an OS scanning the bus does not see it.
 */
import type { Bus } from '../bus/bus.js';
import { PciConfig } from '../pci/config-space.js';
import type { PciFunction } from '../pci/device.js';
import { pmPortsAt } from '../x86/acpi/pm-ports.js';
import { mapPmBlocks, type AcpiPm } from './acpi-pm.js';

export const PIIX4_PM_BDF = { bus: 0, slot: 1, func: 3 } as const;
export const PMBA = 0x40;
export const PMREGMISC = 0x80;
export const PMIOSE = 0x01;
const PMBA_MASK = 0xffc0;

export function piix4PmFunction(pio: Bus, pm: AcpiPm): PciFunction {
  const config = new PciConfig({ vendor: 0x8086, device: 0x7113, classCode: 0x06, subclass: 0x80, revision: 0x03 });
  config.bytes[PMBA] = 0x01; // RTE: an I/O space address, read-only
  let mapped: number | undefined;
  const update = (): void => {
    const base = config.bytes[PMREGMISC]! & PMIOSE ? config.read(PMBA, 2) & PMBA_MASK : undefined;
    if (base === mapped) return;
    // A base on top of another device's ports decodes nothing (the other device keeps them).
    mapped = mapPmBlocks(pio, pm, base === undefined ? undefined : pmPortsAt(base)) ? base : undefined;
  };
  config.addRegister(PMBA, Uint8Array.from([PMBA_MASK & 0xff, PMBA_MASK >> 8, 0, 0]), update);
  config.addRegister(PMREGMISC, Uint8Array.of(PMIOSE), update);
  return { config, restoreState: () => update() };
}
