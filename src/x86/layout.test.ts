import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ACPI_TABLES_ADDR, ACPI_TABLES_SIZE, BOOT_STACK_TOP, CMDLINE_ADDR, CMDLINE_MAX, E820_RAM, E820_RESERVED, EBDA_START,
  GDT_ADDR, GDT_SIZE, GiB, IDT_ADDR, IDT_SIZE, IOAPIC_ADDR, LAPIC_ADDR, MiB, PCI_MMIO32_BASE, PCI_MMIO32_END, PD_ADDR,
  PML4_ADDR, PDPT_ADDR, ZERO_PAGE_ADDR, e820Map, guestRamLayout,
} from './layout.js';
import { UserError } from '../errors.js';

test('small guests have one RAM region from 0', () => {
  assert.deepEqual(guestRamLayout(256 * MiB), [{ gpa: 0, size: 256 * MiB }]);
  assert.deepEqual(guestRamLayout(3 * GiB), [{ gpa: 0, size: 3 * GiB }]);
});

test('RAM past 3 GiB moves above 4 GiB', () => {
  assert.deepEqual(guestRamLayout(8 * GiB), [{ gpa: 0, size: 3 * GiB }, { gpa: 4 * GiB, size: 5 * GiB }]);
});

test('bad sizes are user errors', () => {
  assert.throws(() => guestRamLayout(1 * MiB), UserError);
  assert.throws(() => guestRamLayout(256 * MiB + 1), UserError);
});

test('e820 map: low RAM, EBDA/BIOS hole, high RAM, APICs, RAM above 4G', () => {
  const m = e820Map(8 * GiB);
  assert.deepEqual(m, [
    { addr: 0, size: 0x9fc00, type: E820_RAM },
    { addr: 0x9fc00, size: 0x100000 - 0x9fc00, type: E820_RESERVED },
    { addr: 0x100000, size: 3 * GiB - 0x100000, type: E820_RAM },
    { addr: IOAPIC_ADDR, size: 0x1000, type: E820_RESERVED },
    { addr: LAPIC_ADDR, size: 0x1000, type: E820_RESERVED },
    { addr: 4 * GiB, size: 5 * GiB, type: E820_RAM },
  ]);
  assert.equal(e820Map(128 * MiB).length, 5);
  // entries are sorted and disjoint
  for (let i = 1; i < m.length; i++) assert.ok(m[i - 1]!.addr + m[i - 1]!.size <= m[i]!.addr);
});

test('fixed boot structures do not overlap and stay in low RAM', () => {
  const areas: [string, number, number][] = [
    ['gdt', GDT_ADDR, GDT_SIZE], ['idt', IDT_ADDR, IDT_SIZE], ['zero page', ZERO_PAGE_ADDR, 0x1000],
    ['stack', 0x8000, BOOT_STACK_TOP - 0x8000 + 16], ['pml4', PML4_ADDR, 0x1000], ['pdpt', PDPT_ADDR, 0x1000],
    ['pds', PD_ADDR, 4 * 0x1000], ['cmdline', CMDLINE_ADDR, CMDLINE_MAX],
  ];
  areas.sort((a, b) => a[1] - b[1]);
  for (let i = 1; i < areas.length; i++) {
    const [pn, pa, pl] = areas[i - 1]!;
    assert.ok(pa + pl <= areas[i]![1], `${pn} overlaps ${areas[i]![0]}`);
  }
  assert.ok(areas.at(-1)![1] + areas.at(-1)![2] <= EBDA_START);
  assert.ok(ACPI_TABLES_ADDR >= 0xe0000 && ACPI_TABLES_ADDR + ACPI_TABLES_SIZE <= 0x100000);
  assert.ok(PCI_MMIO32_BASE === 3 * GiB && PCI_MMIO32_END === IOAPIC_ADDR);
});
