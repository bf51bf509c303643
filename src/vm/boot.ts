/**
 * What a VM boots: a Linux kernel (bzImage or ELF vmlinux, with an initrd
 * and a command line, ACPI tables and Linux's 64-bit boot protocol), a
 * flat binary started in real mode (tshyve's own test programs), or the
 * firmware of -l bootrom, started at the reset vector.
 */
import type { VcpuFd } from '../kvm/kvm.js';
import type { Sregs, Segment as KvmSegment } from '../kvm/abi.js';
import type { ConfigTree } from '../config/tree.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { UserError } from '../errors.js';
import { readUserFile } from '../config/user-file.js';
import type { BootCpuState, Segment as BootSegment } from '../x86/boot/cpu-state.js';
import { loadLinux } from '../x86/boot/linux.js';
import { buildAcpiTables } from '../x86/acpi/index.js';
import { platformAcpiOptions } from '../pci/acpi-options.js';
import { checkFirmwareFiles } from '../devices/firmware.js';

export type BootSource =
  | { kind: 'linux'; kernel: Buffer; initrd?: Buffer; cmdline: string }
  | { kind: 'raw'; file: string; image: Buffer; address: number }
  // The firmware (-l bootrom: its flash and fw_cfg are platform devices, which also hand it boot.kernel).
  | { kind: 'firmware' };

/** The boot payload the config names (boot.kernel/initrd/cmdline or boot.raw), read and checked. */
export function bootSource(c: ConfigTree): BootSource {
  const kernel = c.get('boot.kernel');
  const raw = c.get('boot.raw');
  if (c.get('lpc.bootrom') !== undefined) {
    if (raw) throw new UserError('boot.raw and -l bootrom both say what to boot: give one');
    const bridge = c.get('pci.0.0.0.device');
    if (bridge !== 'hostbridge' && bridge !== 'amd_hostbridge') {
      throw new UserError('-l bootrom needs the host bridge at slot 0 (-s 0,hostbridge): the firmware knows the platform by it');
    }
    checkFirmwareFiles(c.get('lpc.bootrom')!, c.get('lpc.bootvars')); // before the host is touched (the flash device checks again on a restore)
    return { kind: 'firmware' };
  }
  if (kernel) {
    const image = readUserFile(kernel, 'kernel');
    if (!isLinuxKernel(image)) throw new UserError(`kernel ${kernel} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)`);
    const initrd = c.get('boot.initrd');
    return { kind: 'linux', kernel: image, initrd: initrd ? readUserFile(initrd, 'initrd') : undefined, cmdline: c.get('boot.cmdline') ?? 'console=ttyS0' };
  }
  if (raw) {
    const a = c.get('boot.raw.address') ?? '0x1000';
    const address = Number(a);
    if (!Number.isSafeInteger(address) || address < 0 || address >= 0x100000) throw new UserError(`boot.raw.address '${a}' must be below 1 MiB`);
    return { kind: 'raw', file: raw, image: readUserFile(raw, 'boot image'), address };
  }
  throw new UserError('nothing to boot: give -o boot.kernel=PATH (a Linux bzImage or vmlinux) or -l bootrom,FIRMWARE');
}

/** Put the payload in guest memory and the boot vCPU where it starts. */
export function loadBoot(boot: BootSource, mem: GuestMemory, bsp: VcpuFd, cpus: number, memBytes: number): void {
  if (boot.kind === 'firmware') {
    startAtResetVector(bsp);
    return;
  }
  if (boot.kind === 'raw') {
    const image = boot.image;
    if (!mem.contains(boot.address, image.length)) throw new UserError(`boot image ${boot.file} does not fit in guest memory at 0x${boot.address.toString(16)}`);
    mem.write(boot.address, image);
    // Real mode at seg:off = (addr >> 4):(addr & 0xf)
    const s = bsp.getSregs();
    const seg = boot.address >> 4;
    s.cs = { ...s.cs, base: BigInt(seg << 4), selector: seg };
    bsp.setSregs(s);
    const r = bsp.getRegs();
    r.rip = BigInt(boot.address & 0xf); r.rflags = 2n; r.rsp = 0n;
    bsp.setRegs(r);
    return;
  }
  const { kernel, initrd } = boot;
  const rsdpAddr = buildAcpiTables(mem, platformAcpiOptions(cpus, false));
  const state = loadLinux(mem, { kernel, initrd, cmdline: boot.cmdline, memBytes, rsdpAddr });
  applyBootState(bsp, state);
}

/** bzImage setup header magic, or an ELF64 image. */
function isLinuxKernel(b: Buffer): boolean {
  const bz = b.length > 0x206 && b.readUInt32LE(0x202) === 0x53726448;
  const elf = b.length > 64 && b.readUInt32BE(0) === 0x7f454c46 && b[4] === 2;
  return bz || elf;
}

/** The x86 reset state's entry: real mode at F000:FFF0 with CS's base at 0xFFFF0000, the firmware's last 16 bytes. */
function startAtResetVector(v: VcpuFd): void {
  const s = v.getSregs();
  s.cs = { ...s.cs, selector: 0xf000, base: 0xffff0000n, limit: 0xffff };
  v.setSregs(s);
  const r = v.getRegs();
  r.rip = 0xfff0n; r.rflags = 2n;
  v.setRegs(r);
}

function toKvmSeg(s: BootSegment): KvmSegment {
  return { ...s, base: BigInt(s.base), unusable: 0 };
}

function applyBootState(v: VcpuFd, st: BootCpuState): void {
  const s: Sregs = v.getSregs();
  s.cs = toKvmSeg(st.cs);
  for (const n of ['ds', 'es', 'fs', 'gs', 'ss'] as const) s[n] = toKvmSeg(st.ds);
  if (st.tr) s.tr = toKvmSeg(st.tr);
  s.gdt = { base: BigInt(st.gdt.base), limit: st.gdt.limit };
  s.idt = { base: BigInt(st.idt.base), limit: st.idt.limit };
  s.cr0 = BigInt(st.cr0); s.cr3 = BigInt(st.cr3); s.cr4 = BigInt(st.cr4); s.efer = BigInt(st.efer);
  v.setSregs(s);
  const r = v.getRegs();
  for (const k of Object.keys(r) as (keyof typeof r)[]) r[k] = 0n;
  r.rip = BigInt(st.rip); r.rsi = BigInt(st.rsi); r.rsp = BigInt(st.rsp); r.rbp = BigInt(st.rsp); r.rflags = BigInt(st.rflags);
  v.setRegs(r);
}
