/**
 * ACPI tables for a PC-compatible (not hardware-reduced) guest: RSDP v2,
 * XSDT + RSDT, FADT rev 6, FACS, DSDT and MADT, written into the layout's
 * ACPI region where the legacy RSDP scan (0xE0000-0xFFFFF) finds them.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { ACPI_TABLES_ADDR, ACPI_TABLES_SIZE, IOAPIC_ADDR, LAPIC_ADDR } from '../layout.js';
import { buildDsdtAml, type DsdtOptions } from './dsdt.js';
import {
  DEFAULT_PM_PORTS, PM1_CNT_LEN, PM1_EVT_LEN, PM_TMR_LEN, PM_TIMER_32BIT, RESET_VALUE, SCI_IRQ, type PmPorts,
} from './pm-ports.js';

export interface AcpiOptions {
  cpus: number;
  ioapicId?: number;
  ioapicAddr?: number;
  lapicAddr?: number;
  pm?: PmPorts;
  /** 6 characters at most */
  oemId?: string;
  dsdt?: DsdtOptions;
}

export const SDT_HEADER_SIZE = 36;
export const RSDP_SIZE = 36;
export const FADT_SIZE = 276;
export const FACS_SIZE = 64;
/** APIC IDs 0..cpus-1 must stay below the broadcast ID 0xff. */
export const MAX_CPUS = 255;

/** FADT field offsets (ACPI 6.x table 5.9). */
export const FADT = {
  FIRMWARE_CTRL: 36, DSDT: 40, PREFERRED_PM_PROFILE: 45, SCI_INT: 46, SMI_CMD: 48,
  ACPI_ENABLE: 52, ACPI_DISABLE: 53, PM1A_EVT_BLK: 56, PM1A_CNT_BLK: 64, PM_TMR_BLK: 76,
  GPE0_BLK: 80, PM1_EVT_LEN: 88, PM1_CNT_LEN: 89, PM_TMR_LEN: 91, GPE0_BLK_LEN: 92,
  P_LVL2_LAT: 96, P_LVL3_LAT: 98, CENTURY: 108, IAPC_BOOT_ARCH: 109, FLAGS: 112,
  RESET_REG: 116, RESET_VALUE: 128, MINOR_VERSION: 131, X_FIRMWARE_CTRL: 132, X_DSDT: 140,
  X_PM1A_EVT_BLK: 148, X_PM1A_CNT_BLK: 172, X_PM_TMR_BLK: 208, HYPERVISOR_VENDOR: 268,
} as const;

export const FADT_F_WBINVD = 1 << 0;
export const FADT_F_PROC_C1 = 1 << 2;
export const FADT_F_SLP_BUTTON = 1 << 5; // no fixed sleep button (PWR_BUTTON clear: fixed power button)
export const FADT_F_FIX_RTC = 1 << 6;
export const FADT_F_TMR_VAL_EXT = 1 << 8;
export const FADT_F_RESET_REG_SUP = 1 << 10;

export const IAPC_LEGACY_DEVICES = 1 << 0;
export const IAPC_8042 = 1 << 1;
export const IAPC_VGA_NOT_PRESENT = 1 << 2;
export const IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5;

const GAS_SYSTEM_IO = 1;

export const MADT_PCAT_COMPAT = 1;
export const MADT_LAPIC = 0;
export const MADT_IOAPIC = 1;
export const MADT_ISO = 2;
export const MADT_LAPIC_NMI = 4;

class Table {
  readonly bytes: Uint8Array;
  readonly dv: DataView;
  constructor(len: number) {
    this.bytes = new Uint8Array(len);
    this.dv = new DataView(this.bytes.buffer);
  }
  ascii(off: number, s: string, len: number): void {
    const p = s.padEnd(len, ' ');
    for (let i = 0; i < len; i++) this.bytes[off + i] = p.charCodeAt(i) & 0x7f;
  }
  u8(off: number, v: number): void { this.dv.setUint8(off, v); }
  u16(off: number, v: number): void { this.dv.setUint16(off, v, true); }
  u32(off: number, v: number): void { this.dv.setUint32(off, v >>> 0, true); }
  u64(off: number, v: number): void { this.dv.setBigUint64(off, BigInt(v), true); }
  /** Generic Address Structure for an I/O port block. */
  gasIo(off: number, port: number, bits: number, accessSize = 0): void {
    this.u8(off, GAS_SYSTEM_IO);
    this.u8(off + 1, bits);
    this.u8(off + 2, 0);
    this.u8(off + 3, accessSize);
    this.u64(off + 4, port);
  }
}

