import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildsBeforeStorage, configKeyRules } from './snapshot.js';
import { parseBhyveArgs } from '../cli/args.js';
import { guestVisibleConfig } from '../snapshot/config-match.js';
import '../devices/all.js';

/** The keys a restore ignored and the host paths before the devices declared them (snapshot/config-match.ts's lists). */
const BEFORE_IGNORED = [
  /^name$/, /^boot\./, /^control\./, /^debug\./, /^config\./, /^snapshot\./, /^kvm\.device$/,
  /^x86\.(halt_check_ms|posted_writes|shadow_regs|allow_emulated_kvm)$/, /^virtio\.(ioeventfd|irqfd|workers)$/,
  /^rtc\.use_localtime$/,
];
const BEFORE_PATHS = [/^lpc\.com\d\.path$/, /^pci\.\d+\.\d+\.\d+\.path$/, /^pci\.\d+\.\d+\.\d+\.port\.\d+\.path$/];

test('the keys a restore ignores or treats as host paths come from the VM and the registries, as before', () => {
  const config: [string, string][] = [
    ['name', 'vm'], ['boot.kernel', '/k'], ['boot.raw.address', '0x1000'], ['control.path', '/s'], ['debug.stats', '1'],
    ['config.dump', '0'], ['snapshot.verify_ram', 'true'], ['kvm.device', '/dev/kvm'], ['x86.halt_check_ms', '0'],
    ['x86.posted_writes', 'true'], ['x86.shadow_regs', 'true'], ['x86.allow_emulated_kvm', 'true'], ['x86.strictmsr', 'true'],
    ['virtio.ioeventfd', 'true'], ['virtio.irqfd', 'true'], ['virtio.workers', 'true'], ['rtc.use_localtime', 'false'],
    ['cpus', '2'], ['memory.size', '512M'], ['memory.hugepages', 'false'],
    ['lpc.com1.path', 'stdio'], ['lpc.com2.path', '/dev/x'], ['lpc.com3.path', 'tcp=1'], ['lpc.com4.path', 'unix=/u'],
    ['pci.0.0.0.device', 'hostbridge'], ['pci.0.31.0.device', 'lpc'], ['pci.0.2.0.device', 'virtio-rnd'],
    ['pci.0.2.0.virtio.transitional', 'true'],
    ['pci.0.3.0.device', 'virtio-blk'], ['pci.0.3.0.path', '/d.img'], ['pci.0.3.0.ro', 'true'], ['pci.0.3.0.worker', 'false'],
    ['pci.1.4.2.device', 'virtio-blk'], ['pci.1.4.2.path', '/e.img'],
    ['pci.0.5.0.device', 'virtio-console'], ['pci.0.5.0.port.0.name', 'console'], ['pci.0.5.0.port.0.path', '/a.sock'],
    ['pci.0.5.0.port.12.name', 'b'], ['pci.0.5.0.port.12.path', '/b.sock'],
  ];
  const before = new Map<string, string>();
  for (const [k, v] of config) {
    if (BEFORE_IGNORED.some((re) => re.test(k))) continue;
    before.set(k, BEFORE_PATHS.some((re) => re.test(k)) ? '(a path)' : v);
  }
  assert.deepEqual(guestVisibleConfig(config, configKeyRules(config)), before);
});

test('an incoming VM is built before its source lets go of the disks only when every PCI host path waits for the storage gate', () => {
  const built = (...argv: string[]) => buildsBeforeStorage(parseBhyveArgs(['-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio', ...argv, 'vm']).config);
  assert.equal(built(), true, 'no disk');
  assert.equal(built('-s', '3,virtio-blk,/d.img', '-s', '4,virtio-blk,/e.img,ro', '-s', '5,virtio-rnd'), true, 'virtio-blk on I/O threads');
  assert.equal(built('-s', '3,virtio-blk,/d.img', '-s', '4,virtio-blk,/e.img,worker=false'), false, 'a disk served on the main thread');
  assert.equal(built('-s', '3,virtio-blk,/d.img', '-o', 'virtio.workers=false'), false, 'no I/O threads');
  assert.equal(built('-s', '3,virtio-blk,/d.img', '-o', 'virtio.ioeventfd=false'), false, 'no ioeventfds: no I/O threads');
  assert.equal(built('-s', '3,nvme,/d.img'), false, 'NVMe opens its disk on the main thread');
  assert.equal(built('-s', '3,virtio-console,console=/c.sock'), false, 'a PCI device with host paths that does not wait');
});
