/**
 * Recognise and place a Linux kernel: a bzImage (64-bit entry at +0x200 of
 * the protected-mode part) or an ELF64 vmlinux (PT_LOAD at p_paddr). Both
 * yield the setup header to copy into boot_params and the physical range the
 * kernel will occupy, so the initrd can be kept clear of it.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { UserError } from '../../errors.js';
import { HIGH_MEMORY_START, MiB } from '../layout.js';
import {
  BOOT_FLAG_MAGIC, HDR, HDRS_MAGIC, LOADED_HIGH, LOADER_TYPE_UNDEFINED, XLF_KERNEL_64,
} from './boot-params.js';

export interface KernelImage {
  format: 'bzImage' | 'elf';
  entry: number;
  /** setup header bytes for boot_params offset 0x1f1 onwards */
  header: Uint8Array;
  /** boot protocol version, e.g. 0x020f */
  version: number;
  /** physical range the kernel (incl. decompression space) may use */
  start: number;
  end: number;
  /** longest command line, excluding the NUL */
  cmdlineMax: number;
  /** highest address an initrd byte may occupy */
  initrdAddrMax: number;
}

/** boot_params has room for the header up to edd_mbr_sig_buffer at 0x290. */
const SETUP_HEADER_LIMIT = 0x290;
/** x86 COMMAND_LINE_SIZE is 2048; an ELF carries no cmdline_size. */
const ELF_CMDLINE_MAX = 2047;
const ELF_INITRD_ADDR_MAX = 0x7fffffff;

const mib = (n: number): string => `${Math.ceil(n / MiB)} MiB`;

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function alignUp(n: number, a: number): number {
  return a > 1 ? Math.ceil(n / a) * a : n;
}

function checkFits(end: number, lowEnd: number, what: string): void {
  if (end > lowEnd) {
    throw new UserError(`${what} needs ${mib(end)} of guest RAM below 3 GiB but the guest has ${mib(lowEnd)}`);
  }
}

export function isBzImage(k: Uint8Array): boolean {
  return k.length >= 0x210 && view(k).getUint32(HDR.HEADER, true) === HDRS_MAGIC;
}

/** Bytes of a bzImage's real-mode part (boot sector and setup): the protected-mode kernel follows. */
export function bzImageSetupSize(k: Uint8Array): number {
  return ((k[HDR.SETUP_SECTS]! || 4) + 1) * 512;
}

export function isElf(k: Uint8Array): boolean {
  return k.length >= 4 && k[0] === 0x7f && k[1] === 0x45 && k[2] === 0x4c && k[3] === 0x46;
}

export function loadBzImage(mem: GuestMemory, k: Uint8Array, lowEnd: number): KernelImage {
  if (k.length < SETUP_HEADER_LIMIT) throw new UserError('kernel bzImage is truncated (setup header)');
  const dv = view(k);
  const version = dv.getUint16(HDR.VERSION, true);
  if (dv.getUint16(HDR.BOOT_FLAG, true) !== BOOT_FLAG_MAGIC) throw new UserError('kernel bzImage has no 0xAA55 boot flag');
  if (version < 0x206) {
    throw new UserError(`kernel bzImage uses boot protocol ${(version >> 8)}.${(version & 0xff).toString().padStart(2, '0')}; 2.06 or newer is required`);
  }
  const hdrEnd = Math.min(0x202 + k[0x201]!, SETUP_HEADER_LIMIT);
  if (version >= 0x20c && !(dv.getUint16(HDR.XLOADFLAGS, true) & XLF_KERNEL_64)) {
    throw new UserError('kernel bzImage has no 64-bit entry point (not an x86-64 kernel)');
  }
  if (!(k[HDR.LOADFLAGS]! & LOADED_HIGH)) throw new UserError('kernel bzImage is a zImage (must load high)');

  const pmOffset = bzImageSetupSize(k);
  const pmLen = k.length - pmOffset;
  const syssize = dv.getUint32(HDR.SYSSIZE, true) * 16;
  if (pmLen <= 0 || pmLen < syssize) throw new UserError('kernel bzImage is truncated');

  const relocatable = k[HDR.RELOCATABLE_KERNEL]! !== 0;
  const align = dv.getUint32(HDR.KERNEL_ALIGNMENT, true);
  const pref = version >= 0x20a ? Number(dv.getBigUint64(HDR.PREF_ADDRESS, true)) : HIGH_MEMORY_START;
  const initSize = version >= 0x20a ? dv.getUint32(HDR.INIT_SIZE, true) : 0;

  // Load where the kernel wants to run; otherwise at 1 MiB, from where it
  // moves itself (to pref_address at least: LOAD_PHYSICAL_ADDR).
  let load = HIGH_MEMORY_START;
  if (relocatable && pref >= HIGH_MEMORY_START && pref + Math.max(initSize, pmLen) <= lowEnd) load = pref;
  const run = Math.max(relocatable ? alignUp(load, align) : 0, pref);
  const end = Math.max(load + pmLen, run + initSize);
  checkFits(end, lowEnd, 'kernel');

  mem.write(load, k.subarray(pmOffset));
  const header = k.slice(HDR.SETUP_SECTS, hdrEnd);
  new DataView(header.buffer).setUint32(HDR.CODE32_START - HDR.SETUP_SECTS, load, true);
  return {
    format: 'bzImage',
    entry: load + 0x200, // startup_64
    header,
    version,
    start: load,
    end,
    cmdlineMax: dv.getUint32(HDR.CMDLINE_SIZE, true),
    initrdAddrMax: dv.getUint32(HDR.INITRD_ADDR_MAX, true),
  };
}

