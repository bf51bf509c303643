/**
 * KVM's user-space ABI for x86-64: ioctl numbers, exit reasons and the
 * byte layouts of the structs tshyve passes (from linux/kvm.h and
 * asm/kvm.h). Structs are plain Buffers read and written at these offsets.
 */
const IOC = (dir: number, nr: number, size: number): number => ((dir << 30) | (size << 16) | (0xae << 8) | nr) >>> 0;
const IO = (nr: number) => IOC(0, nr, 0);
const IOW = (nr: number, size: number) => IOC(1, nr, size);
const IOR = (nr: number, size: number) => IOC(2, nr, size);
const IOWR = (nr: number, size: number) => IOC(3, nr, size);

export const KVM = {
  GET_API_VERSION: IO(0x00),
  CREATE_VM: IO(0x01),
  GET_MSR_INDEX_LIST: IOWR(0x02, 4),
  CHECK_EXTENSION: IO(0x03),
  GET_VCPU_MMAP_SIZE: IO(0x04),
  GET_SUPPORTED_CPUID: IOWR(0x05, 8),
  CREATE_VCPU: IO(0x41),
  SET_USER_MEMORY_REGION: IOW(0x46, 32),
  GET_DIRTY_LOG: IOW(0x42, 16),
  SET_TSS_ADDR: IO(0x47),
  SET_IDENTITY_MAP_ADDR: IOW(0x48, 8),
  CREATE_IRQCHIP: IO(0x60),
  IRQ_LINE: IOW(0x61, 8),
  GET_IRQCHIP: IOWR(0x62, 520),
  SET_IRQCHIP: IOR(0x63, 520),
  SET_GSI_ROUTING: IOW(0x6a, 8),
  IRQFD: IOW(0x76, 32),
  CREATE_PIT2: IOW(0x77, 64),
  IOEVENTFD: IOW(0x79, 64),
  SET_CLOCK: IOW(0x7b, 48),
  GET_CLOCK: IOR(0x7c, 48),
  GET_PIT2: IOR(0x9f, 112),
  SET_PIT2: IOW(0xa0, 112),
  ENABLE_CAP: IOW(0xa3, 104),
  SIGNAL_MSI: IOW(0xa5, 32),
  RUN: IO(0x80),
  GET_REGS: IOR(0x81, 144),
  SET_REGS: IOW(0x82, 144),
  GET_SREGS: IOR(0x83, 312),
  SET_SREGS: IOW(0x84, 312),
  GET_MSRS: IOWR(0x88, 8),
  SET_MSRS: IOW(0x89, 8),
  GET_FPU: IOR(0x8c, 416),
  SET_FPU: IOW(0x8d, 416),
  GET_LAPIC: IOR(0x8e, 1024),
  SET_LAPIC: IOW(0x8f, 1024),
  SET_CPUID2: IOW(0x90, 8),
  GET_CPUID2: IOWR(0x91, 8),
  GET_MP_STATE: IOR(0x98, 4),
  SET_MP_STATE: IOW(0x99, 4),
  GET_VCPU_EVENTS: IOR(0x9f, 64),
  SET_VCPU_EVENTS: IOW(0xa0, 64),
  GET_XSAVE: IOR(0xa4, 4096),
  SET_XSAVE: IOW(0xa5, 4096),
  GET_XCRS: IOR(0xa6, 392),
  SET_XCRS: IOW(0xa7, 392),
  GET_TSC_KHZ: IO(0xa3),
  GET_DEBUGREGS: IOR(0xa1, 128),
  SET_DEBUGREGS: IOW(0xa2, 128),
  KVMCLOCK_CTRL: IO(0xad),
  /** inject an external interrupt (no in-kernel local APIC) */
  INTERRUPT: IOW(0x86, 4),
  NMI: IO(0x9a),
} as const;

