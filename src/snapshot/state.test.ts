import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SnapshotError, StateReader, StateWriter } from './state.js';
import { checkConfigMatches } from './config-match.js';
import { configKeyRules } from '../vm/snapshot.js';
import '../devices/all.js';

test('typed keys round-trip, u64 as hex, binary as base64', () => {
  const w = new StateWriter().u8('a', 255).u16('b', 65535).u32('c', 0xffffffff).u64('d', 2n ** 64n - 1n)
    .bool('e', true).str('f', 'x').b64('g', Uint8Array.of(1, 2, 3))
    .obj_('h', (h) => h.u8('i', 7)).arr('j', [1, 2], (jw, v) => jw.u16('v', v));
  const json = JSON.parse(JSON.stringify(w.obj));
  assert.equal(json['d$u64'], 'ffffffffffffffff');
  assert.equal(json['g$b64'], 'AQID');
  const r = new StateReader(json, 's');
  assert.equal(r.u8('a'), 255);
  assert.equal(r.u16('b'), 65535);
  assert.equal(r.u32('c'), 0xffffffff);
  assert.equal(r.u64('d'), 2n ** 64n - 1n);
  assert.equal(r.bool('e'), true);
  assert.equal(r.str('f'), 'x');
  assert.deepEqual([...r.b64('g', 3)], [1, 2, 3]);
  assert.equal(r.obj('h').u8('i'), 7);
  assert.deepEqual(r.arr('j', 4).map((x) => x.u16('v')), [1, 2]);
});

test('every malformed field is a SnapshotError naming its path', () => {
  const r = new StateReader({
    'n$u8': 256, 'neg$u32': -1, 'f$u16': 1.5, 'h$u64': '0xzz', 'big$u64': 'fffffffffffffffff', 'b$b64': 'AQID', 'bad$b64': '!!!!',
    'wrongtype$u32': 1, arr: [{}, {}, {}], o: 5,
  }, 'snap');
  const bad = (f: () => unknown, re: RegExp) => assert.throws(f, (e: unknown) => e instanceof SnapshotError && re.test((e as Error).message));
  bad(() => r.u8('n'), /snap\.n: 256 is not an integer in \[0, 255\]/);
  bad(() => r.u32('neg'), /snap\.neg/);
  bad(() => r.u16('f'), /snap\.f/);
  bad(() => r.u64('h'), /not a 64-bit hex number/);
  bad(() => r.u64('big'), /not a 64-bit hex number/);
  bad(() => r.u8('missing'), /snap\.missing: missing/);
  bad(() => r.u16('wrongtype'), /snap\.wrongtype: missing/); // the type is part of the key
  bad(() => r.b64('b', 4), /3 bytes, expected 4/);
  bad(() => r.b64('bad', 3), /not base64/);
  bad(() => r.arr('arr', 2), /3 entries, at most 2/);
  bad(() => r.obj('o'), /snap\.o: not an object/);
  bad(() => r.u8('n', 10), /\[0, 10\]/);
});

test('a restore must be of the same machine: guest-visible keys match, host paths and names may differ', () => {
  const snap = new Map([['cpus', '2'], ['memory.size', '512M'], ['name', 'a'], ['lpc.com1.path', 'stdio'],
    ['pci.0.5.0.device', 'virtio-blk'], ['pci.0.5.0.path', '/old/disk.img'], ['boot.kernel', '/k']]);
  const same: [string, string][] = [['cpus', '2'], ['memory.size', '512M'], ['name', 'b'], ['lpc.com1.path', 'tcp=127.0.0.1:4000'],
    ['pci.0.5.0.device', 'virtio-blk'], ['pci.0.5.0.path', '/new/disk.img']];
  // The rules come from the VM's list and the device registries (vm/snapshot.ts).
  const match = (cur: [string, string][]) => checkConfigMatches(snap, cur, configKeyRules([...snap, ...cur]));
  match(same);
  const bad = (cur: [string, string][], re: RegExp) => assert.throws(() => match(cur),
    (e: unknown) => e instanceof SnapshotError && re.test((e as Error).message));
  bad(same.map(([k, v]) => [k, k === 'cpus' ? '1' : v]), /taken with cpus=2, this command line has cpus=1/);
  bad(same.filter(([k]) => !k.startsWith('pci.')), /pci\.0\.5\.0\.device/);
  bad([...same, ['pci.0.6.0.device', 'virtio-rnd']], /pci\.0\.6\.0\.device/);
  bad(same.filter(([k]) => k !== 'lpc.com1.path'), /lpc\.com1\.path/);
});