interface Phdr { offset: number; vaddr: bigint; paddr: number; filesz: number; memsz: number }

function u64(dv: DataView, off: number, what: string): number {
  const v = dv.getBigUint64(off, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new UserError(`kernel ELF ${what} is out of range`);
  return Number(v);
}

export function loadElf(mem: GuestMemory, k: Uint8Array, lowEnd: number): KernelImage {
  if (k.length < 64) throw new UserError('kernel ELF is truncated (header)');
  const dv = view(k);
  if (k[4] !== 2 || k[5] !== 1) throw new UserError('kernel ELF is not 64-bit little-endian');
  if (dv.getUint16(18, true) !== 62) throw new UserError('kernel ELF is not for x86-64');
  if (dv.getUint16(16, true) !== 2) throw new UserError('kernel ELF is not an executable');
  const eEntry = dv.getBigUint64(24, true);
  const phoff = u64(dv, 32, 'program header offset');
  const phentsize = dv.getUint16(54, true);
  const phnum = dv.getUint16(56, true);
  if (phentsize < 56 || phoff + phnum * phentsize > k.length) throw new UserError('kernel ELF is truncated (program headers)');

  const loads: Phdr[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    if (dv.getUint32(o, true) !== 1) continue; // PT_LOAD
    const ph = {
      offset: u64(dv, o + 8, 'segment offset'), vaddr: dv.getBigUint64(o + 16, true),
      paddr: u64(dv, o + 24, 'segment address'), filesz: u64(dv, o + 32, 'segment size'),
      memsz: u64(dv, o + 40, 'segment size'),
    };
    if (ph.offset + ph.filesz > k.length || ph.filesz > ph.memsz) throw new UserError('kernel ELF is truncated (segment data)');
    if (ph.paddr < HIGH_MEMORY_START) throw new UserError(`kernel ELF segment at 0x${ph.paddr.toString(16)} is below 1 MiB`);
    loads.push(ph);
  }
  if (loads.length === 0) throw new UserError('kernel ELF has no loadable segments');
  const start = Math.min(...loads.map((p) => p.paddr));
  const end = Math.max(...loads.map((p) => p.paddr + p.memsz));
  checkFits(end, lowEnd, 'kernel');

  // e_entry of vmlinux is physical (phys_startup_64); map a virtual one anyway.
  let entry: number;
  const phys = loads.find((p) => eEntry >= BigInt(p.paddr) && eEntry < BigInt(p.paddr + p.memsz));
  if (phys) entry = Number(eEntry);
  else {
    const seg = loads.find((p) => eEntry >= p.vaddr && eEntry < p.vaddr + BigInt(p.memsz));
    if (!seg) throw new UserError('kernel ELF entry point is outside its segments');
    entry = Number(eEntry - seg.vaddr) + seg.paddr;
  }

  for (const p of loads) {
    mem.write(p.paddr, k.subarray(p.offset, p.offset + p.filesz));
    mem.fill(p.paddr + p.filesz, p.memsz - p.filesz, 0);
  }
  return {
    format: 'elf', entry, header: synthesizeHeader(start), version: 0x020f, start, end,
    cmdlineMax: ELF_CMDLINE_MAX, initrdAddrMax: ELF_INITRD_ADDR_MAX,
  };
}

/** A setup header for a kernel that came without one (vmlinux). */
function synthesizeHeader(load: number): Uint8Array {
  const h = new Uint8Array(0x26c - HDR.SETUP_SECTS);
  const dv = new DataView(h.buffer);
  const at = (off: number): number => off - HDR.SETUP_SECTS;
  dv.setUint16(at(HDR.BOOT_FLAG), BOOT_FLAG_MAGIC, true);
  h[at(HDR.JUMP)] = 0xeb;
  h[at(HDR.JUMP) + 1] = 0x26c - 0x202;
  dv.setUint32(at(HDR.HEADER), HDRS_MAGIC, true);
  dv.setUint16(at(HDR.VERSION), 0x020f, true);
  h[at(HDR.TYPE_OF_LOADER)] = LOADER_TYPE_UNDEFINED;
  h[at(HDR.LOADFLAGS)] = LOADED_HIGH;
  dv.setUint32(at(HDR.CODE32_START), load, true);
  dv.setUint32(at(HDR.INITRD_ADDR_MAX), ELF_INITRD_ADDR_MAX, true);
  dv.setUint32(at(HDR.KERNEL_ALIGNMENT), 0x200000, true);
  dv.setUint16(at(HDR.XLOADFLAGS), XLF_KERNEL_64, true);
  dv.setUint32(at(HDR.CMDLINE_SIZE), ELF_CMDLINE_MAX, true);
  return h;
}