/** kvm_userspace_memory_region.flags: KVM logs the slot's pages the guest writes (KVM_GET_DIRTY_LOG). */
export const MEM_LOG_DIRTY_PAGES = 1;
/** A slot the guest reads and executes from; its writes exit as MMIO (KVM_CAP_READONLY_MEM). */
export const MEM_READONLY = 2;

/** KVM_CHECK_EXTENSION capability numbers. */
export const CAP = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  PIT2: 33,
  IOEVENTFD: 36,
  IRQFD: 32,
  SET_IDENTITY_MAP_ADDR: 37,
  ADJUST_CLOCK: 39,
  VCPU_EVENTS: 41,
  XSAVE: 55,
  XCRS: 56,
  IMMEDIATE_EXIT: 136,
  SIGNAL_MSI: 77,
  NR_VCPUS: 9,
  MAX_VCPUS: 66,
  IRQ_ROUTING: 25,
  TSC_DEADLINE_TIMER: 72,
  READONLY_MEM: 81,
} as const;

export const EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

export const EXIT_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(EXIT).map(([k, v]) => [v, k]),
);

/** Offsets in struct kvm_run. */
export const RUN = {
  REQUEST_INTERRUPT_WINDOW: 0,
  IMMEDIATE_EXIT: 1,
  READY_FOR_INTERRUPT_INJECTION: 12,
  IF_FLAG: 13,
  /** the guest's CR8 (TPR >> 4): given on exit, read before entry, when the local APIC is not in the kernel */
  CR8: 16,
  EXIT_REASON: 8,
  IO_DIRECTION: 32,
  IO_SIZE: 33,
  IO_PORT: 34,
  IO_COUNT: 36,
  IO_DATA_OFFSET: 40,
  MMIO_PHYS_ADDR: 32,
  MMIO_DATA: 40,
  MMIO_LEN: 48,
  MMIO_IS_WRITE: 52,
  INTERNAL_SUBERROR: 32,
  INTERNAL_NDATA: 36,
  INTERNAL_DATA: 40,
  FAIL_ENTRY_REASON: 32,
  SYSTEM_EVENT_TYPE: 32,
} as const;

export const SYSTEM_EVENT = { SHUTDOWN: 1, RESET: 2, CRASH: 3 } as const;

export const MP_STATE = { RUNNABLE: 0, UNINITIALIZED: 1, INIT_RECEIVED: 2, HALTED: 3, SIPI_RECEIVED: 4 } as const;

/** struct kvm_regs: 18 u64 in this order. */
export const REG_NAMES = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export type Regs = Record<RegName, bigint>;

/** struct kvm_segment (24 bytes). */
export interface Segment {
  base: bigint; limit: number; selector: number; type: number;
  present: number; dpl: number; db: number; s: number; l: number; g: number; avl: number;
  unusable: number;
}
export interface DTable { base: bigint; limit: number }
export const SEG_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
export type SegName = (typeof SEG_NAMES)[number];
export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment; tr: Segment; ldt: Segment;
  gdt: DTable; idt: DTable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apicBase: bigint;
  interruptBitmap: bigint[];
}

export function decodeRegs(b: Buffer): Regs {
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => { r[n] = b.readBigUInt64LE(i * 8); });
  return r;
}
export function encodeRegs(r: Regs): Buffer {
  const b = Buffer.alloc(144);
  REG_NAMES.forEach((n, i) => b.writeBigUInt64LE(BigInt.asUintN(64, r[n]), i * 8));
  return b;
}

function decodeSeg(b: Buffer, o: number): Segment {
  return {
    base: b.readBigUInt64LE(o), limit: b.readUInt32LE(o + 8), selector: b.readUInt16LE(o + 12),
    type: b[o + 14]!, present: b[o + 15]!, dpl: b[o + 16]!, db: b[o + 17]!, s: b[o + 18]!, l: b[o + 19]!,
    g: b[o + 20]!, avl: b[o + 21]!, unusable: b[o + 22]!,
  };
}
function encodeSeg(b: Buffer, o: number, s: Segment): void {
  b.writeBigUInt64LE(BigInt.asUintN(64, s.base), o); b.writeUInt32LE(s.limit >>> 0, o + 8); b.writeUInt16LE(s.selector, o + 12);
  b[o + 14] = s.type; b[o + 15] = s.present; b[o + 16] = s.dpl; b[o + 17] = s.db; b[o + 18] = s.s;
  b[o + 19] = s.l; b[o + 20] = s.g; b[o + 21] = s.avl; b[o + 22] = s.unusable;
}

