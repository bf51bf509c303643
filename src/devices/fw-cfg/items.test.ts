import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest-memory.js';
import { platformAcpiOptions } from '../../pci/acpi-options.js';
import { PIIX4_PM_BASE } from '../../x86/acpi/index.js';
import { FADT } from '../../x86/acpi/tables.js';
import { SMBIOS3_ANCHOR_SIZE, SMBIOS_TYPES, smbiosUuid } from '../../x86/smbios.js';
import { FwCfg, KEY, type FwCfgItems } from './device.js';
import { E820_ENTRY_SIZE, fwCfgItems, type FwCfgMachine } from './items.js';
import { LOADER_CMD, LOADER_ENTRY_SIZE, LOADER_FILE_SIZE, LOADER_ZONE } from './table-loader.js';

const GiB = 2 ** 30;

function machine(over: Partial<FwCfgMachine> = {}): FwCfgMachine {
  return {
    memBytes: 4 * GiB, cpus: 2,
    acpi: platformAcpiOptions(2, true),
    smbios: { memBytes: 4 * GiB, sockets: 2, cores: 1, threads: 1, vmName: 'vm1', uuid: '12345678-9abc-def0-1122-334455667788' },
    ...over,
  };
}

const file = (items: FwCfgItems, name: string): Buffer => {
  const f = items.files.find((x) => x.name === name);
  assert.ok(f, `fw_cfg file ${name}`);
  return Buffer.from(f.data);
};
const sum8 = (b: Uint8Array): number => b.reduce((s, x) => (s + x) & 0xff, 0);
const cstr = (b: Buffer): string => b.toString('latin1').replace(/\0.*$/s, '');

/** OVMF's QemuFwCfgAcpi.c, in short: allocate, patch pointers, set checksums; then the tables the pointers lead to. */
function runLoader(items: FwCfgItems): { blobs: Map<string, { base: number; data: Buffer }>; installed: string[] } {
  const loader = file(items, 'etc/table-loader');
  assert.equal(loader.length % LOADER_ENTRY_SIZE, 0);
  const blobs = new Map<string, { base: number; data: Buffer }>();
  let next = 0x100000;
  const pointers: { file: string; offset: number; size: number }[] = [];
  for (let at = 0; at < loader.length; at += LOADER_ENTRY_SIZE) {
    const e = loader.subarray(at, at + LOADER_ENTRY_SIZE);
    const name = (off: number): string => {
      assert.equal(e[off + LOADER_FILE_SIZE - 1], 0, 'NUL-terminated name');
      return cstr(e.subarray(off, off + LOADER_FILE_SIZE));
    };
    const blob = (n: string) => { const b = blobs.get(n); assert.ok(b, `${n} allocated before use`); return b; };
    switch (e.readUInt32LE(0)) {
      case LOADER_CMD.ALLOCATE: {
        const n = name(4), align = e.readUInt32LE(4 + LOADER_FILE_SIZE), zone = e[8 + LOADER_FILE_SIZE]!;
        assert.ok(align > 0 && (align & (align - 1)) === 0 && align <= 4096, 'power-of-two alignment up to a page');
        assert.ok(zone === LOADER_ZONE.HIGH || zone === LOADER_ZONE.FSEG);
        assert.ok(!blobs.has(n), 'allocated once');
        next = Math.ceil(next / align) * align;
        blobs.set(n, { base: next, data: file(items, n) });
        next += 0x10000;
        break;
      }
      case LOADER_CMD.ADD_POINTER: {
        const dst = blob(name(4)), src = blob(name(4 + LOADER_FILE_SIZE));
        const offset = e.readUInt32LE(4 + 2 * LOADER_FILE_SIZE), size = e[8 + 2 * LOADER_FILE_SIZE]!;
        assert.ok([1, 2, 4, 8].includes(size) && offset + size <= dst.data.length, 'pointer inside its blob');
        const v = size === 8 ? Number(dst.data.readBigUInt64LE(offset)) : dst.data.readUIntLE(offset, size);
        assert.ok(v < src.data.length, 'pointer value inside the pointee');
        if (size === 8) dst.data.writeBigUInt64LE(BigInt(v + src.base), offset); else dst.data.writeUIntLE(v + src.base, offset, size);
        pointers.push({ file: name(4), offset, size });
        break;
      }
      case LOADER_CMD.ADD_CHECKSUM: {
        const b = blob(name(4));
        const res = e.readUInt32LE(4 + LOADER_FILE_SIZE), start = e.readUInt32LE(8 + LOADER_FILE_SIZE), len = e.readUInt32LE(12 + LOADER_FILE_SIZE);
        assert.ok(res < b.data.length && start + len <= b.data.length);
        b.data[res] = (0x100 - sum8(b.data.subarray(start, start + len))) & 0xff; // CalculateCheckSum8
        break;
      }
      default: assert.fail(`unknown loader command ${e.readUInt32LE(0)}`);
    }
  }
  // second pass: what each pointer points at is installed, RSDT and XSDT skipped (EDK2 makes its own)
  const tables = blobs.get('etc/acpi/tables')!;
  const installed: string[] = [];
  for (const p of pointers) {
    const b = blobs.get(p.file)!;
    const at = Number(p.size === 8 ? b.data.readBigUInt64LE(p.offset) : BigInt(b.data.readUIntLE(p.offset, p.size))) - tables.base;
    const t = tables.data.subarray(at);
    const sig = t.subarray(0, 4).toString('latin1');
    const len = t.readUInt32LE(4);
    assert.ok(len >= 36 || sig === 'FACS', `${sig} has a length`);
    if (sig !== 'FACS') assert.equal(sum8(t.subarray(0, len)), 0, `${sig} checksum`);
    if (sig !== 'RSDT' && sig !== 'XSDT' && !installed.includes(sig)) installed.push(sig);
  }
  return { blobs, installed };
}

