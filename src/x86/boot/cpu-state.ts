/**
 * The 64-bit boot CPU state (Linux boot protocol, "64-bit BOOT PROTOCOL"):
 * long mode with paging, flat __BOOT_CS/__BOOT_DS segments, an identity
 * map covering the kernel, zero page and command line. This module writes
 * the GDT and page tables into guest memory; the VMM turns the returned
 * object into KVM registers.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import {
  BOOT_STACK_TOP, GDT_ADDR, GDT_SIZE, IDENTITY_MAP_BYTES, IDT_ADDR, IDT_SIZE,
  PAGE_SIZE, PD_ADDR, PDPT_ADDR, PML4_ADDR, GiB, MiB,
} from '../layout.js';

/** The fields of KVM's struct kvm_segment (flags are 0/1). */
export interface Segment {
  base: number;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
}

export interface DescriptorTable { base: number; limit: number }

export interface BootCpuState {
  rip: number;
  /** guest-physical address of boot_params */
  rsi: number;
  rsp: number;
  rflags: number;
  cr0: number;
  cr3: number;
  cr4: number;
  efer: number;
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cs: Segment;
  /** use for ds, es, fs, gs and ss */
  ds: Segment;
  tr?: Segment;
}

export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
export const BOOT_TSS = 0x20;

export const CR0_PE = 1 << 0;
export const CR0_ET = 1 << 4;
export const CR0_NE = 1 << 5;
export const CR0_PG = 0x80000000;
export const CR4_PAE = 1 << 5;
export const EFER_LME = 1 << 8;
export const EFER_LMA = 1 << 10;

const PTE_P = 1;
const PTE_RW = 2;
const PDE_PS = 0x80;

export const CODE64: Segment = {
  base: 0, limit: 0xffffffff, selector: BOOT_CS, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0,
};
export const DATA: Segment = {
  base: 0, limit: 0xffffffff, selector: BOOT_DS, type: 0x3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0,
};
/** A busy 64-bit TSS: VMX entry wants a usable TR even though Linux loads its own. */
export const TSS: Segment = {
  base: 0, limit: 0x67, selector: BOOT_TSS, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0,
};

/** Encode a segment as an 8-byte descriptor (the low half for system segments). */
export function encodeDescriptor(seg: Segment): bigint {
  const limit = seg.g ? Math.floor(seg.limit / PAGE_SIZE) : seg.limit; // 20-bit field
  const lo = ((seg.base & 0xffff) << 16) | (limit & 0xffff);
  const access = seg.type | (seg.s << 4) | (seg.dpl << 5) | (seg.present << 7);
  const flags = (seg.avl) | (seg.l << 1) | (seg.db << 2) | (seg.g << 3);
  const hi = ((seg.base >>> 16) & 0xff) | (access << 8) | (((limit >>> 16) & 0xf) << 16) | (flags << 20)
    | (((seg.base >>> 24) & 0xff) << 24);
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

export function writeGdt(mem: GuestMemory): DescriptorTable {
  mem.fill(GDT_ADDR, GDT_SIZE, 0);
  mem.writeU64(GDT_ADDR + BOOT_CS, encodeDescriptor(CODE64));
  mem.writeU64(GDT_ADDR + BOOT_DS, encodeDescriptor(DATA));
  mem.writeU64(GDT_ADDR + BOOT_TSS, encodeDescriptor(TSS)); // upper 8 bytes (base 63:32) stay 0
  mem.fill(IDT_ADDR, IDT_SIZE, 0);
  return { base: GDT_ADDR, limit: GDT_SIZE - 1 };
}

/** Identity-map [0, 4 GiB) with 2 MiB pages; returns CR3. */
export function writeIdentityPageTables(mem: GuestMemory): number {
  const pds = IDENTITY_MAP_BYTES / GiB;
  mem.fill(PML4_ADDR, PAGE_SIZE, 0);
  mem.fill(PDPT_ADDR, PAGE_SIZE, 0);
  mem.writeU64(PML4_ADDR, BigInt(PDPT_ADDR | PTE_P | PTE_RW));
  for (let i = 0; i < pds; i++) {
    const pd = PD_ADDR + i * PAGE_SIZE;
    mem.writeU64(PDPT_ADDR + i * 8, BigInt(pd | PTE_P | PTE_RW));
    for (let j = 0; j < 512; j++) {
      mem.writeU64(pd + j * 8, BigInt(i * GiB + j * 2 * MiB) | BigInt(PTE_P | PTE_RW | PDE_PS));
    }
  }
  return PML4_ADDR;
}

/** Write GDT/IDT/page tables and return the state for entering at `rip`. */
export function setupLongMode(mem: GuestMemory, rip: number, zeroPage: number): BootCpuState {
  const gdt = writeGdt(mem);
  const cr3 = writeIdentityPageTables(mem);
  return {
    rip,
    rsi: zeroPage,
    rsp: BOOT_STACK_TOP,
    rflags: 2,
    cr0: (CR0_PE | CR0_ET | CR0_NE | CR0_PG) >>> 0,
    cr3,
    cr4: CR4_PAE,
    efer: EFER_LME | EFER_LMA,
    gdt,
    idt: { base: IDT_ADDR, limit: IDT_SIZE - 1 },
    cs: { ...CODE64 },
    ds: { ...DATA },
    tr: { ...TSS },
  };
}
