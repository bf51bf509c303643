/**
 * The x86 guest-physical memory map: where the loader puts boot structures
 * and where RAM, the MMIO hole and the interrupt controllers live.
 *
 *   0x00000000  real-mode IVT + BIOS data area (left zero)
 *   0x00000500  GDT (boot segments), then an empty IDT
 *   0x00007000  zero page (struct boot_params)
 *   0x00008000  boot stack (grows down from 0x8ff0)
 *   0x00009000  PML4, PDPT, 4 PDs: identity map of 0..4 GiB with 2 MiB pages
 *   0x00020000  kernel command line (at most 64 KiB)
 *   0x0009fc00  EBDA; 0xa0000-0xfffff is reserved in the e820 map
 *   0x000e0000  ACPI tables (RSDP first, where the legacy scan finds it)
 *   0x00100000  high memory: kernel, initrd ... up to the low-RAM end
 *   0xc0000000  32-bit PCI MMIO window (RAM below 4 GiB never exceeds this)
 *   0xfec00000  IOAPIC
 *   0xfee00000  local APIC
 *   0xff000000  firmware window (-l bootrom): the flash images end at 4 GiB
 *   0x100000000 RAM that did not fit below 3 GiB
 */
import { UserError } from '../errors.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const PAGE_SIZE = 0x1000;

/** End of conventional memory usable as RAM; the EBDA sits above it. */
export const LOW_RAM_END = 0x9fc00;
export const EBDA_START = 0x9fc00;
/** Start of "high" memory (the 1 MiB line). */
export const HIGH_MEMORY_START = 0x100000;

export const GDT_ADDR = 0x500;
/** null, null, 0x10 code, 0x18 data, 0x20 TSS (16 bytes in long mode). */
export const GDT_SIZE = 6 * 8;
export const IDT_ADDR = 0x560;
export const IDT_SIZE = 8;

export const ZERO_PAGE_ADDR = 0x7000;
export const BOOT_STACK_TOP = 0x8ff0;

export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
/** Four page directories, one per GiB of the identity map. */
export const PD_ADDR = 0xb000;
export const IDENTITY_MAP_BYTES = 4 * GiB;

export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX = 64 * KiB;

/** ACPI tables: 64 KiB inside the BIOS area searched for the RSDP. */
export const ACPI_TABLES_ADDR = 0xe0000;
export const ACPI_TABLES_SIZE = 0x10000;

/** RAM below 4 GiB ends here at most; above it is the MMIO hole. */
export const LOW_RAM_MAX = 0xc0000000;
export const HIGH_RAM_START = 4 * GiB;

export const PCI_MMIO32_BASE = 0xc0000000;
export const PCI_MMIO32_END = 0xfec00000; // exclusive: window is 0xc0000000-0xfebfffff
/** PCI I/O BARs: above the ISA, PM and config ports, inside the DSDT's 0x0d00-0xffff window. */
export const PCI_PIO_BASE = 0x6000;
export const PCI_PIO_END = 0x10000;
export const IOAPIC_ADDR = 0xfec00000;
export const IOAPIC_SIZE = 0x1000;
export const LAPIC_ADDR = 0xfee00000;
export const LAPIC_SIZE = 0x1000;

/**
 * The firmware window (bhyve's bootrom window): the flash images end at
 * 4 GiB, the code image on top, the variable store below it.
 */
export const FIRMWARE_WINDOW_SIZE = 16 * MiB;
export const FIRMWARE_WINDOW_END = 4 * GiB;
export const FIRMWARE_WINDOW_BASE = FIRMWARE_WINDOW_END - FIRMWARE_WINDOW_SIZE;

/** Smallest guest we lay out: the boot structures plus some high memory. */
export const MIN_MEM_BYTES = 2 * MiB;

export interface RamRegion { gpa: number; size: number }

export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_ACPI = 3;

export interface E820Entry { addr: number; size: number; type: number }

function checkMem(memBytes: number): void {
  if (!Number.isSafeInteger(memBytes) || memBytes < MIN_MEM_BYTES || memBytes % PAGE_SIZE !== 0) {
    throw new UserError(`guest memory size ${memBytes} must be a multiple of 4 KiB and at least 2 MiB`);
  }
}

/** End (exclusive) of the RAM that lies below 4 GiB. */
export function lowRamEnd(memBytes: number): number {
  checkMem(memBytes);
  return Math.min(memBytes, LOW_RAM_MAX);
}

/** The RAM regions to back with memory: [0, low end) and maybe [4 GiB, ...). */
export function guestRamLayout(memBytes: number): RamRegion[] {
  const low = lowRamEnd(memBytes);
  const regions: RamRegion[] = [{ gpa: 0, size: low }];
  if (memBytes > low) regions.push({ gpa: HIGH_RAM_START, size: memBytes - low });
  return regions;
}

/**
 * The BIOS memory map handed to the kernel. The PCI window is left out on
 * purpose: Linux may clip host-bridge windows against e820 reservations.
 */
export function e820Map(memBytes: number): E820Entry[] {
  const low = lowRamEnd(memBytes);
  const map: E820Entry[] = [
    { addr: 0, size: LOW_RAM_END, type: E820_RAM },
    { addr: EBDA_START, size: HIGH_MEMORY_START - EBDA_START, type: E820_RESERVED },
    { addr: HIGH_MEMORY_START, size: low - HIGH_MEMORY_START, type: E820_RAM },
    { addr: IOAPIC_ADDR, size: IOAPIC_SIZE, type: E820_RESERVED },
    { addr: LAPIC_ADDR, size: LAPIC_SIZE, type: E820_RESERVED },
  ];
  if (memBytes > low) map.push({ addr: HIGH_RAM_START, size: memBytes - low, type: E820_RAM });
  return map;
}