test('table loader: OVMF\'s steps install FACS, DSDT, FADT and MADT with correct pointers and checksums', () => {
  const items = fwCfgItems(machine());
  const { blobs, installed } = runLoader(items);
  assert.deepEqual([...installed].sort(), ['APIC', 'DSDT', 'FACP', 'FACS']);
  const tables = blobs.get('etc/acpi/tables')!, rsdp = blobs.get('etc/acpi/rsdp')!;
  assert.equal(rsdp.data.subarray(0, 8).toString('latin1'), 'RSD PTR ');
  assert.equal(sum8(rsdp.data.subarray(0, 20)), 0);
  assert.equal(sum8(rsdp.data), 0);
  const xsdt = Number(rsdp.data.readBigUInt64LE(24)) - tables.base;
  assert.equal(tables.data.subarray(xsdt, xsdt + 4).toString('latin1'), 'XSDT');
  const fadt = Number(tables.data.readBigUInt64LE(xsdt + 36)) - tables.base;
  const f = tables.data.subarray(fadt);
  assert.equal(f.subarray(0, 4).toString('latin1'), 'FACP');
  assert.equal(f.readUInt32LE(FADT.PM1A_EVT_BLK), PIIX4_PM_BASE, 'the FADT says where the firmware puts the PM blocks');
  assert.equal(f.readUInt32LE(FADT.PM_TMR_BLK), PIIX4_PM_BASE + 8);
  const dsdt = f.readUInt32LE(FADT.DSDT) - tables.base;
  assert.equal(Number(f.readBigUInt64LE(FADT.X_DSDT)) - tables.base, dsdt);
  assert.equal(tables.data.subarray(dsdt, dsdt + 4).toString('latin1'), 'DSDT');
  assert.equal(tables.data.subarray(f.readUInt32LE(FADT.FIRMWARE_CTRL) - tables.base).subarray(0, 4).toString('latin1'), 'FACS');
  assert.equal((f.readUInt32LE(FADT.FIRMWARE_CTRL) % 64), 0, 'FACS 64-byte aligned');
  // the blobs as served hold 0 in every checksum byte (OVMF sets, not adds)
  assert.equal(file(items, 'etc/acpi/rsdp')[8], 0);
});

test('fw_cfg items: signature, DMA feature, RAM, CPUs, e820, system states, no 64-bit aperture, sorted files', () => {
  const items = fwCfgItems(machine());
  const k = (key: number) => Buffer.from(items.keyed.get(key)!);
  assert.equal(k(KEY.SIGNATURE).toString('latin1'), 'QEMU');
  assert.equal(k(KEY.ID).readUInt32LE(0), 3);
  assert.equal(k(KEY.RAM_SIZE).readBigUInt64LE(0), BigInt(4 * GiB));
  assert.equal(k(KEY.NB_CPUS).readUInt16LE(0), 2);
  assert.equal(k(KEY.MAX_CPUS).readUInt16LE(0), 2);
  assert.equal(k(KEY.UUID).toString('hex'), '123456789abcdef01122334455667788');
  assert.ok(!items.keyed.has(KEY.KERNEL_SIZE), 'no kernel items without boot.kernel');
  const e820 = file(items, 'etc/e820');
  const entries = Array.from({ length: e820.length / E820_ENTRY_SIZE }, (_, i) => [
    Number(e820.readBigUInt64LE(i * 20)), Number(e820.readBigUInt64LE(i * 20 + 8)), e820.readUInt32LE(i * 20 + 16)]);
  assert.deepEqual(entries, [[0, 3 * GiB, 1], [4 * GiB, GiB, 1], [0xfeffc000, 0x4000, 2]]);
  assert.deepEqual([...file(items, 'etc/system-states')], [0, 0, 0, 1, 2, 0], 'S3 and S4 not offered');
  assert.equal(file(items, 'opt/ovmf/X-PciMmio64Mb').toString(), '0');
  const names = items.files.map((f) => f.name);
  assert.deepEqual(names, [...names].sort());
  // The device takes them as they are (names fit, none twice)
  const fw = new FwCfg(GuestMemory.ofSize(4096), items);
  fw.select(KEY.SIGNATURE);
  assert.equal(fw.readByte(), 'Q'.charCodeAt(0));
});

