/**
 * The MSI-X part on its own: the capability, the table and PBA region,
 * per-vector and function masking, pending bits, irqfd routes (a fake
 * ctx.msiVector that counts route calls), direct fds for worker threads,
 * save/restore, and hostile accesses.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PciConfig } from './config-space.js';
import { Msix, type MsixLayout } from './msix.js';
import type { MsiVector } from './msi.js';
import { SnapshotError, StateReader, StateWriter } from '../snapshot/state.js';

const TABLE = 0x000, PBA = 0x800;

function setup(opts: { irqfd?: boolean; vectors?: number; layout?: Partial<MsixLayout> } = {}) {
  const config = new PciConfig({ vendor: 0x1234, device: 0x5678, classCode: 0xff, subclass: 0 });
  const msis: [bigint, number][] = [];
  const signals: number[] = [];
  const routes: [number, bigint, number][] = [];
  const closed: number[] = [];
  let changes = 0;
  let nextGsi = 24;
  const ctx = {
    msi: (a: bigint, d: number) => { msis.push([a, d]); },
    msiVector: opts.irqfd === false ? undefined : (): MsiVector => {
      const gsi = nextGsi++;
      return {
        gsi, fd: 100 + gsi,
        route: (a, d) => { routes.push([gsi, a, d]); },
        signal: () => { signals.push(gsi); },
        close: () => { closed.push(gsi); },
      };
    },
  };
  const msix = new Msix(config, ctx, { vectors: opts.vectors ?? 3, bar: 1, table: TABLE, pba: PBA, ...opts.layout }, () => { changes++; });
  let cap = 0;
  for (let p = config.read(0x34, 1); p; p = config.read(p + 1, 1)) if (config.read(p, 1) === 0x11) cap = p;
  const control = (v: number) => config.write(cap + 2, 2, v);
  const entry = (v: number, addr: number, data: number) => {
    msix.write(TABLE + v * 16, 4, addr); msix.write(TABLE + v * 16 + 4, 4, 0); msix.write(TABLE + v * 16 + 8, 4, data);
  };
  const mask = (v: number, on: boolean) => msix.write(TABLE + v * 16 + 12, 4, on ? 1 : 0);
  const pba = () => msix.read(PBA, 4);
  return { config, msix, cap, msis, signals, routes, closed, changes: () => changes, control, entry, mask, pba };
}

test('the capability: ID 0x11, table size - 1, table and PBA offsets with the BIR; only enable and function mask are writable', () => {
  const s = setup();
  assert.ok(s.cap >= 0x40);
  assert.equal(s.config.read(s.cap + 2, 2), 2, 'table size 3, encoded as 2');
  assert.equal(s.config.read(s.cap + 4, 4), TABLE | 1);
  assert.equal(s.config.read(s.cap + 8, 4), PBA | 1);
  s.config.write(s.cap + 2, 2, 0xffff);
  assert.equal(s.config.read(s.cap + 2, 2), 0xc002);
  s.config.write(s.cap + 4, 4, 0xffffffff);
  assert.equal(s.config.read(s.cap + 4, 4), TABLE | 1);
  assert.ok(s.msix.enabled);
});

test('disabled: signal() says so (the function uses INTx) and nothing is pending', () => {
  const s = setup();
  s.entry(0, 0xfee00000, 0x41);
  s.mask(0, false);
  assert.equal(s.msix.signal(0), false);
  assert.equal(s.pba(), 0);
  assert.deepEqual(s.signals, []);
});

test('a masked vector pends in the PBA and is delivered once on unmask', () => {
  const s = setup();
  s.control(0x8000);
  s.entry(1, 0xfee00000, 0x42);
  assert.equal(s.msix.read(TABLE + 16 + 12, 4), 1, 'entries start masked');
  assert.equal(s.msix.signal(1), true);
  assert.equal(s.msix.signal(1), true);
  assert.equal(s.pba(), 0b10);
  assert.deepEqual(s.signals, []);
  s.mask(1, false);
  assert.deepEqual(s.signals, [25], 'two signals while masked: one pending bit, one interrupt');
  assert.equal(s.pba(), 0);
  s.msix.signal(1);
  assert.deepEqual(s.signals, [25, 25]);
  assert.equal(s.pba(), 0);
});

test('the function mask holds every vector; clearing it delivers what is pending', () => {
  const s = setup();
  s.control(0x8000);
  for (const v of [0, 2]) { s.entry(v, 0xfee00000, 0x40 + v); s.mask(v, false); }
  s.control(0xc000);
  s.msix.signal(0); s.msix.signal(2); s.msix.signal(1);
  assert.deepEqual(s.signals, []);
  assert.equal(s.pba(), 0b111);
  s.control(0x8000);
  assert.deepEqual(s.signals, [24, 26], 'the unmasked vectors go out; vector 1 stays masked and pending');
  assert.equal(s.pba(), 0b10);
});

test('routes: set when a vector opens, again only after its entry changed; one route per change, none per interrupt', () => {
  const s = setup();
  s.entry(0, 0xfee00000, 0x41);
  s.mask(0, false);
  assert.equal(s.routes.length, 0, 'MSI-X is off: no route yet');
  s.control(0x8000);
  assert.deepEqual(s.routes, [[24, 0xfee00000n, 0x41]]);
  for (let i = 0; i < 10; i++) s.msix.signal(0);
  const changes = s.changes();
  s.entry(0, 0xfee00000, 0x41); // the same values: no change
  assert.equal(s.changes(), changes, 'rewriting an entry with its own values is no change');
  s.control(0x8000);
  assert.equal(s.changes(), changes + 1, 'a control write is');
  assert.equal(s.routes.length, 1);
  // reprogrammed as Linux does: mask, write, unmask
  s.mask(0, true);
  s.entry(0, 0xfee01000, 0x51);
  assert.equal(s.routes.length, 1, 'masked: the route waits');
  s.mask(0, false);
  assert.deepEqual(s.routes.at(-1), [24, 0xfee01000n, 0x51]);
  assert.equal(s.routes.length, 2);
  // written while unmasked: each word changes the entry and the route follows at once
  s.msix.write(TABLE + 8, 4, 0x52);
  assert.deepEqual(s.routes.at(-1), [24, 0xfee01000n, 0x52]);
  assert.equal(s.routes.length, 3);
  assert.deepEqual(s.signals, new Array(10).fill(24));
});

test('without irqfds an interrupt is ctx.msi with the entry\'s address and data', () => {
  const s = setup({ irqfd: false });
  s.control(0x8000);
  s.msix.write(TABLE + 16, 4, 0xfee00000); s.msix.write(TABLE + 20, 4, 0x1); s.msix.write(TABLE + 24, 4, 0x77);
  s.mask(1, false);
  s.msix.signal(1);
  assert.deepEqual(s.msis, [[0x1_fee00000n, 0x77]]);
  assert.equal(s.msix.directFd(1), -1, 'no irqfd for a worker to write');
});

test('directFd: the irqfd only while enabled, function and vector unmasked; its route is current when handed out', () => {
  const s = setup();
  s.entry(2, 0xfee00000, 0x43);
  assert.equal(s.msix.directFd(2), -1, 'disabled');
  s.control(0x8000);
  assert.equal(s.msix.directFd(2), -1, 'vector masked');
  assert.equal(s.routes.length, 0);
  s.mask(2, false);
  s.control(0xc000);
  const before = s.routes.length;
  assert.equal(s.msix.directFd(2), -1, 'function masked');
  s.control(0x8000);
  s.msix.write(TABLE + 2 * 16 + 8, 4, 0x44);
  assert.equal(s.msix.directFd(2), 126);
  assert.deepEqual(s.routes.at(-1), [26, 0xfee00000n, 0x44]);
  assert.ok(s.routes.length > before);
  for (const v of [3, -1, 0xffff, 1.5, NaN]) assert.equal(s.msix.directFd(v), -1, `vector ${v}`);
});

test('save and restore: table and PBA round trip; unmasked pending vectors are sent, routes set again', () => {
  const a = setup();
  a.control(0x8000);
  a.entry(0, 0xfee00000, 0x41); a.entry(1, 0xfee02000, 0x42);
  a.mask(0, false);
  a.msix.signal(1); // pending on masked vector 1
  const w = new StateWriter();
  a.msix.saveState(w);
  assert.deepEqual(Object.keys(w.obj), ['msix$b64', 'pba$b64'], 'the snapshot fields transports have always written');
  const json = JSON.parse(JSON.stringify(w.obj));

  const b = setup();
  b.control(0x8000); // the config space is restored before the device
  const install = b.msix.readState(new StateReader(json, 'dev'));
  assert.equal(b.pba(), 0, 'nothing changes before install()');
  install();
  for (let off = 0; off < 3 * 16; off += 4) assert.equal(b.msix.read(TABLE + off, 4), a.msix.read(TABLE + off, 4), `table word 0x${off.toString(16)}`);
  assert.equal(b.pba(), 0b10);
  assert.deepEqual(b.routes, [[24, 0xfee00000n, 0x41]], 'the unmasked vector is routed again');
  b.mask(1, false);
  assert.deepEqual(b.signals, [25], 'the restored pending bit is delivered on unmask');
  const w2 = new StateWriter();
  b.msix.saveState(w2);
  assert.notDeepEqual(w2.obj, w.obj);
});

test('a hostile snapshot: wrong sizes are refused; reserved vector-control bits are dropped', () => {
  const s = setup();
  const bad = (o: Record<string, unknown>) => assert.throws(() => s.msix.readState(new StateReader(o, 'dev')), SnapshotError);
  const table = Buffer.alloc(3 * 16), pba = Buffer.alloc(4);
  bad({ 'msix$b64': Buffer.alloc(2 * 16).toString('base64'), 'pba$b64': pba.toString('base64') });
  bad({ 'msix$b64': table.toString('base64'), 'pba$b64': Buffer.alloc(8).toString('base64') });
  bad({ 'msix$b64': 'not base64!', 'pba$b64': pba.toString('base64') });
  bad({ 'pba$b64': pba.toString('base64') });
  table.writeUInt32LE(0xfffffffe, 12); // vector 0: reserved bits set, mask bit clear
  s.msix.readState(new StateReader({ 'msix$b64': table.toString('base64'), 'pba$b64': pba.toString('base64') }, 'dev'))();
  assert.equal(s.msix.read(TABLE + 12, 4), 0);
});

test('hostile accesses: sizes other than 4, unaligned, outside the table, on the PBA, bad vectors; nothing throws or changes', () => {
  const s = setup();
  s.control(0x8000);
  const snapshot = () => Array.from({ length: 0x1000 / 4 }, (_, i) => s.msix.read(i * 4, 4));
  const before = snapshot();
  for (const size of [1, 2, 3, 8, 0, -4]) {
    s.msix.write(TABLE, size, 0xdeadbeef);
    assert.equal(s.msix.read(TABLE + 12, size), 0);
  }
  for (const off of [1, 2, 3, 13, 3 * 16, 0x7fc, PBA, PBA + 4, 0xffc, 0x1000, -4, -16, 2 ** 32, NaN, 1.5]) {
    s.msix.write(off, 4, 0);
    assert.equal(typeof s.msix.read(off, 4), 'number');
  }
  assert.deepEqual(snapshot(), before, 'no write landed');
  assert.equal(s.msix.read(3 * 16 + 12, 4), 0, 'past the table reads 0');
  for (const v of [3, -1, 0xffff, 2 ** 40, 0.5, NaN]) assert.equal(s.msix.signal(v), true, `vector ${v} dropped`);
  assert.equal(s.pba(), 0);
  assert.deepEqual(s.signals, []);
});

test('layouts that cannot work are refused at construction', () => {
  for (const layout of [
    { vectors: 0 }, { vectors: 2049 }, { vectors: 1.5 }, { bar: 6 }, { bar: -1 },
    { table: 4 }, { pba: 0x804 }, { table: -8 }, { table: 0x800, pba: 0x800 }, { table: 0, pba: 0x20 },
  ]) {
    assert.throws(() => setup({ layout }), RangeError, JSON.stringify(layout));
  }
  assert.doesNotThrow(() => setup({ layout: { table: 0x800, pba: 0 } }));
  assert.equal(setup({ vectors: 2048, layout: { pba: 0x8000 } }).msix.vectors, 2048);
  assert.throws(() => setup({ vectors: 2048 }), RangeError, 'a 32 KiB table runs into the PBA at 0x800');
});

test('close() closes every vector\'s irqfd', () => {
  const s = setup();
  s.msix.close();
  assert.deepEqual(s.closed, [24, 25, 26]);
});