export function decodeSregs(b: Buffer): Sregs {
  const s = {} as Sregs;
  SEG_NAMES.forEach((n, i) => { s[n] = decodeSeg(b, i * 24); });
  s.gdt = { base: b.readBigUInt64LE(192), limit: b.readUInt16LE(200) };
  s.idt = { base: b.readBigUInt64LE(208), limit: b.readUInt16LE(216) };
  s.cr0 = b.readBigUInt64LE(224); s.cr2 = b.readBigUInt64LE(232); s.cr3 = b.readBigUInt64LE(240);
  s.cr4 = b.readBigUInt64LE(248); s.cr8 = b.readBigUInt64LE(256); s.efer = b.readBigUInt64LE(264);
  s.apicBase = b.readBigUInt64LE(272);
  s.interruptBitmap = [0, 1, 2, 3].map((i) => b.readBigUInt64LE(280 + i * 8));
  return s;
}
export function encodeSregs(s: Sregs): Buffer {
  const b = Buffer.alloc(312);
  SEG_NAMES.forEach((n, i) => encodeSeg(b, i * 24, s[n]));
  b.writeBigUInt64LE(s.gdt.base, 192); b.writeUInt16LE(s.gdt.limit, 200);
  b.writeBigUInt64LE(s.idt.base, 208); b.writeUInt16LE(s.idt.limit, 216);
  b.writeBigUInt64LE(s.cr0, 224); b.writeBigUInt64LE(s.cr2, 232); b.writeBigUInt64LE(s.cr3, 240);
  b.writeBigUInt64LE(s.cr4, 248); b.writeBigUInt64LE(s.cr8, 256); b.writeBigUInt64LE(s.efer, 264);
  b.writeBigUInt64LE(s.apicBase, 272);
  s.interruptBitmap.forEach((v, i) => b.writeBigUInt64LE(v, 280 + i * 8));
  return b;
}

/** struct kvm_cpuid_entry2 (40 bytes). */
export interface CpuidEntry {
  function: number; index: number; flags: number; eax: number; ebx: number; ecx: number; edx: number;
}
export const CPUID_FLAG_SIGNIFICANT_INDEX = 1;

export function encodeCpuid(entries: CpuidEntry[]): Buffer {
  const b = Buffer.alloc(8 + entries.length * 40);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    const o = 8 + i * 40;
    b.writeUInt32LE(e.function >>> 0, o); b.writeUInt32LE(e.index >>> 0, o + 4); b.writeUInt32LE(e.flags >>> 0, o + 8);
    b.writeUInt32LE(e.eax >>> 0, o + 12); b.writeUInt32LE(e.ebx >>> 0, o + 16); b.writeUInt32LE(e.ecx >>> 0, o + 20);
    b.writeUInt32LE(e.edx >>> 0, o + 24);
  });
  return b;
}
export function decodeCpuid(b: Buffer): CpuidEntry[] {
  const n = b.readUInt32LE(0);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + i * 40;
    out.push({
      function: b.readUInt32LE(o), index: b.readUInt32LE(o + 4), flags: b.readUInt32LE(o + 8),
      eax: b.readUInt32LE(o + 12), ebx: b.readUInt32LE(o + 16), ecx: b.readUInt32LE(o + 20), edx: b.readUInt32LE(o + 24),
    });
  }
  return out;
}

