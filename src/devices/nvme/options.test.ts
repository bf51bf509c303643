import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigTree } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import { nvmeLegacyConfig, parseNvmeOptions } from './options.js';

function legacy(opts: string): ConfigTree {
  const t = new ConfigTree();
  nvmeLegacyConfig({ set: (k, v) => t.set(`pci.0.4.0.${k}`, v) }, opts);
  return t;
}
const BDF = { bus: 0, slot: 4, func: 0 };
const parse = (opts: string, vm = 'vm1') => parseNvmeOptions(legacy(opts).node('pci.0.4.0')!, BDF, vm);

test('-s syntax: PATH or ram=MiB first, then bhyve\'s keys', () => {
  assert.deepEqual(legacy('/d.img,maxq=4,qsz=512,ioslots=16,sectsz=4096,ser=ABC,eui64=0x1234,dsm=disable,ro').dump(), [
    'pci.0.4.0.dsm=disable', 'pci.0.4.0.eui64=0x1234', 'pci.0.4.0.ioslots=16', 'pci.0.4.0.maxq=4', 'pci.0.4.0.path=/d.img',
    'pci.0.4.0.qsz=512', 'pci.0.4.0.ro=true', 'pci.0.4.0.sectsz=4096', 'pci.0.4.0.ser=ABC',
  ]);
  assert.deepEqual(legacy('ram=64').dump(), ['pci.0.4.0.ram=64']);
  assert.deepEqual(legacy('ram=64,maxq=2').dump(), ['pci.0.4.0.maxq=2', 'pci.0.4.0.ram=64']);
  assert.throws(() => legacy(',ro'), UserError);
});

test('bhyve\'s defaults; values checked with one line naming the key', () => {
  const o = parse('/d.img');
  assert.deepEqual([o.path, o.maxq, o.qsz, o.ioslots, o.sectorSize, o.serial, o.dsm, o.readonly], ['/d.img', 16, 2048, 8, 512, 'NVME-4-0', 'auto', false]);
  assert.equal(o.eui64 >> 40n, 0x589cfcn, 'the FreeBSD OUI');
  assert.equal(o.eui64 & 0xffffn, 1n, 'the NSID');
  assert.equal(parse('/d.img').eui64, o.eui64, 'stable');
  assert.deepEqual([o.format, parse('/d.qcow2,format=qcow2').format, parse('/d.img,format=raw').format], [undefined, 'qcow2', 'raw'], 'format: probed unless given');
  assert.notEqual(parse('/d.img', 'vm2').eui64, o.eui64, 'per VM');
  const p = parse('ram=64,maxq=4,qsz=512,sectsz=4096,ser=ABC,eui64=0x1234,dsm=enable,ro');
  assert.deepEqual([p.ramMiB, p.path, p.maxq, p.qsz, p.sectorSize, p.serial, p.eui64, p.dsm, p.readonly], [64, undefined, 4, 512, 4096, 'ABC', 0x1234n, 'enable', true]);
  for (const [bad, msg] of [
    ['/d.img,sectsz=100', /pci\.0\.4\.0\.sectsz: '100' is not 512 or 4096/],
    ['/d.img,maxq=0', /pci\.0\.4\.0\.maxq: '0' is not a number from 1 to 64/],
    ['/d.img,qsz=1', /qsz/],
    ['/d.img,dsm=maybe', /dsm: 'maybe' is not auto, enable or disable/],
    ['/d.img,ser=123456789012345678901', /ser/],
    ['/d.img,eui64=0x10000000000000000', /eui64/],
    ['ram=0', /ram/],
    ['ram=64,path=/d.img', /not both/],
    ['/d.img,format=vmdk', /pci\.0\.4\.0\.format: 'vmdk' is not raw or qcow2/],
    ['ram=64,format=qcow2', /format: a ram= disk has no image format/],
  ] as const) assert.throws(() => parse(bad), (e: Error) => e instanceof UserError && msg.test(e.message), bad);
});
