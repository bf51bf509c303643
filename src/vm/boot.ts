/**
 * What a VM boots: a Linux kernel (bzImage or ELF vmlinux, with an initrd
 * and a command line, ACPI tables and Linux's 64-bit boot protocol) or a
 * flat binary started in real mode (tshyve's own test programs).
 */
import { readFileSync, statSync } from 'node:fs';
import type { VcpuFd } from '../kvm/kvm.js';
import type { Sregs, Segment as KvmSegment } from '../kvm/abi.js';
import type { ConfigTree } from '../config/tree.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { UserError } from '../errors.js';
import { IOAPIC_ADDR, LAPIC_ADDR } from '../x86/layout.js';
import type { BootCpuState, Segment as BootSegment } from '../x86/boot/cpu-state.js';
import { loadLinux } from '../x86/boot/linux.js';
import { buildAcpiTables } from '../x86/acpi/index.js';
import { intxGsi } from '../pci/device.js';

export type BootSource =
  | { kind: 'linux'; kernel: Buffer; initrd?: Buffer; cmdline: string }
  | { kind: 'raw'; file: string; image: Buffer; address: number };

/** The boot payload the config names (boot.kernel/initrd/cmdline or boot.raw), read and checked. */
export function bootSource(c: ConfigTree): BootSource {
  const kernel = c.get('boot.kernel');
  const raw = c.get('boot.raw');
  if (kernel) {
    const image = readBootFile(kernel, 'kernel');
    if (!isLinuxKernel(image)) throw new UserError(`kernel ${kernel} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)`);
    const initrd = c.get('boot.initrd');
    return { kind: 'linux', kernel: image, initrd: initrd ? readBootFile(initrd, 'initrd') : undefined, cmdline: c.get('boot.cmdline') ?? 'console=ttyS0' };
  }
  if (raw) {
    const a = c.get('boot.raw.address') ?? '0x1000';
    const address = Number(a);
    if (!Number.isSafeInteger(address) || address < 0 || address >= 0x100000) throw new UserError(`boot.raw.address '${a}' must be below 1 MiB`);
    return { kind: 'raw', file: raw, image: readBootFile(raw, 'boot image'), address };
  }
  throw new UserError('nothing to boot: give -o boot.kernel=PATH (a Linux bzImage or vmlinux); tshyve has no firmware boot yet');
}

/** Put the payload in guest memory and the boot vCPU where it starts. */
export function loadBoot(boot: BootSource, mem: GuestMemory, bsp: VcpuFd, cpus: number, memBytes: number): void {
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
  const rsdpAddr = buildAcpiTables(mem, {
    cpus, ioapicAddr: IOAPIC_ADDR, lapicAddr: LAPIC_ADDR,
    // INTx routing for drivers that do not use MSI-X
    dsdt: { pci: { prt: Array.from({ length: 32 }, (_, slot) => ({ slot, pin: 0, gsi: intxGsi(slot) })) } },
  });
  const state = loadLinux(mem, { kernel, initrd, cmdline: boot.cmdline, memBytes, rsdpAddr });
  applyBootState(bsp, state);
}

function readBootFile(path: string, what: string): Buffer {
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new UserError(`${what} ${path} is not a regular file`);
    return readFileSync(path);
  } catch (e) {
    if (e instanceof UserError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(`cannot read ${what} ${path}: ${code === 'ENOENT' ? 'no such file' : code ?? String(e)}`);
  }
}

/** bzImage setup header magic, or an ELF64 image. */
function isLinuxKernel(b: Buffer): boolean {
  const bz = b.length > 0x206 && b.readUInt32LE(0x202) === 0x53726448;
  const elf = b.length > 64 && b.readUInt32BE(0) === 0x7f454c46 && b[4] === 2;
  return bz || elf;
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
