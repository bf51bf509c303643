import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigTree } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import { BlockIoError, FileBlockBackend } from '../block/index.js';
import { parseSectorSize, parseVirtioBlkOptions, virtioBlkLegacyConfig } from './index.js';
import { makeImage } from './testing.js';

function legacy(opts: string): ConfigTree {
  const t = new ConfigTree();
  virtioBlkLegacyConfig({ set: (k, v) => t.set(`pci.0.4.0.${k}`, v) }, opts);
  return t;
}

test('legacy -s syntax: path first, bare flags, key=value', () => {
  const t = legacy('/images/disk.img,ro,sectorsize=512/4096,nocache,direct,nodelete,ser=ABC123');
  assert.deepEqual(t.dump(), [
    'pci.0.4.0.direct=true', 'pci.0.4.0.nocache=true', 'pci.0.4.0.nodelete=true', 'pci.0.4.0.path=/images/disk.img',
    'pci.0.4.0.ro=true', 'pci.0.4.0.sectorsize=512/4096', 'pci.0.4.0.ser=ABC123',
  ]);
  const o = parseVirtioBlkOptions(t.node('pci.0.4.0')!);
  assert.deepEqual(o, {
    path: '/images/disk.img', readonly: true, nodelete: true, nocache: true, direct: true,
    sectorSize: 512, physicalSectorSize: 4096, serial: 'ABC123',
  });
  assert.deepEqual(parseVirtioBlkOptions(legacy('/d.img').node('pci.0.4.0')!), { path: '/d.img' });
  assert.throws(() => legacy(',ro'), UserError);
});

test('config keys are validated with one-line UserErrors', () => {
  const node = (kv: Record<string, string>) => {
    const t = new ConfigTree();
    for (const [k, v] of Object.entries(kv)) t.set(`pci.0.5.0.${k}`, v);
    return t.node('pci.0.5.0')!;
  };
  assert.throws(() => parseVirtioBlkOptions(node({ ro: 'true' })), /no backing file \(set pci\.0\.5\.0\.path\)/);
  assert.throws(() => parseVirtioBlkOptions(node({ path: '/x', ro: 'maybe' })), /pci\.0\.5\.0\.ro: 'maybe' is not a boolean/);
  assert.throws(() => parseVirtioBlkOptions(node({ path: '/x', sectorsize: '1000' })), UserError);
  assert.throws(() => parseVirtioBlkOptions(node({ path: '/x', sectorsize: '4096/512' })), UserError);
  assert.throws(() => parseVirtioBlkOptions(node({ path: '/x', ser: 'x'.repeat(21) })), /longer than 20 bytes/);
  assert.equal(parseVirtioBlkOptions(node({ path: '/x', sync: 'yes' })).direct, true);
  assert.equal(parseVirtioBlkOptions(node({ path: '/x', queuesize: '1024' })).queueSize, 1024);
  for (const q of ['1000', '2048', '2', 'big', '']) {
    assert.throws(() => parseVirtioBlkOptions(node({ path: '/x', queuesize: q })), /pci\.0\.5\.0\.queuesize: .* is not a power of two between 4 and 1024/);
  }
  assert.equal(parseVirtioBlkOptions(node({ path: '/x', format: 'qcow2' })).format, 'qcow2');
  assert.equal(parseVirtioBlkOptions(node({ path: '/x', format: 'raw' })).format, 'raw');
  assert.throws(() => parseVirtioBlkOptions(node({ path: '/x', format: 'vmdk' })), /pci\.0\.5\.0\.format: 'vmdk' is not raw or qcow2/);
  assert.deepEqual(parseSectorSize('4096'), { logical: 4096, physical: 4096 });
  assert.throws(() => parseSectorSize('512/'), UserError);
});

test('backend open errors name the path; I/O past the end is a BlockIoError', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-vblk-'));
  try {
    assert.throws(() => FileBlockBackend.open({ path: join(dir, 'nope') }), (e: unknown) =>
      e instanceof UserError && /cannot open '.*nope': no such file or directory/.test(e.message) && !e.message.includes('\n'));
    assert.throws(() => FileBlockBackend.open({ path: dir }), (e: unknown) => e instanceof UserError && e.message.includes(dir));
    assert.throws(() => FileBlockBackend.open({ path: dir, readonly: true }), /not a regular file or block device/);
    assert.throws(() => FileBlockBackend.open({ path: '/dev/null', readonly: true }), /'\/dev\/null' is not a regular file or block device/);
    assert.throws(() => FileBlockBackend.open({ path: '' }), UserError);
  } finally { rmSync(dir, { recursive: true, force: true }); }

  const img = makeImage(4096);
  const b = FileBlockBackend.open({ path: img.path, nocache: true, direct: true });
  try {
    assert.equal(b.size, 4096);
    assert.throws(() => b.read(new Uint8Array(1024), 3584), BlockIoError);
    const buf = new Uint8Array(512).fill(7);
    b.write(buf, 512);
    const back = new Uint8Array(512);
    b.read(back, 512);
    assert.deepEqual(back, buf);
    b.writeZeroes(512, 512, false);
    b.read(back, 512);
    assert.ok(back.every((x) => x === 0));
    b.flush();
  } finally { b.close(); rmSync(img.dir, { recursive: true, force: true }); }
  const img2 = makeImage(1024);
  const ro = FileBlockBackend.open({ path: img2.path, readonly: true });
  try {
    assert.throws(() => ro.write(new Uint8Array(512), 0), BlockIoError);
  } finally { ro.close(); rmSync(img2.dir, { recursive: true, force: true }); }
});
