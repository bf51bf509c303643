/**
 * The ACPI description of the VM's platform, shared by direct kernel boot
 * (tables in guest memory) and firmware boot (tables through fw_cfg).
 */
import { pmPortsFor, type AcpiOptions } from '../x86/acpi/index.js';
import { IOAPIC_ADDR, LAPIC_ADDR } from '../x86/layout.js';
import { intxGsi } from './device.js';

/** `firmware`: the tables are the firmware's (`-l bootrom`), whose PM blocks are where it places them (pmPortsFor). */
export function platformAcpiOptions(cpus: number, firmware: boolean): AcpiOptions {
  return {
    cpus, ioapicAddr: IOAPIC_ADDR, lapicAddr: LAPIC_ADDR, pm: pmPortsFor(firmware),
    // INTx routing for drivers that do not use MSI-X
    dsdt: { pci: { prt: Array.from({ length: 32 }, (_, slot) => ({ slot, pin: 0, gsi: intxGsi(slot) })) } },
  };
}