test('fw_cfg kernel items: a bzImage split into setup and kernel, the initrd, the command line with its NUL', () => {
  const k = Buffer.alloc(0x3000, 0x90);
  k[0x1f1] = 3; // setup sectors: (3 + 1) * 512 bytes of setup
  k.write('HdrS', 0x202, 'latin1');
  const items = fwCfgItems(machine({ linux: { kernel: k, initrd: Buffer.from('initrd!'), cmdline: 'console=ttyS0' } }));
  const g = (key: number) => Buffer.from(items.keyed.get(key)!);
  assert.equal(g(KEY.SETUP_SIZE).readUInt32LE(0), 2048);
  assert.deepEqual(g(KEY.SETUP_DATA), k.subarray(0, 2048));
  assert.equal(g(KEY.KERNEL_SIZE).readUInt32LE(0), 0x3000 - 2048);
  assert.deepEqual(g(KEY.KERNEL_DATA), k.subarray(2048));
  assert.equal(g(KEY.INITRD_SIZE).readUInt32LE(0), 7);
  assert.equal(g(KEY.INITRD_DATA).toString(), 'initrd!');
  assert.equal(g(KEY.CMDLINE_SIZE).readUInt32LE(0), 14);
  assert.equal(g(KEY.CMDLINE_DATA).toString('latin1'), 'console=ttyS0\0');
  // anything else (an EFI application, say) is handed over whole
  const other = fwCfgItems(machine({ linux: { kernel: Buffer.from('MZ....'), cmdline: '' } }));
  assert.equal(Buffer.from(other.keyed.get(KEY.SETUP_SIZE)!).readUInt32LE(0), 0);
  assert.equal(Buffer.from(other.keyed.get(KEY.KERNEL_DATA)!).toString(), 'MZ....');
});

test('SMBIOS: a 3.0 anchor OVMF accepts, and types 0, 1, 3, 4 (per socket), 16, 17, 19 (per RAM region), 32, 127', () => {
  const items = fwCfgItems(machine());
  const tables = file(items, 'etc/smbios/smbios-tables');
  const anchor = file(items, 'etc/smbios/smbios-anchor');
  assert.equal(anchor.length, SMBIOS3_ANCHOR_SIZE);
  assert.equal(anchor.subarray(0, 5).toString('latin1'), '_SM3_');
  assert.equal(anchor[7], 3);
  assert.equal(anchor.readUInt32LE(0x0c), tables.length, 'maximum size is the table\'s size (DetectSmbiosVersionLib)');
  assert.equal(sum8(anchor), 0);
  const types: number[] = [];
  const handles = new Set<number>();
  let sys: Buffer | undefined;
  for (let at = 0; at < tables.length;) {
    const type = tables[at]!, len = tables[at + 1]!;
    assert.ok(len >= 4 && at + len <= tables.length);
    const handle = tables.readUInt16LE(at + 2);
    assert.ok(!handles.has(handle), 'unique handles');
    handles.add(handle);
    if (type === 1) sys = tables.subarray(at, at + len);
    types.push(type);
    let end = at + len; // strings: NUL-terminated, the set ends with another NUL
    while (!(tables[end] === 0 && tables[end + 1] === 0)) end++;
    at = end + 2;
    if (type === 127) { assert.equal(at, tables.length, '127 ends the table'); break; }
  }
  assert.deepEqual(types, [0, 1, 3, 4, 4, 16, 17, 19, 19, 32, 127]);
  assert.deepEqual([...new Set(types)], [...SMBIOS_TYPES]);
  // the UUID's first three fields little-endian
  assert.equal(sys!.subarray(8, 24).toString('hex'), '78563412bc9af0de1122334455667788');
  // without -U: bhyve's MD5-based version-3 UUID, stable for a name
  const u = smbiosUuid({ vmName: 'vm1' });
  assert.equal(u[6]! >> 4, 3);
  assert.deepEqual(u, smbiosUuid({ vmName: 'vm1' }));
  assert.notDeepEqual(u, smbiosUuid({ vmName: 'vm2' }));
});