export interface MsrEntry { index: number; data: bigint }
export function encodeMsrs(entries: MsrEntry[]): Buffer {
  const b = Buffer.alloc(8 + entries.length * 16);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => { b.writeUInt32LE(e.index >>> 0, 8 + i * 16); b.writeBigUInt64LE(BigInt.asUintN(64, e.data), 16 + i * 16); });
  return b;
}
export function decodeMsrs(b: Buffer, count: number): MsrEntry[] {
  const out: MsrEntry[] = [];
  for (let i = 0; i < count; i++) out.push({ index: b.readUInt32LE(8 + i * 16), data: b.readBigUInt64LE(16 + i * 16) });
  return out;
}

/** KVM_SET_GSI_ROUTING entry types and in-kernel irqchip ids. */
export const IRQ_ROUTING_IRQCHIP = 1;
export const IRQ_ROUTING_MSI = 2;
export const IRQCHIP = { PIC_MASTER: 0, PIC_SLAVE: 1, IOAPIC: 2 } as const;

/** One GSI route: to an irqchip pin, or an MSI message. */
export type GsiRoute =
  | { gsi: number; kind: 'irqchip'; chip: number; pin: number }
  | { gsi: number; kind: 'msi'; address: bigint; data: number };

/** sizeof(struct kvm_irq_routing_entry): gsi, type, flags, pad, then a 32-byte union. */
export const GSI_ROUTING_ENTRY_SIZE = 48;
/** GSIs the in-kernel IOAPIC has pins for; MSI routes are numbered after them. */
export const IOAPIC_PINS = 24;

/**
 * struct kvm_irq_routing { u32 nr; u32 flags; entries[nr] }. The union is
 * irqchip { u32 irqchip; u32 pin } or msi { u32 address_lo, address_hi, data, pad }.
 */
export function encodeGsiRouting(routes: readonly GsiRoute[]): Buffer {
  const b = Buffer.alloc(8 + routes.length * GSI_ROUTING_ENTRY_SIZE);
  b.writeUInt32LE(routes.length, 0);
  routes.forEach((r, i) => {
    const o = 8 + i * GSI_ROUTING_ENTRY_SIZE;
    b.writeUInt32LE(r.gsi >>> 0, o);
    if (r.kind === 'irqchip') {
      b.writeUInt32LE(IRQ_ROUTING_IRQCHIP, o + 4);
      b.writeUInt32LE(r.chip, o + 16); b.writeUInt32LE(r.pin, o + 20);
    } else {
      b.writeUInt32LE(IRQ_ROUTING_MSI, o + 4);
      b.writeUInt32LE(Number(r.address & 0xffffffffn), o + 16);
      b.writeUInt32LE(Number((r.address >> 32n) & 0xffffffffn), o + 20);
      b.writeUInt32LE(r.data >>> 0, o + 24);
    }
  });
  return b;
}

/**
 * The table KVM_CREATE_IRQCHIP installs (kvm_setup_default_irq_routing):
 * GSI 0-15 to the IOAPIC pin of the same number and to the PIC (master for
 * 0-7, slave for 8-15, pin = GSI mod 8), GSI 16-23 to the IOAPIC only.
 * KVM_SET_GSI_ROUTING replaces the whole table, so every MSI table we set
 * starts with this one. (QEMU leaves out GSI 2 and sends GSI 0 to IOAPIC
 * pin 2; keeping the kernel's own table changes nothing for the guest.)
 */
export function defaultIrqchipRoutes(): GsiRoute[] {
  const out: GsiRoute[] = [];
  for (let gsi = 0; gsi < IOAPIC_PINS; gsi++) {
    out.push({ gsi, kind: 'irqchip', chip: IRQCHIP.IOAPIC, pin: gsi });
    if (gsi < 16) out.push({ gsi, kind: 'irqchip', chip: gsi < 8 ? IRQCHIP.PIC_MASTER : IRQCHIP.PIC_SLAVE, pin: gsi % 8 });
  }
  return out;
}
