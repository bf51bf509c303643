import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  buffer, device, dwordMemory, eisaId, endTag, integer, ioPort, name, nameString, pkg, pkgLength, scope, wordBusNumber, wordIo,
} from './aml.js';
import { buildDsdtAml, s5Aml } from './dsdt.js';

test('_S5 package is exactly Name(_S5_, Package(4){5, 5, 0, 0})', () => {
  assert.deepEqual(s5Aml(), [0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]);
  assert.deepEqual([...buildDsdtAml({ pci: false })], s5Aml());
});

test('PkgLength encodings', () => {
  assert.deepEqual(pkgLength(0), [1]);
  assert.deepEqual(pkgLength(62), [63]);
  // 63 bytes + 2 length bytes = 65 = 0x41: lead 0x41 & 0xf | 1 << 6, then 0x41 >> 4
  assert.deepEqual(pkgLength(63), [0x41, 0x04]);
  assert.deepEqual(pkgLength(0xffd), [0x4f, 0xff]);
  assert.deepEqual(pkgLength(0xffe), [0x81, 0x00, 0x01]);
});

test('integers use the shortest encoding', () => {
  assert.deepEqual(integer(0), [0x00]);
  assert.deepEqual(integer(1), [0x01]);
  assert.deepEqual(integer(5), [0x0a, 0x05]);
  assert.deepEqual(integer(0x1234), [0x0b, 0x34, 0x12]);
  assert.deepEqual(integer(0x0001ffff), [0x0c, 0xff, 0xff, 0x01, 0x00]);
  assert.deepEqual(integer(2n ** 32n), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
});

test('names, EISA ids and containers', () => {
  assert.deepEqual(nameString('\\_SB'), [0x5c, 0x5f, 0x53, 0x42, 0x5f]);
  assert.deepEqual(nameString('_SB.PCI0'), [0x2e, 0x5f, 0x53, 0x42, 0x5f, 0x50, 0x43, 0x49, 0x30]);
  assert.deepEqual(eisaId('PNP0A03'), [0x0c, 0x41, 0xd0, 0x0a, 0x03]);
  assert.deepEqual(eisaId('PNP0501'), [0x0c, 0x41, 0xd0, 0x05, 0x01]);
  assert.deepEqual(name('_UID', integer(0)), [0x08, 0x5f, 0x55, 0x49, 0x44, 0x00]);
  assert.deepEqual(pkg([]), [0x12, 0x02, 0x00]);
  assert.deepEqual(buffer([0x79, 0x00]), [0x11, 0x05, 0x0a, 0x02, 0x79, 0x00]);
  assert.deepEqual(scope('\\_SB', []), [0x10, 0x06, 0x5c, 0x5f, 0x53, 0x42, 0x5f]);
  assert.deepEqual(device('PCI0', []), [0x5b, 0x82, 0x05, 0x50, 0x43, 0x49, 0x30]);
});

test('resource descriptors match iasl output', () => {
  assert.deepEqual(wordBusNumber(0, 0xff), [0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, 0, 0, 0xff, 0, 0, 0, 0x00, 0x01]);
  assert.deepEqual(ioPort(0xcf8, 0xcf8, 1, 8), [0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]);
  assert.deepEqual(wordIo(0, 0xcf7), [0x88, 0x0d, 0x00, 0x01, 0x0c, 0x03, 0, 0, 0, 0, 0xf7, 0x0c, 0, 0, 0xf8, 0x0c]);
  assert.deepEqual(wordIo(0xd00, 0xffff), [0x88, 0x0d, 0x00, 0x01, 0x0c, 0x03, 0, 0, 0x00, 0x0d, 0xff, 0xff, 0, 0, 0x00, 0xf3]);
  assert.deepEqual(dwordMemory(0xc0000000, 0xfebfffff), [
    0x87, 0x17, 0x00, 0x00, 0x0c, 0x01, 0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0xff, 0xbf, 0xfe, 0, 0, 0, 0, 0, 0, 0xc0, 0x3e,
  ]);
  assert.deepEqual(endTag, [0x79, 0x00]);
});

test('DSDT with PCI0 is well-formed: every PkgLength covers the rest of its object', () => {
  const aml = buildDsdtAml({ pci: { prt: [{ slot: 1, pin: 0, gsi: 16 }], mmio64: { base: 2 ** 36, size: 2 ** 34 } } });
  const s5 = s5Aml().length;
  assert.equal(aml[s5], 0x10); // ScopeOp
  const lead = aml[s5 + 1]!;
  const n = lead >> 6;
  let len = n === 0 ? lead & 0x3f : lead & 0x0f;
  for (let i = 0; i < n; i++) len |= aml[s5 + 2 + i]! << (4 + 8 * i);
  assert.equal(s5 + 1 + len, aml.length);
  const text = String.fromCharCode(...aml);
  for (const s of ['_SB_', 'PCI0', '_HID', '_SEG', '_BBN', '_CRS', '_PRT']) assert.ok(text.includes(s), s);
});