/** Bytes summing to 0 mod 256 from `start` for `len` bytes once `at` is set. */
export function checksum(b: Uint8Array, at: number, start = 0, len = b.length): void {
  b[at] = 0;
  let sum = 0;
  for (let i = start; i < start + len; i++) sum += b[i]!;
  b[at] = (256 - (sum & 0xff)) & 0xff;
}

function sdt(sig: string, len: number, revision: number, oemId: string): Table {
  const t = new Table(len);
  t.ascii(0, sig, 4);
  t.u32(4, len);
  t.u8(8, revision);
  t.ascii(10, oemId, 6);
  t.ascii(16, `${oemId.slice(0, 4)}${sig}`, 8);
  t.u32(24, 1);
  t.ascii(28, 'TSHY', 4);
  t.u32(32, 1);
  return t;
}

function seal(t: Table): Uint8Array {
  checksum(t.bytes, 9);
  return t.bytes;
}

export function buildDsdt(oemId: string, opts?: DsdtOptions): Uint8Array {
  const aml = buildDsdtAml(opts);
  const t = sdt('DSDT', SDT_HEADER_SIZE + aml.length, 2, oemId);
  t.bytes.set(aml, SDT_HEADER_SIZE);
  return seal(t);
}

export function buildFacs(): Uint8Array {
  const t = new Table(FACS_SIZE);
  t.ascii(0, 'FACS', 4);
  t.u32(4, FACS_SIZE);
  t.u8(32, 2); // version
  return t.bytes;
}

export function buildFadt(oemId: string, pm: PmPorts, facs: number, dsdt: number): Uint8Array {
  const t = sdt('FACP', FADT_SIZE, 6, oemId);
  const timer32 = pm.timer32 ?? PM_TIMER_32BIT;
  t.u32(FADT.FIRMWARE_CTRL, facs); // X_FIRMWARE_CTRL stays 0: the spec allows only one of them
  t.u32(FADT.DSDT, dsdt);
  t.u16(FADT.SCI_INT, SCI_IRQ);
  t.u32(FADT.SMI_CMD, 0); // no SMI command port: ACPI mode is always on
  t.u32(FADT.PM1A_EVT_BLK, pm.pm1aEvt);
  t.u32(FADT.PM1A_CNT_BLK, pm.pm1aCnt);
  t.u32(FADT.PM_TMR_BLK, pm.pmTmr);
  t.u8(FADT.PM1_EVT_LEN, PM1_EVT_LEN);
  t.u8(FADT.PM1_CNT_LEN, PM1_CNT_LEN);
  t.u8(FADT.PM_TMR_LEN, PM_TMR_LEN);
  t.u16(FADT.P_LVL2_LAT, 101); // > 100: no C2
  t.u16(FADT.P_LVL3_LAT, 1001); // > 1000: no C3
  t.u16(FADT.IAPC_BOOT_ARCH, IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT); // 8042 absent, RTC present
  t.u32(FADT.FLAGS, FADT_F_WBINVD | FADT_F_PROC_C1 | FADT_F_SLP_BUTTON | FADT_F_FIX_RTC
    | FADT_F_RESET_REG_SUP | (timer32 ? FADT_F_TMR_VAL_EXT : 0));
  t.gasIo(FADT.RESET_REG, pm.reset, 8, 1);
  t.u8(FADT.RESET_VALUE, RESET_VALUE);
  t.u64(FADT.X_DSDT, dsdt);
  t.gasIo(FADT.X_PM1A_EVT_BLK, pm.pm1aEvt, PM1_EVT_LEN * 8);
  t.gasIo(FADT.X_PM1A_CNT_BLK, pm.pm1aCnt, PM1_CNT_LEN * 8);
  t.gasIo(FADT.X_PM_TMR_BLK, pm.pmTmr, PM_TMR_LEN * 8);
  t.ascii(FADT.HYPERVISOR_VENDOR, 'TSHYVE', 8);
  return seal(t);
}

export interface MadtOptions { cpus: number; ioapicId: number; ioapicAddr: number; lapicAddr: number }

