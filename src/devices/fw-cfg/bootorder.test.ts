import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseBhyveArgs } from '../../cli/args.js';
import { UserError } from '../../errors.js';
import { PciConfig } from '../../pci/config-space.js';
import { PCI_DEVICE, PCI_VENDOR } from '../nvme/identify.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { platformAcpiOptions } from '../../pci/acpi-options.js';
import { FwCfg, KEY } from './device.js';
import { fwCfgItems } from './items.js';
import { bootOrderFile, bootOrderPaths, pciFwDevPath } from './bootorder.js';

// The config spaces tshyve's devices have: virtio 1.0 blk (class 0x0180) and net, bhyve's NVMe.
const IDS: Record<string, ConstructorParameters<typeof PciConfig>[0]> = {
  'virtio-blk': { vendor: 0x1af4, device: 0x1042, classCode: 0x01, subclass: 0x80 },
  'virtio-net': { vendor: 0x1af4, device: 0x1041, classCode: 0x02, subclass: 0x00 },
  nvme: { vendor: PCI_VENDOR, device: PCI_DEVICE, classCode: 0x01, subclass: 0x08, progIf: 0x02 },
  'virtio-rnd': { vendor: 0x1af4, device: 0x1044, classCode: 0xff, subclass: 0x00 },
};

function paths(...argv: string[]): string[] {
  const config = parseBhyveArgs([...argv, 'vm']).config;
  return bootOrderPaths(config, (bus, slot, func) => {
    const dev = config.get(`pci.${bus}.${slot}.${func}.device`);
    return dev === undefined ? undefined : new PciConfig(IDS[dev]!);
  });
}

test("a function's OpenFirmware node is QEMU's: the class's firmware name or pciVVVV,DDDD, @slot[,func] in hex", () => {
  const cs = (classCode: number, subclass: number) => new PciConfig({ vendor: 0x1af4, device: 0x1001, classCode, subclass });
  assert.equal(pciFwDevPath(4, 0, cs(0x01, 0x00)), '/pci@i0cf8/scsi@4', "QEMU's virtio-blk (class SCSI)");
  assert.equal(pciFwDevPath(0x1f, 3, cs(0x02, 0x00)), '/pci@i0cf8/ethernet@1f,3');
  assert.equal(pciFwDevPath(10, 0, cs(0x01, 0x80)), '/pci@i0cf8/pci1af4,1001@a', 'no firmware name for class 0x0180');
  assert.equal(pciFwDevPath(6, 0, new PciConfig(IDS.nvme!)), '/pci@i0cf8/pcifb5d,0a0a@6', 'NVMe (0x0108) has none either: ids, zero-padded');
});

test('bootorder file: the paths one per line, the last NUL-terminated (QEMU\'s get_boot_devices_list)', () => {
  assert.deepEqual([...bootOrderFile(['/a', '/b/c'])], [...Buffer.from('/a\n/b/c\0', 'latin1')]);
  assert.deepEqual([...bootOrderFile(['/pci@i0cf8/ethernet@5/ethernet-phy@0'])], [...Buffer.from('/pci@i0cf8/ethernet@5/ethernet-phy@0\0', 'latin1')]);
});

test('bootindex orders virtio-blk, NVMe and virtio-net devices, lowest first, with QEMU\'s suffixes', () => {
  assert.deepEqual(paths(
    '-s', '0,hostbridge', '-s', '31,lpc',
    '-s', '4,virtio-blk,/d.img,ro,bootindex=2',
    '-s', '5,virtio-net,slirp,bootindex=0',
    '-s', '6:1,nvme,ram=64,bootindex=1',
    '-s', '7,virtio-blk,/other.img', // no bootindex: not listed
  ), [
    '/pci@i0cf8/ethernet@5/ethernet-phy@0',
    '/pci@i0cf8/pcifb5d,0a0a@6,1/namespace@1,0',
    '/pci@i0cf8/pci1af4,1042@4/disk@0,0',
  ]);
  assert.deepEqual(paths('-s', '4,virtio-blk,/d.img'), [], 'no bootindex: no file');
  // the config key works as the legacy option does
  assert.deepEqual(paths('-s', '4,virtio-blk,/d.img', '-o', 'pci.0.4.0.bootindex=7'), ['/pci@i0cf8/pci1af4,1042@4/disk@0,0']);
});

test('bad bootindex: one line naming the key', () => {
  const refused = (re: RegExp, ...argv: string[]) => assert.throws(() => paths(...argv), (e: unknown) => e instanceof UserError && re.test(e.message) && !e.message.includes('\n'));
  refused(/pci\.0\.4\.0\.bootindex: '-1' is not a boot index/, '-s', '4,virtio-blk,/d.img,bootindex=-1');
  refused(/'x' is not a boot index/, '-s', '4,virtio-blk,/d.img,bootindex=x');
  refused(/'2147483648' is not a boot index/, '-s', '4,virtio-blk,/d.img,bootindex=2147483648');
  refused(/pci\.0\.5\.0\.bootindex: bootindex 1 is already pci\.0\.4\.0\.bootindex's/, '-s', '4,virtio-blk,/d.img,bootindex=1', '-s', '5,virtio-net,slirp,bootindex=1');
  refused(/pci\.0\.3\.0\.bootindex: virtio-rnd cannot boot/, '-s', '3,virtio-rnd,bootindex=0');
});

test('the bootorder file is a fw_cfg file that a guest reads by name; absent without bootindex', () => {
  const machine = { memBytes: 64 << 20, cpus: 1, acpi: platformAcpiOptions(1, true),
    smbios: { memBytes: 64 << 20, sockets: 1, cores: 1, threads: 1, vmName: 'vm' } };
  assert.ok(!fwCfgItems(machine).files.some((f) => f.name === 'bootorder'));
  const items = fwCfgItems({ ...machine, bootOrder: ['/pci@i0cf8/ethernet@5/ethernet-phy@0', '/pci@i0cf8/pci1af4,1042@4/disk@0,0'] });
  const names = items.files.map((f) => f.name);
  assert.deepEqual(names, [...names].sort(), 'still sorted');
  const fw = new FwCfg(GuestMemory.ofSize(4096), items);
  fw.select(KEY.FILE_DIR);
  const dir = Buffer.from(Array.from({ length: 4 + 64 * names.length }, () => fw.readByte()));
  const i = names.indexOf('bootorder');
  const entry = dir.subarray(4 + 64 * i, 4 + 64 * (i + 1));
  const expect = Buffer.from('/pci@i0cf8/ethernet@5/ethernet-phy@0\n/pci@i0cf8/pci1af4,1042@4/disk@0,0\0', 'latin1');
  assert.equal(entry.readUInt32BE(0), expect.length);
  fw.select(entry.readUInt16BE(4));
  assert.deepEqual(Buffer.from(Array.from({ length: expect.length }, () => fw.readByte())), expect);
});
