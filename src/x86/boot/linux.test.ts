import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest-memory.js';
import { UserError } from '../../errors.js';
import { loadLinux } from './linux.js';
import { BP, HDR, HDRS_MAGIC } from './boot-params.js';
import { BOOT_CS, BOOT_DS, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME } from './cpu-state.js';
import {
  CMDLINE_ADDR, GDT_ADDR, MiB, GiB, PD_ADDR, PDPT_ADDR, PML4_ADDR, ZERO_PAGE_ADDR, e820Map,
} from '../layout.js';

const MEM = 64 * MiB;

interface FakeBz {
  version?: number; setupSects?: number; pmLen?: number; relocatable?: boolean; pref?: number;
  initSize?: number; xloadflags?: number; cmdlineSize?: number; initrdAddrMax?: number; loadflags?: number;
}

/** A bzImage-shaped file: real header layout, a recognisable payload. */
function fakeBzImage(o: FakeBz = {}): Uint8Array {
  const setupSects = o.setupSects ?? 4;
  const pmLen = o.pmLen ?? 0x3000;
  const k = new Uint8Array(((setupSects || 4) + 1) * 512 + pmLen);
  const dv = new DataView(k.buffer);
  k[HDR.SETUP_SECTS] = setupSects;
  dv.setUint32(HDR.SYSSIZE, pmLen / 16, true);
  dv.setUint16(HDR.BOOT_FLAG, 0xaa55, true);
  k[0x200] = 0xeb; k[0x201] = 0x6a;
  dv.setUint32(HDR.HEADER, HDRS_MAGIC, true);
  dv.setUint16(HDR.VERSION, o.version ?? 0x020f, true);
  k[HDR.LOADFLAGS] = o.loadflags ?? 1;
  dv.setUint32(HDR.INITRD_ADDR_MAX, o.initrdAddrMax ?? 0x7fffffff, true);
  dv.setUint32(HDR.KERNEL_ALIGNMENT, 0x200000, true);
  k[HDR.RELOCATABLE_KERNEL] = o.relocatable === false ? 0 : 1;
  dv.setUint16(HDR.XLOADFLAGS, o.xloadflags ?? 0x7f, true);
  dv.setUint32(HDR.CMDLINE_SIZE, o.cmdlineSize ?? 0x7ff, true);
  dv.setBigUint64(HDR.PREF_ADDRESS, BigInt(o.pref ?? 0x1000000), true);
  dv.setUint32(HDR.INIT_SIZE, o.initSize ?? 0x800000, true);
  const pm = ((setupSects || 4) + 1) * 512;
  for (let i = pm; i < k.length; i++) k[i] = (i * 7) & 0xff;
  return k;
}

function check(k: Uint8Array, mem: GuestMemory, load: number): void {
  const pm = (((k[HDR.SETUP_SECTS] || 4) + 1) * 512);
  assert.deepEqual(mem.read(load, k.length - pm), k.subarray(pm));
}

test('relocatable bzImage loads at pref_address and enters startup_64', () => {
  const mem = GuestMemory.ofSize(MEM);
  const k = fakeBzImage();
  const s = loadLinux(mem, { kernel: k, cmdline: 'console=ttyS0 root=/dev/vda', memBytes: MEM, rsdpAddr: 0xe0000 });
  assert.equal(s.rip, 0x1000000 + 0x200);
  assert.equal(s.rsi, ZERO_PAGE_ADDR);
  check(k, mem, 0x1000000);
  const zp = ZERO_PAGE_ADDR;
  assert.equal(mem.readU32(zp + HDR.HEADER), HDRS_MAGIC);
  assert.equal(mem.readU16(zp + HDR.BOOT_FLAG), 0xaa55);
  assert.equal(mem.readU8(zp + HDR.TYPE_OF_LOADER), 0xff);
  assert.equal(mem.readU16(zp + HDR.VID_MODE), 0xffff);
  assert.equal(mem.readU32(zp + HDR.CODE32_START), 0x1000000);
  assert.equal(mem.readU32(zp + HDR.CMD_LINE_PTR), CMDLINE_ADDR);
  assert.equal(mem.readU32(zp + BP.EXT_CMD_LINE_PTR), 0);
  assert.equal(new TextDecoder().decode(mem.read(CMDLINE_ADDR, 27)), 'console=ttyS0 root=/dev/vda');
  assert.equal(mem.readU8(CMDLINE_ADDR + 27), 0);
  assert.equal(mem.readU64(zp + BP.ACPI_RSDP_ADDR), 0xe0000n);
  assert.equal(mem.readU32(zp + HDR.RAMDISK_IMAGE), 0);
  // header bytes past the copied setup header are untouched (zero)
  assert.equal(mem.readU32(zp + 0x26c), 0);
});

