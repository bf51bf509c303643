import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest-memory.js';
import { ACPI_TABLES_ADDR, ACPI_TABLES_SIZE, IOAPIC_ADDR, LAPIC_ADDR, MiB } from '../layout.js';
import {
  FADT, FADT_F_RESET_REG_SUP, FADT_F_TMR_VAL_EXT, IAPC_8042, IAPC_CMOS_RTC_NOT_PRESENT, IAPC_VGA_NOT_PRESENT,
  buildAcpiTables, buildMadt,
} from './tables.js';
import { PM1A_CNT, PM1A_EVT, PM_TMR, RESET_PORT } from './pm-ports.js';
import { s5Aml } from './dsdt.js';

const sum = (b: Uint8Array): number => b.reduce((a, x) => (a + x) & 0xff, 0);
const sig = (mem: GuestMemory, a: number, n = 4): string => String.fromCharCode(...mem.read(a, n));

interface Tables { mem: GuestMemory; rsdp: number; byName: Map<string, number> }

function build(cpus: number): Tables {
  const mem = GuestMemory.ofSize(4 * MiB);
  const rsdp = buildAcpiTables(mem, { cpus, ioapicAddr: IOAPIC_ADDR, lapicAddr: LAPIC_ADDR });
  const byName = new Map<string, number>();
  const xsdt = Number(mem.readU64(rsdp + 24));
  const n = (mem.readU32(xsdt + 4) - 36) / 8;
  for (let i = 0; i < n; i++) {
    const a = Number(mem.readU64(xsdt + 36 + 8 * i));
    byName.set(sig(mem, a), a);
  }
  byName.set('XSDT', xsdt);
  byName.set('RSDT', mem.readU32(rsdp + 16));
  const fadt = byName.get('FACP')!;
  byName.set('DSDT', mem.readU32(fadt + FADT.DSDT));
  byName.set('FACS', mem.readU32(fadt + FADT.FIRMWARE_CTRL));
  return { mem, rsdp, byName };
}

test('RSDP: signature, 16-byte aligned in the legacy scan area, both checksums', () => {
  const { mem, rsdp } = build(2);
  assert.equal(sig(mem, rsdp, 8), 'RSD PTR ');
  assert.equal(rsdp % 16, 0);
  assert.ok(rsdp >= 0xe0000 && rsdp + 36 <= 0x100000);
  assert.equal(mem.readU8(rsdp + 15), 2);
  assert.equal(mem.readU32(rsdp + 20), 36);
  assert.equal(sum(mem.read(rsdp, 20)), 0);
  assert.equal(sum(mem.read(rsdp, 36)), 0);
  assert.equal(sig(mem, rsdp + 9, 6), 'TSHYVE');
  // the legacy scan (every 16 bytes from 0xE0000) finds it first
  for (let a = 0xe0000; a < rsdp; a += 16) assert.notEqual(sig(mem, a, 8), 'RSD PTR ');
});

test('every table is inside the ACPI region and checksums to 0', () => {
  const { mem, byName } = build(4);
  assert.deepEqual([...byName.keys()].sort(), ['APIC', 'DSDT', 'FACP', 'FACS', 'RSDT', 'XSDT']);
  for (const [name, a] of byName) {
    const len = mem.readU32(a + 4);
    assert.ok(a >= ACPI_TABLES_ADDR && a + len <= ACPI_TABLES_ADDR + ACPI_TABLES_SIZE, name);
    assert.equal(sig(mem, a), name);
    if (name !== 'FACS') assert.equal(sum(mem.read(a, len)), 0, `${name} checksum`);
  }
  assert.equal(byName.get('FACS')! % 64, 0);
  assert.equal(mem.readU32(byName.get('FACS')! + 4), 64);
  // RSDT lists the same tables as the XSDT
  const rsdt = byName.get('RSDT')!;
  assert.deepEqual([mem.readU32(rsdt + 36), mem.readU32(rsdt + 40)], [byName.get('FACP'), byName.get('APIC')]);
});

