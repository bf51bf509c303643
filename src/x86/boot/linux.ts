/**
 * Direct Linux boot through the 64-bit boot protocol: place the kernel,
 * command line and initrd, fill boot_params, build the long-mode
 * environment, and return the CPU state to start the BSP in.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { UserError } from '../../errors.js';
import {
  CMDLINE_ADDR, CMDLINE_MAX, HIGH_MEMORY_START, PAGE_SIZE, ZERO_PAGE_ADDR, e820Map, lowRamEnd, MiB,
} from '../layout.js';
import {
  BP, E820_ENTRY_SIZE, E820_MAX_ENTRIES, HDR, LOADER_TYPE_UNDEFINED, VID_MODE_NORMAL,
} from './boot-params.js';
import { type BootCpuState, setupLongMode } from './cpu-state.js';
import { type KernelImage, isBzImage, isElf, loadBzImage, loadElf } from './kernel-image.js';

export type { BootCpuState, Segment, DescriptorTable } from './cpu-state.js';

export interface LinuxBootOptions {
  kernel: Uint8Array;
  initrd?: Uint8Array;
  cmdline: string;
  /** total guest RAM, as given to guestRamLayout */
  memBytes: number;
  rsdpAddr?: number;
}

export function loadLinux(mem: GuestMemory, opts: LinuxBootOptions): BootCpuState {
  const lowEnd = lowRamEnd(opts.memBytes);
  let img: KernelImage;
  if (isBzImage(opts.kernel)) img = loadBzImage(mem, opts.kernel, lowEnd);
  else if (isElf(opts.kernel)) img = loadElf(mem, opts.kernel, lowEnd);
  else throw new UserError('kernel file is neither a bzImage nor an ELF vmlinux');

  const cmdline = writeCmdline(mem, opts.cmdline, img.cmdlineMax);
  const initrd = opts.initrd && opts.initrd.length > 0 ? placeInitrd(mem, opts.initrd, img, lowEnd) : undefined;
  writeZeroPage(mem, img, opts, cmdline, initrd);
  return setupLongMode(mem, img.entry, ZERO_PAGE_ADDR);
}

function writeCmdline(mem: GuestMemory, cmdline: string, kernelMax: number): number {
  const bytes = new TextEncoder().encode(cmdline);
  if (bytes.includes(0)) throw new UserError('kernel command line contains a NUL byte');
  const max = Math.min(kernelMax, CMDLINE_MAX - 1);
  if (bytes.length > max) throw new UserError(`kernel command line is ${bytes.length} bytes; this kernel accepts at most ${max}`);
  mem.write(CMDLINE_ADDR, bytes);
  mem.writeU8(CMDLINE_ADDR + bytes.length, 0);
  return CMDLINE_ADDR;
}

/** As high as the kernel allows, page aligned, above the kernel's footprint. */
function placeInitrd(mem: GuestMemory, initrd: Uint8Array, img: KernelImage, lowEnd: number): { addr: number; size: number } {
  const top = Math.min(img.initrdAddrMax + 1, lowEnd);
  const addr = Math.floor((top - initrd.length) / PAGE_SIZE) * PAGE_SIZE;
  const floor = Math.max(img.end, HIGH_MEMORY_START);
  if (addr < floor) {
    throw new UserError(`initrd (${Math.ceil(initrd.length / MiB)} MiB) does not fit in guest RAM next to the kernel; give the guest more memory`);
  }
  mem.write(addr, initrd);
  return { addr, size: initrd.length };
}

function writeZeroPage(
  mem: GuestMemory, img: KernelImage, opts: LinuxBootOptions, cmdline: number,
  initrd: { addr: number; size: number } | undefined,
): void {
  const zp = ZERO_PAGE_ADDR;
  mem.fill(zp, PAGE_SIZE, 0);
  mem.write(zp + HDR.SETUP_SECTS, img.header);
  mem.writeU8(zp + HDR.TYPE_OF_LOADER, LOADER_TYPE_UNDEFINED);
  mem.writeU16(zp + HDR.VID_MODE, VID_MODE_NORMAL);
  mem.writeU32(zp + HDR.CMD_LINE_PTR, cmdline);
  mem.writeU32(zp + BP.EXT_CMD_LINE_PTR, Math.floor(cmdline / 2 ** 32));
  if (initrd) {
    mem.writeU32(zp + HDR.RAMDISK_IMAGE, initrd.addr);
    mem.writeU32(zp + HDR.RAMDISK_SIZE, initrd.size);
    mem.writeU32(zp + BP.EXT_RAMDISK_IMAGE, Math.floor(initrd.addr / 2 ** 32));
    mem.writeU32(zp + BP.EXT_RAMDISK_SIZE, Math.floor(initrd.size / 2 ** 32));
  }
  // boot_params.acpi_rsdp_addr exists from protocol 2.14 on.
  if (opts.rsdpAddr !== undefined && img.version >= 0x20e) mem.writeU64(zp + BP.ACPI_RSDP_ADDR, BigInt(opts.rsdpAddr));

  const map = e820Map(opts.memBytes);
  if (map.length > E820_MAX_ENTRIES) throw new Error('e820 map too long');
  map.forEach((e, i) => {
    const o = zp + BP.E820_TABLE + i * E820_ENTRY_SIZE;
    mem.writeU64(o, BigInt(e.addr));
    mem.writeU64(o + 8, BigInt(e.size));
    mem.writeU32(o + 16, e.type);
  });
  mem.writeU8(zp + BP.E820_ENTRIES, map.length);
  // Legacy "KiB above 1 MiB": only old kernels look, but it costs nothing.
  mem.writeU32(zp + BP.ALT_MEM_K, Math.floor((lowRamEnd(opts.memBytes) - HIGH_MEMORY_START) / 1024));
}