test('e820 table in boot_params matches e820Map', () => {
  const mem = GuestMemory.ofSize(MEM);
  loadLinux(mem, { kernel: fakeBzImage(), cmdline: '', memBytes: MEM });
  const map = e820Map(MEM);
  assert.equal(mem.readU8(ZERO_PAGE_ADDR + BP.E820_ENTRIES), map.length);
  map.forEach((e, i) => {
    const o = ZERO_PAGE_ADDR + BP.E820_TABLE + i * 20;
    assert.equal(mem.readU64(o), BigInt(e.addr));
    assert.equal(mem.readU64(o + 8), BigInt(e.size));
    assert.equal(mem.readU32(o + 16), e.type);
  });
});

test('initrd goes high, page aligned, clear of the kernel', () => {
  const mem = GuestMemory.ofSize(MEM);
  const initrd = new Uint8Array(3 * MiB + 123).map((_, i) => i & 0xff);
  loadLinux(mem, { kernel: fakeBzImage(), initrd, cmdline: 'x', memBytes: MEM });
  const addr = mem.readU32(ZERO_PAGE_ADDR + HDR.RAMDISK_IMAGE);
  assert.equal(mem.readU32(ZERO_PAGE_ADDR + HDR.RAMDISK_SIZE), initrd.length);
  assert.equal(addr % 4096, 0);
  assert.ok(addr + initrd.length <= MEM);
  assert.ok(MEM - (addr + initrd.length) < 4096);
  assert.ok(addr >= 0x1000000 + 0x800000);
  assert.deepEqual(mem.read(addr, initrd.length), initrd);
});

test('initrd respects initrd_addr_max', () => {
  const mem = GuestMemory.ofSize(MEM);
  loadLinux(mem, { kernel: fakeBzImage({ initrdAddrMax: 0x2ffffff }), initrd: new Uint8Array(5000), cmdline: '', memBytes: MEM });
  const addr = mem.readU32(ZERO_PAGE_ADDR + HDR.RAMDISK_IMAGE);
  assert.equal(addr, 0x3000000 - 0x2000);
});

test('non-relocatable kernel loads at 1 MiB; setup_sects 0 means 4', () => {
  const mem = GuestMemory.ofSize(MEM);
  const k = fakeBzImage({ relocatable: false, setupSects: 0 });
  const s = loadLinux(mem, { kernel: k, cmdline: '', memBytes: MEM });
  assert.equal(s.rip, 0x100200);
  check(k, mem, 0x100000);
});

test('a kernel whose run-time footprint exceeds RAM is refused', () => {
  const mem = GuestMemory.ofSize(MEM);
  const k = fakeBzImage({ pref: 0x3f00000 });
  assert.throws(() => loadLinux(mem, { kernel: k, cmdline: '', memBytes: MEM }), /needs \d+ MiB/);
  const s = loadLinux(mem, { kernel: fakeBzImage({ pref: 0x1000000, initSize: 0x100000 }), cmdline: '', memBytes: MEM });
  assert.equal(s.rip, 0x1000200);
});