test('RAM ranges merge into a sorted union', async () => {
  const { mergeRanges } = await import('../memory/ram.js');
  assert.deepEqual(mergeRanges([[8192, 12288], [0, 4096], [4096, 8192], [20480, 24576], [22000, 30000]]), [[0, 12288], [20480, 30000]]);
  assert.deepEqual(mergeRanges([]), []);
});

test('config keys: host-only ones are ignored, a host path\'s value is not compared but its presence is', () => {
  const rules = { hostOnly: ['name', 'boot.*', 'lpc.probe.note'], hostPaths: ['pci.N.N.N.port.N.path', 'lpc.probe.file'] };
  const snap = new Map([['name', 'a'], ['boot.raw.address', '0x1000'], ['lpc.probe.note', 'x'], ['lpc.probe.file', '/a'],
    ['pci.0.5.0.port.3.path', '/a.sock'], ['pci.0.5.0.port.3.name', 'p']]);
  const match = (cur: [string, string][]) => checkConfigMatches(snap, cur, rules);
  const base: [string, string][] = [['lpc.probe.file', '/b'], ['pci.0.5.0.port.3.path', '/b.sock'], ['pci.0.5.0.port.3.name', 'p']];
  match(base);
  match([...base, ['lpc.probe.note', 'other'], ['boot.kernel', '/k']]);
  const bad = (cur: [string, string][], re: RegExp) => assert.throws(() => match(cur),
    (e: unknown) => e instanceof SnapshotError && re.test((e as Error).message));
  bad(base.filter(([k]) => k !== 'lpc.probe.file'), /^the snapshot's VM had lpc\.probe\.file, this command line has no lpc\.probe\.file$/);
  bad(base.map(([k, v]) => [k, k.endsWith('name') ? 'q' : v]), /pci\.0\.5\.0\.port\.3\.name=p, this command line has pci\.0\.5\.0\.port\.3\.name=q/);
  bad([...base, ['lpc.probe.note2', 'x']], /lpc\.probe\.note2=x/);
  bad([...base, ['bootx', '1']], /bootx=1/); // `boot.*` is the keys under boot, not every key starting with it
});

test('$int takes only safe integers in range; messages quote at most 64 characters, on one line', () => {
  const w = new StateWriter().int('off', -5);
  assert.deepEqual(w.obj, { 'off$int': -5 });
  const bad = (v: unknown, re: RegExp) => assert.throws(() => new StateReader({ 'off$int': v }, 's').int('off', -10, 10),
    (e: unknown) => e instanceof SnapshotError && re.test((e as Error).message) && !(e as Error).message.includes('\n'));
  assert.equal(new StateReader({ 'off$int': -10 }, 's').int('off', -10, 10), -10);
  bad(11, /s\.off: 11 is not an integer in \[-10, 10\]/);
  bad('1', /"1" is not an integer/);
  bad('', /"" is not an integer/);
  bad('0x1', /is not an integer/);
  bad(1.5, /is not an integer/);
  bad(2 ** 53, /is not an integer/);
  const long = new StateReader({ 'n$u8': 'x'.repeat(100_000), [`${'k'.repeat(1000)}$u8`]: '\n' }, 's');
  assert.throws(() => long.u8('n'), (e: Error) => e.message.length < 200 && e.message.includes('"xxxx'));
  assert.throws(() => long.u8('k'.repeat(1000)), (e: Error) => e.message.length < 200 && e.message.includes('"\\n"') && !e.message.includes('\n'));
  assert.equal(new SnapshotError('a\nb\x1b[2J').message, 'a\\x0ab\\x1b[2J', 'control characters quoted from a snapshot are escaped');
});
