/**
 * The ACPI description of the VM's platform, shared by direct kernel boot
 * (tables in guest memory) and firmware boot (tables through fw_cfg).
 */
import type { AcpiOptions, PmPorts } from '../x86/acpi/index.js';
import { IOAPIC_ADDR, LAPIC_ADDR } from '../x86/layout.js';
import { intxGsi } from './device.js';

export function platformAcpiOptions(cpus: number, pm?: PmPorts): AcpiOptions {
  return {
    cpus, ioapicAddr: IOAPIC_ADDR, lapicAddr: LAPIC_ADDR, pm,
    // INTx routing for drivers that do not use MSI-X
    dsdt: { pci: { prt: Array.from({ length: 32 }, (_, slot) => ({ slot, pin: 0, gsi: intxGsi(slot) })) } },
  };
}