test('long mode CPU state, GDT and identity map', () => {
  const mem = GuestMemory.ofSize(MEM);
  const s = loadLinux(mem, { kernel: fakeBzImage(), cmdline: '', memBytes: MEM });
  assert.ok(s.cr0 & CR0_PE && s.cr0 & CR0_PG);
  assert.ok(s.cr0 >= 0);
  assert.equal(s.cr4 & CR4_PAE, CR4_PAE);
  assert.equal(s.efer, EFER_LME | EFER_LMA);
  assert.equal(s.rflags, 2);
  assert.equal(s.cr3, PML4_ADDR);
  assert.equal(s.cs.selector, BOOT_CS);
  assert.equal(s.cs.l, 1);
  assert.equal(s.cs.db, 0);
  assert.equal(s.ds.selector, BOOT_DS);
  assert.equal(s.gdt.base, GDT_ADDR);
  assert.equal(mem.readU64(GDT_ADDR), 0n);
  assert.equal(mem.readU64(GDT_ADDR + 0x10), 0x00af9b000000ffffn);
  assert.equal(mem.readU64(GDT_ADDR + 0x18), 0x00cf93000000ffffn);
  assert.equal(mem.readU64(GDT_ADDR + 0x20), 0x00008b0000000067n);
  assert.ok(s.gdt.limit >= 0x27);
  assert.equal(mem.readU64(PML4_ADDR), BigInt(PDPT_ADDR | 3));
  for (let i = 0; i < 4; i++) assert.equal(mem.readU64(PDPT_ADDR + i * 8), BigInt((PD_ADDR + i * 0x1000) | 3));
  // 3 GiB + 5 * 2 MiB lives in the 4th PD, entry 5
  assert.equal(mem.readU64(PD_ADDR + 3 * 0x1000 + 5 * 8), BigInt(3 * GiB + 5 * 2 * MiB) | 0x83n);
  assert.equal(mem.readU64(PD_ADDR + 3 * 0x1000 + 511 * 8), BigInt(4 * GiB - 2 * MiB) | 0x83n);
});

test('rejects what is not a usable kernel with one-line user errors', () => {
  const mem = GuestMemory.ofSize(MEM);
  const bad = (kernel: Uint8Array, re: RegExp, extra: Partial<{ cmdline: string; initrd: Uint8Array }> = {}): void => {
    assert.throws(() => loadLinux(mem, { kernel, cmdline: '', memBytes: MEM, ...extra }), (e: unknown) => {
      assert.ok(e instanceof UserError, String(e));
      assert.match(e.message, re);
      assert.ok(!e.message.includes('\n'));
      return true;
    });
  };
  bad(new Uint8Array(0), /neither a bzImage nor an ELF/);
  bad(new TextEncoder().encode('#!/bin/sh\necho hi\n'), /neither/);
  bad(fakeBzImage().subarray(0, 0x300), /truncated/);
  bad(fakeBzImage().subarray(0, 4000), /truncated/);
  bad(fakeBzImage({ version: 0x0204 }), /2\.06 or newer/);
  bad(fakeBzImage({ xloadflags: 0 }), /64-bit/);
  bad(fakeBzImage({ initSize: 80 * MiB }), /needs \d+ MiB/);
  bad(fakeBzImage(), /command line is 3000 bytes/, { cmdline: 'a'.repeat(3000) });
  bad(fakeBzImage(), /NUL/, { cmdline: 'a\0b' });
  bad(fakeBzImage(), /initrd \(50 MiB\) does not fit/, { initrd: new Uint8Array(50 * MiB) });
});

/** A minimal ELF64 x86-64 executable with the given PT_LOAD segments. */
function fakeElf(entry: bigint, segs: { vaddr: bigint; paddr: number; data: Uint8Array; memsz: number }[]): Uint8Array {
  const phoff = 64;
  let off = phoff + 56 * segs.length;
  const offs = segs.map((s) => { const o = off; off += s.data.length; return o; });
  const f = new Uint8Array(off);
  const dv = new DataView(f.buffer);
  f.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, 2, true); dv.setUint16(18, 62, true); dv.setUint32(20, 1, true);
  dv.setBigUint64(24, entry, true); dv.setBigUint64(32, BigInt(phoff), true);
  dv.setUint16(52, 64, true); dv.setUint16(54, 56, true); dv.setUint16(56, segs.length, true);
  segs.forEach((s, i) => {
    const p = phoff + i * 56;
    dv.setUint32(p, 1, true); dv.setUint32(p + 4, 7, true);
    dv.setBigUint64(p + 8, BigInt(offs[i]!), true); dv.setBigUint64(p + 16, s.vaddr, true);
    dv.setBigUint64(p + 24, BigInt(s.paddr), true); dv.setBigUint64(p + 32, BigInt(s.data.length), true);
    dv.setBigUint64(p + 40, BigInt(s.memsz), true);
    f.set(s.data, offs[i]!);
  });
  return f;
}