export function buildMadt(oemId: string, o: MadtOptions): Uint8Array {
  if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > MAX_CPUS) throw new Error(`MADT: cpus must be 1..${MAX_CPUS}`);
  const len = 44 + 8 * o.cpus + 12 + 2 * 10 + 6;
  const t = sdt('APIC', len, 5, oemId);
  t.u32(36, o.lapicAddr);
  t.u32(40, MADT_PCAT_COMPAT);
  let p = 44;
  for (let i = 0; i < o.cpus; i++) {
    t.u8(p, MADT_LAPIC); t.u8(p + 1, 8); t.u8(p + 2, i); t.u8(p + 3, i); t.u32(p + 4, 1); // enabled
    p += 8;
  }
  t.u8(p, MADT_IOAPIC); t.u8(p + 1, 12); t.u8(p + 2, o.ioapicId); t.u32(p + 4, o.ioapicAddr); t.u32(p + 8, 0);
  p += 12;
  // ISA IRQ0 (PIT) is wired to IOAPIC pin 2; flags: active high (1) | edge (1 << 2).
  t.u8(p, MADT_ISO); t.u8(p + 1, 10); t.u8(p + 2, 0); t.u8(p + 3, 0); t.u32(p + 4, 2); t.u16(p + 8, 0x0005);
  p += 10;
  // SCI: level-triggered, active high (1 | 3 << 2).
  t.u8(p, MADT_ISO); t.u8(p + 1, 10); t.u8(p + 2, 0); t.u8(p + 3, SCI_IRQ); t.u32(p + 4, SCI_IRQ); t.u16(p + 8, 0x000d);
  p += 10;
  // NMI on LINT1 of every processor (UID 0xff).
  t.u8(p, MADT_LAPIC_NMI); t.u8(p + 1, 6); t.u8(p + 2, 0xff); t.u16(p + 3, 0); t.u8(p + 5, 1);
  return seal(t);
}

export function buildXsdt(oemId: string, entries: number[]): Uint8Array {
  const t = sdt('XSDT', SDT_HEADER_SIZE + 8 * entries.length, 1, oemId);
  entries.forEach((a, i) => t.u64(SDT_HEADER_SIZE + 8 * i, a));
  return seal(t);
}

export function buildRsdt(oemId: string, entries: number[]): Uint8Array {
  const t = sdt('RSDT', SDT_HEADER_SIZE + 4 * entries.length, 1, oemId);
  entries.forEach((a, i) => t.u32(SDT_HEADER_SIZE + 4 * i, a));
  return seal(t);
}

export function buildRsdp(oemId: string, rsdt: number, xsdt: number): Uint8Array {
  const t = new Table(RSDP_SIZE);
  t.ascii(0, 'RSD PTR ', 8);
  t.ascii(9, oemId, 6);
  t.u8(15, 2);
  t.u32(16, rsdt);
  t.u32(20, RSDP_SIZE);
  t.u64(24, xsdt);
  checksum(t.bytes, 8, 0, 20); // ACPI 1.0 part
  checksum(t.bytes, 32); // whole structure
  return t.bytes;
}

/** Bump allocator over the ACPI region. */
class Placer {
  private next: number;
  constructor(private readonly mem: GuestMemory, base: number, private readonly end: number) {
    this.next = base;
  }
  put(bytes: Uint8Array, align = 16): number {
    const at = Math.ceil(this.next / align) * align;
    if (at + bytes.length > this.end) throw new Error('ACPI tables do not fit in their region');
    this.mem.write(at, bytes);
    this.next = at + bytes.length;
    return at;
  }
}

/** Where each table went: guest addresses, or offsets in the firmware's blob. */
interface Placed { facs: number; dsdt: number; madt: number; fadt: number; rsdt: number; xsdt: number }

/** Every table but the RSDP, each handed to `put` (which returns where it went) after those it points to. */
function placeTables(o: AcpiOptions, oemId: string, put: (bytes: Uint8Array, align?: number) => number): Placed {
  const pm = o.pm ?? DEFAULT_PM_PORTS;
  const facs = put(buildFacs(), 64);
  const dsdt = put(buildDsdt(oemId, o.dsdt));
  const madt = put(buildMadt(oemId, {
    cpus: o.cpus, ioapicId: o.ioapicId ?? 0, ioapicAddr: o.ioapicAddr ?? IOAPIC_ADDR, lapicAddr: o.lapicAddr ?? LAPIC_ADDR,
  }));
  const fadt = put(buildFadt(oemId, pm, facs, dsdt));
  const rsdt = put(buildRsdt(oemId, [fadt, madt]));
  const xsdt = put(buildXsdt(oemId, [fadt, madt]));
  return { facs, dsdt, madt, fadt, rsdt, xsdt };
}

