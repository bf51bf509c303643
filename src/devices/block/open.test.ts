/**
 * Opening images: the format probe, `format=raw` never probing, features
 * the qcow2 backend does not implement refused in one line naming them,
 * and backing chains that loop or go too deep.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { UserError } from '../../errors.js';
import { FileBlockBackend, MAX_CHAIN, openImage } from './index.js';
import { Qcow2Backend } from './qcow2/image.js';
import { qemuImg, scratchDir, skipNoQemu } from './qcow2/testing.js';
import { VirtioBlk } from '../virtio-blk/device.js';

function refusal(f: () => unknown): string {
  try {
    const b = f() as { close(): void };
    b.close();
  } catch (e) {
    assert.ok(e instanceof UserError, `a UserError, not ${String(e)}`);
    assert.ok(!e.message.includes('\n'), 'one line');
    return e.message;
  }
  assert.fail('opened');
}

test('the format is probed; format=raw never looks at the header', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const q = s.path('a.qcow2');
    assert.equal(qemuImg('create', '-f', 'qcow2', q, '1M').status, 0);
    const probed = openImage({ path: q });
    assert.ok(probed instanceof Qcow2Backend);
    assert.equal(probed.size, 1 << 20);
    probed.close();
    const raw = openImage({ path: q, format: 'raw' });
    assert.ok(raw instanceof FileBlockBackend);
    assert.equal(raw.size, readFileSync(q).length);
    raw.close();
    // a raw disk whose guest wrote qcow2's magic at its start
    const fake = s.path('fake.raw');
    writeFileSync(fake, Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), Buffer.alloc(65532, 7)]));
    assert.ok(openImage({ path: fake, format: 'raw' }) instanceof FileBlockBackend);
    assert.match(refusal(() => openImage({ path: fake })), /fake\.raw: (invalid qcow2 image|qcow2 version)/);
    assert.match(refusal(() => openImage({ path: fake, format: 'qcow2' })), /fake\.raw/);
    const plain = s.path('plain.raw');
    writeFileSync(plain, Buffer.alloc(4096));
    assert.match(refusal(() => openImage({ path: plain, format: 'qcow2' })), /not a qcow2 image/);
  } finally {
    s.done();
  }
});

test('features tshyve does not implement are refused in one line naming them', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const cases: [string, (h: Buffer) => void, RegExp][] = [
      ['data file', (h) => h.writeBigUInt64BE(4n, 72), /feature not supported: external data file/],
      ['extended L2', (h) => h.writeBigUInt64BE(16n, 72), /feature not supported: extended L2 entries/],
      ['zstd', (h) => { h.writeBigUInt64BE(8n, 72); h.writeUInt8(1, 104); }, /feature not supported: zstd compression/],
      ['encryption', (h) => h.writeUInt32BE(2, 32), /feature not supported: encryption/],
      ['unknown', (h) => h.writeBigUInt64BE(1n << 40n, 72), /feature not supported: incompatible feature bits/],
    ];
    for (const [name, patch, re] of cases) {
      const q = s.path(`${name}.qcow2`);
      assert.equal(qemuImg('create', '-f', 'qcow2', q, '1M').status, 0);
      const b = readFileSync(q);
      patch(b);
      writeFileSync(q, b);
      assert.match(refusal(() => openImage({ path: q })), re, name);
    }
  } finally {
    s.done();
  }
});

test('backing chains that loop or go deeper than the limit are refused', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    assert.equal(qemuImg('create', '-f', 'qcow2', s.path('a.qcow2'), '1M').status, 0);
    assert.equal(qemuImg('create', '-f', 'qcow2', '-u', '-b', 'a.qcow2', '-F', 'qcow2', s.path('b.qcow2'), '1M').status, 0);
    assert.equal(qemuImg('rebase', '-u', '-b', 'b.qcow2', '-F', 'qcow2', s.path('a.qcow2')).status, 0);
    assert.match(refusal(() => openImage({ path: s.path('b.qcow2') })), /backing chain loops/);
    assert.equal(qemuImg('create', '-f', 'raw', s.path('l0'), '1M').status, 0);
    for (let i = 1; i <= MAX_CHAIN + 1; i++) {
      assert.equal(qemuImg('create', '-f', 'qcow2', '-u', '-b', `l${i - 1}`, '-F', i === 1 ? 'raw' : 'qcow2', s.path(`l${i}`), '1M').status, 0);
    }
    const deepest = openImage({ path: s.path(`l${MAX_CHAIN}`), readonly: true });
    assert.ok(deepest instanceof Qcow2Backend);
    deepest.close();
    assert.match(refusal(() => openImage({ path: s.path(`l${MAX_CHAIN + 1}`) })), /deeper than/);
    assert.match(refusal(() => openImage({ path: s.path('nope'), format: 'qcow2' })), /nope/);
  } finally {
    s.done();
  }
});

test('virtio-blk serves a qcow2 disk; a passive instance beside the I/O thread\'s writes nothing', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const q = s.path('v.qcow2');
    assert.equal(qemuImg('create', '-f', 'qcow2', q, '2M').status, 0);
    const before = readFileSync(q);
    const passive = new VirtioBlk({ path: q, passive: true });
    assert.equal(passive.capacitySectors, 4096n);
    assert.equal(passive.readonly, false);
    assert.throws(() => passive.backend.write(Buffer.alloc(512), 0), /EROFS/);
    passive.syncForSave();
    passive.destroy();
    assert.ok(readFileSync(q).equals(before));
    const dev = new VirtioBlk({ path: q, format: 'qcow2' });
    dev.backend.write(Buffer.alloc(512, 9), 4096);
    dev.destroy();
    assert.equal(qemuImg('check', q).status, 0);
  } finally {
    s.done();
  }
});

test('internal snapshots through the BlockBackend interface', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const q = s.path('snap.qcow2');
    assert.equal(qemuImg('create', '-f', 'qcow2', '-o', 'cluster_size=4k', q, '1M').status, 0);
    const img = openImage({ path: q });
    img.write(Buffer.alloc(8192, 1), 0);
    img.snapshots!.create('one');
    img.write(Buffer.alloc(8192, 2), 4096);
    assert.deepEqual(img.snapshots!.list(), ['one']);
    assert.throws(() => img.snapshots!.create('one'), /EEXIST/);
    img.snapshots!.apply('one');
    const b = Buffer.alloc(12288);
    img.read(b, 0);
    assert.ok(b.subarray(0, 8192).every((x) => x === 1) && b.subarray(8192).every((x) => x === 0));
    img.write(Buffer.alloc(512, 3), 0);
    img.snapshots!.delete('one');
    img.close();
    assert.equal(qemuImg('check', q).status, 0, qemuImg('check', q).out);
    const ro = openImage({ path: q, readonly: true });
    assert.throws(() => ro.snapshots!.create('two'), /EROFS/);
    ro.close();
    assert.equal(openImage({ path: q, format: 'raw', readonly: true }).snapshots, undefined);
  } finally {
    s.done();
  }
});