test('FADT fields at their ACPI 6 offsets', () => {
  const { mem, byName } = build(1);
  const f = byName.get('FACP')!;
  assert.equal(mem.readU32(f + 4), 276);
  assert.equal(mem.readU8(f + 8), 6);
  assert.equal(mem.readU32(f + 36), byName.get('FACS'));
  assert.equal(mem.readU32(f + 40), byName.get('DSDT'));
  assert.equal(mem.readU16(f + 46), 9); // SCI_INT
  assert.equal(mem.readU32(f + 48), 0); // SMI_CMD
  assert.equal(mem.readU32(f + 56), PM1A_EVT);
  assert.equal(mem.readU32(f + 64), PM1A_CNT);
  assert.equal(mem.readU32(f + 76), PM_TMR);
  assert.deepEqual([...mem.read(f + 88, 4)], [4, 2, 0, 4]); // PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
  const boot = mem.readU16(f + 109);
  assert.equal(boot & IAPC_8042, 0);
  assert.equal(boot & IAPC_VGA_NOT_PRESENT, IAPC_VGA_NOT_PRESENT);
  assert.equal(boot & IAPC_CMOS_RTC_NOT_PRESENT, 0);
  const flags = mem.readU32(f + 112);
  assert.ok(flags & FADT_F_RESET_REG_SUP);
  assert.ok(flags & FADT_F_TMR_VAL_EXT);
  assert.equal(flags & (1 << 20), 0); // not HW_REDUCED_ACPI
  assert.equal(flags & (1 << 4), 0); // fixed-feature power button
  // RESET_REG: SystemIO, 8 bits, byte access, 0xCF9; RESET_VALUE 6
  assert.deepEqual([...mem.read(f + 116, 4)], [1, 8, 0, 1]);
  assert.equal(mem.readU64(f + 120), BigInt(RESET_PORT));
  assert.equal(mem.readU8(f + 128), 6);
  assert.equal(mem.readU64(f + 132), 0n); // X_FIRMWARE_CTRL: FACS is below 4 GiB, given once
  assert.equal(mem.readU64(f + 140), BigInt(byName.get('DSDT')!));
  const gas = (off: number): [number, number, bigint] => [mem.readU8(f + off), mem.readU8(f + off + 1), mem.readU64(f + off + 4)];
  assert.deepEqual(gas(148), [1, 32, BigInt(PM1A_EVT)]);
  assert.deepEqual(gas(172), [1, 16, BigInt(PM1A_CNT)]);
  assert.deepEqual(gas(208), [1, 32, BigInt(PM_TMR)]);
  assert.equal(mem.readU64(f + 160), 0n); // no PM1b
});

test('DSDT starts with the _S5 package', () => {
  const { mem, byName } = build(1);
  const d = byName.get('DSDT')!;
  assert.equal(mem.readU8(d + 8), 2);
  assert.deepEqual([...mem.read(d + 36, s5Aml().length)], s5Aml());
});

test('MADT: one enabled LAPIC per CPU, IOAPIC, overrides, NMI', () => {
  for (const cpus of [1, 8, 255]) {
    const { mem, byName } = build(cpus);
    const m = byName.get('APIC')!;
    const len = mem.readU32(m + 4);
    assert.equal(mem.readU32(m + 36), LAPIC_ADDR);
    assert.equal(mem.readU32(m + 40) & 1, 1);
    const lapics: number[] = [];
    const isos: [number, number, number][] = [];
    let ioapic: [number, number, number] | undefined;
    let nmi: [number, number] | undefined;
    for (let p = m + 44; p < m + len;) {
      const type = mem.readU8(p);
      const l = mem.readU8(p + 1);
      assert.ok(l > 0);
      if (type === 0) {
        assert.equal(mem.readU8(p + 2), mem.readU8(p + 3));
        assert.equal(mem.readU32(p + 4), 1);
        lapics.push(mem.readU8(p + 3));
      } else if (type === 1) ioapic = [mem.readU8(p + 2), mem.readU32(p + 4), mem.readU32(p + 8)];
      else if (type === 2) isos.push([mem.readU8(p + 3), mem.readU32(p + 4), mem.readU16(p + 8)]);
      else if (type === 4) nmi = [mem.readU8(p + 2), mem.readU8(p + 5)];
      p += l;
    }
    assert.deepEqual(lapics, [...Array(cpus).keys()]);
    assert.deepEqual(ioapic, [0, IOAPIC_ADDR, 0]);
    assert.deepEqual(isos, [[0, 2, 0x5], [9, 9, 0xd]]);
    assert.deepEqual(nmi, [0xff, 1]);
  }
  assert.throws(() => buildMadt('X', { cpus: 256, ioapicId: 0, ioapicAddr: 0, lapicAddr: 0 }));
  assert.throws(() => buildMadt('X', { cpus: 0, ioapicId: 0, ioapicAddr: 0, lapicAddr: 0 }));
});