/** Write every table; returns the RSDP's guest-physical address. */
export function buildAcpiTables(mem: GuestMemory, o: AcpiOptions): number {
  const oemId = (o.oemId ?? 'TSHYVE').slice(0, 6);
  mem.fill(ACPI_TABLES_ADDR, ACPI_TABLES_SIZE, 0);
  const place = new Placer(mem, ACPI_TABLES_ADDR, ACPI_TABLES_ADDR + ACPI_TABLES_SIZE);
  const rsdpAddr = place.put(new Uint8Array(RSDP_SIZE)); // first, 16-byte aligned: found by the scan
  const t = placeTables(o, oemId, (b, align) => place.put(b, align));
  mem.write(rsdpAddr, buildRsdp(oemId, t.rsdt, t.xsdt));
  return rsdpAddr;
}

/** The two blobs of QEMU's table loader: every table, and the RSDP apart. */
export type AcpiBlobName = 'tables' | 'rsdp';
/** A field of `size` bytes at `offset` in blob `in` that holds an offset into the tables blob. */
export interface AcpiPointer { in: AcpiBlobName; offset: number; size: 4 | 8 }
/** A checksum byte at `at` in blob `in` over [start, start + length), to compute once the pointers are patched. */
export interface AcpiChecksum { in: AcpiBlobName; at: number; start: number; length: number }
export interface AcpiBlobs {
  tables: Uint8Array;
  rsdp: Uint8Array;
  /** in the order firmware must patch them */
  pointers: AcpiPointer[];
  /** in the order firmware must compute them, every checksum byte left 0 */
  checksums: AcpiChecksum[];
}

/**
 * The same tables for firmware to place (QEMU's etc/acpi/tables and
 * etc/acpi/rsdp): pointers hold offsets into the tables blob and checksum
 * bytes are 0, so that the firmware's loader adds its addresses and then
 * computes every checksum.
 */
export function buildAcpiBlobs(o: AcpiOptions): AcpiBlobs {
  const oemId = (o.oemId ?? 'TSHYVE').slice(0, 6);
  const parts: Uint8Array[] = [];
  let size = 0;
  const placed = new Map<number, number>(); // offset -> length
  const t = placeTables(o, oemId, (b, align = 16) => {
    const at = Math.ceil(size / align) * align;
    if (at > size) parts.push(new Uint8Array(at - size));
    parts.push(b);
    size = at + b.length;
    placed.set(at, b.length);
    return at;
  });
  const tables = new Uint8Array(size);
  let p = 0;
  for (const part of parts) { tables.set(part, p); p += part.length; }
  const rsdp = buildRsdp(oemId, t.rsdt, t.xsdt);
  const checksums: AcpiChecksum[] = [
    // every table but the FACS, which has no checksum
    ...[...placed].filter(([at]) => at !== t.facs).map(([at, length]) => ({ in: 'tables' as const, at: at + 9, start: at, length })),
    { in: 'rsdp', at: 8, start: 0, length: 20 },
    { in: 'rsdp', at: 32, start: 0, length: RSDP_SIZE },
  ];
  for (const c of checksums) (c.in === 'tables' ? tables : rsdp)[c.at] = 0;
  const entries = (base: number, size: 4 | 8): AcpiPointer[] =>
    Array.from({ length: (placed.get(base)! - SDT_HEADER_SIZE) / size }, (_, i) => ({ in: 'tables', offset: base + SDT_HEADER_SIZE + size * i, size }));
  return {
    tables, rsdp, checksums,
    pointers: [
      { in: 'tables', offset: t.fadt + FADT.FIRMWARE_CTRL, size: 4 },
      { in: 'tables', offset: t.fadt + FADT.DSDT, size: 4 },
      { in: 'tables', offset: t.fadt + FADT.X_DSDT, size: 8 },
      ...entries(t.rsdt, 4),
      ...entries(t.xsdt, 8),
      { in: 'rsdp', offset: 16, size: 4 },
      { in: 'rsdp', offset: 24, size: 8 },
    ],
  };
}