test('ELF vmlinux: segments at p_paddr, bss zeroed, synthesized header', () => {
  const mem = GuestMemory.ofSize(MEM);
  mem.fill(0x1200000, 0x2000, 0xcc);
  const text = new Uint8Array(0x1000).fill(0x90);
  const data = new Uint8Array(0x800).fill(0x55);
  const k = fakeElf(0x1000000n, [
    { vaddr: 0xffffffff81000000n, paddr: 0x1000000, data: text, memsz: 0x1000 },
    { vaddr: 0xffffffff81200000n, paddr: 0x1200000, data, memsz: 0x2000 },
  ]);
  const s = loadLinux(mem, { kernel: k, initrd: new Uint8Array(100), cmdline: 'quiet', memBytes: MEM, rsdpAddr: 0xe0000 });
  assert.equal(s.rip, 0x1000000);
  assert.deepEqual(mem.read(0x1000000, 0x1000), text);
  assert.deepEqual(mem.read(0x1200000, 0x800), data);
  assert.ok(mem.read(0x1200800, 0x1800).every((b) => b === 0));
  const zp = ZERO_PAGE_ADDR;
  assert.equal(mem.readU16(zp + HDR.BOOT_FLAG), 0xaa55);
  assert.equal(mem.readU32(zp + HDR.HEADER), HDRS_MAGIC);
  assert.equal(mem.readU16(zp + HDR.VERSION), 0x020f);
  assert.equal(mem.readU8(zp + HDR.TYPE_OF_LOADER), 0xff);
  assert.equal(mem.readU8(zp + HDR.LOADFLAGS) & 1, 1);
  assert.equal(mem.readU64(zp + BP.ACPI_RSDP_ADDR), 0xe0000n);
  assert.ok(mem.readU32(zp + HDR.RAMDISK_IMAGE) >= 0x1202000);
});

test('ELF with a virtual entry point is translated through its segment', () => {
  const mem = GuestMemory.ofSize(MEM);
  const k = fakeElf(0xffffffff81000040n, [{ vaddr: 0xffffffff81000000n, paddr: 0x1000000, data: new Uint8Array(0x100), memsz: 0x100 }]);
  assert.equal(loadLinux(mem, { kernel: k, cmdline: '', memBytes: MEM }).rip, 0x1000040);
});

test('bad ELF files are user errors', () => {
  const mem = GuestMemory.ofSize(MEM);
  const ok = fakeElf(0x1000000n, [{ vaddr: 0x1000000n, paddr: 0x1000000, data: new Uint8Array(0x100), memsz: 0x100 }]);
  const run = (k: Uint8Array): void => { loadLinux(mem, { kernel: k, cmdline: '', memBytes: MEM }); };
  assert.throws(() => run(ok.subarray(0, 40)), /truncated/);
  assert.throws(() => run(ok.subarray(0, 200)), /truncated/);
  const arm = ok.slice(); arm[18] = 183;
  assert.throws(() => run(arm), /not for x86-64/);
  assert.throws(() => run(fakeElf(0x1000000n, [{ vaddr: 0n, paddr: 0x1000000, data: new Uint8Array(4), memsz: 100 * MiB }])), /needs/);
  assert.throws(() => run(fakeElf(0x10n, [{ vaddr: 0n, paddr: 0x1000000, data: new Uint8Array(4), memsz: 4 }])), /entry point/);
  assert.throws(() => run(fakeElf(0x10n, [{ vaddr: 0n, paddr: 0x1000, data: new Uint8Array(4), memsz: 4 }])), /below 1 MiB/);
});
