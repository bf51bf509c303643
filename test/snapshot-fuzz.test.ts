/**
 * Level 2: a snapshot is hostile input. Over a thousand corruptions of a
 * real snapshot (a guest program with virtio devices, saved on this host's
 * /dev/kvm) are restored, through the loader and Machine.create as
 * `tshyve -r` does, and a sample through `tshyve -r` itself: wrong types,
 * out-of-range, huge and negative numbers, missing fields, flipped bytes,
 * truncations, deep nesting, huge arrays and strings, special files in place
 * of the document or the RAM image. Each must be refused with one line (a
 * SnapshotError; exit 4 from the CLI), quickly, and without memory growing.
 * Field corruptions get recomputed checksums, so the field's own check is
 * what must catch them. Seeded: a failure names its case and reproduces.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, ExitCode, parseBhyveArgs, type ConfigTree } from '../src/index.js';
import { readSnapshot, partChecksum, PARTS } from '../src/snapshot/file.js';
import { SnapshotError } from '../src/snapshot/state.js';
import { kvmUnavailable, guestBin, runCli } from './helpers.js';

const skip = kvmUnavailable() ?? (guestBin('counter') ? undefined : 'guest programs not built (nasm missing)');
const dir = mkdtempSync(join(tmpdir(), 'tshyve-fuzz-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

const CASE_MS = 2000, TOTAL_MS = 60_000, RSS_GROWTH = 256 * 2 ** 20;

function args(): string[] {
  return ['-m', '16M', '-s', '0,hostbridge', '-s', '31,lpc', '-s', `2,virtio-blk,${join(dir, 'disk.img')}`, '-s', '3,virtio-rnd',
    '-l', `com1,${join(dir, 'out.txt')}`, '-o', `boot.raw=${guestBin('counter') ?? ''}`, '-o', 'x86.halt_check_ms=0',
    // No device threads, eventfd poller or irqfds: each costs a thread or KVM calls per case, and none
    // of them reads the snapshot (config-match ignores these keys).
    '-o', 'virtio.workers=false', '-o', 'virtio.ioeventfd=false', '-o', 'virtio.irqfd=false', 'fuzz'];
}
const config = (): ConfigTree => parseBhyveArgs(args()).config;

/** mulberry32 */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

type Json = any;
interface Case { name: string; path: string }

/** Every key path in the document: [container, key, path string]. */
function paths(o: Json, at: string, out: [Json, string | number, string][] = []): [Json, string | number, string][] {
  for (const [k, v] of Object.entries(o)) {
    const key = Array.isArray(o) ? Number(k) : k;
    const p = `${at}${Array.isArray(o) ? `[${k}]` : `.${k}`}`;
    out.push([o, key, p]);
    if (typeof v === 'object' && v !== null) paths(v, p, out);
  }
  return out;
}

/** Values that are wrong for a key of this type, whatever the field's own range. */
function badValues(key: string | number, v: Json): Json[] {
  const t = typeof key === 'string' ? key.slice(key.lastIndexOf('$') + 1) : '';
  const huge = 'x'.repeat(70_000);
  const notNumber = ['5', null, true, {}, []];
  if (typeof key === 'string' && !key.includes('$')) {
    return Array.isArray(v) ? [{}, 5, null, 'x', Array.from({ length: 100_000 }, () => ({}))] : [[], 5, null, 'x'];
  }
  switch (t) {
    case 'u8': return [-1, 256, 1.5, 1e300, -1e300, 2 ** 53, ...notNumber];
    case 'u16': return [-1, 65536, 0.5, 1e300, ...notNumber];
    case 'u32': return [-1, 2 ** 32, 2 ** 32 + 0.5, 1e300, Number.MIN_SAFE_INTEGER, ...notNumber];
    case 'u64': return ['-1', '0x10', '1'.repeat(17), '', 'FF', ' 1', '1 ', 5, null, huge];
    case 'int': return [1.5, 1e20, -1e20, '0', '', ' 1', '0x10', null];
    case 'bool': return [0, 1, 'true', null, []];
    case 'str': return [5, null, true, [], {}, huge];
    case 'b64': return ['!!!!', 'A', 'AAA=A===', 5, null, Buffer.alloc(1 << 20).toString('base64')];
    default: return [5, null, huge];
  }
}

/** Random corruptions of the document `base` (parsed). */
function* fieldCases(base: Json, r: () => number, count: number): Generator<[string, Json]> {
  const all = paths(base, 'snapshot').filter(([, k, p]) => !p.includes('.checksums') && k !== 'created$str');
  for (let i = 0; i < count; i++) {
    const doc = structuredClone(base);
    const [, key, p] = all[Math.floor(r() * all.length)]!;
    const [c] = paths(doc, 'snapshot').find(([, , q]) => q === p)!;
    // Config values may go missing (a key the VM does not need); any other field may not.
    const mutations = [...badValues(key, c[key]), ...(p.startsWith('snapshot.config.') || Array.isArray(c) ? [] : [undefined])];
    const m = mutations[Math.floor(r() * mutations.length)];
    if (m === undefined) delete c[key]; else c[key] = m;
    resign(doc);
    yield [`${p} = ${m === undefined ? '(deleted)' : JSON.stringify(m).slice(0, 40)}`, doc];
  }
}

function resign(doc: Json): void {
  for (const p of PARTS) if (p in doc) doc.checksums[`${p}$sha256`] = partChecksum(doc[p]);
}

let base: { file: string; text: string; doc: Json } | undefined;

test('a real snapshot to corrupt', { skip }, async () => {
  const disk = openSync(join(dir, 'disk.img'), 'w');
  ftruncateSync(disk, 1 << 20);
  closeSync(disk);
  const file = join(dir, 'base.ckp');
  const m = await Machine.create(config());
  const done = m.run();
  await new Promise((r) => m.once('running', r));
  await m.suspend(file);
  assert.equal(await done, ExitCode.REBOOT);
  // The uncorrupted snapshot restores: every refusal below is the corruption's.
  const m2 = await Machine.create(config(), { restore: readSnapshot(file) });
  await m2.finish(ExitCode.POWEROFF);
  const text = readFileSync(file, 'utf8');
  base = { file, text, doc: JSON.parse(text) };
});

let made: Case[] | undefined;
/** Every corruption, written to a file of its own next to the base RAM image (which the documents name). */
function allCases(): Case[] {
  made ??= [...documentCases(), ...ramCases()];
  return made;
}

function documentCases(): Case[] {
  const b = base!;
  const r = rng(0x5eed);
  const cases: Case[] = [];
  let n = 0;
  const put = (name: string, content: string | Buffer): void => {
    const path = join(dir, `case-${n++}.ckp`);
    writeFileSync(path, content);
    cases.push({ name, path });
  };
  for (const [name, doc] of fieldCases(b.doc, r, 600)) put(name, JSON.stringify(doc));
  // Flipped bytes anywhere but the creation time (which no checksum covers).
  const created = b.text.indexOf(b.doc['created$str']);
  for (let i = 0; i < 250; i++) {
    let at = Math.floor(r() * b.text.length);
    if (at >= created - 1 && at <= created + 25) at = 0;
    const t = Buffer.from(b.text);
    // Whitespace for whitespace is the same document: not a corruption.
    const ws = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
    do t[at] = b.text.charCodeAt(at) ^ (1 + Math.floor(r() * 255)); while (ws(t[at]!) && ws(b.text.charCodeAt(at)));
    put(`byte ${at} flipped`, t);
  }
  for (let i = 0; i < 150; i++) { const at = Math.floor(r() * b.text.length); put(`truncated at ${at}`, b.text.slice(0, at)); }
  // Whole-document shapes.
  for (const [name, text] of [['[]', '[]'], ['a number', '1e999'], ['a string', '"tshyve-snapshot"'], ['null', 'null'], ['empty', ''],
    ['nested 100000 deep', `${'['.repeat(100_000)}${']'.repeat(100_000)}`],
    ['an object nested 100000 deep', `{"magic$str":"tshyve-snapshot","version$u32":1,"x":${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}}`],
    ['a 40 MB string', JSON.stringify({ ...b.doc, 'created$str': 'x'.repeat(40e6) })],
    ['NUL bytes', '\0'.repeat(1000)], ['invalid UTF-8', Buffer.from([0xff, 0xfe, 0x7b, 0x7d]).toString('latin1')],
  ] as const) put(name, text);
  const deep = structuredClone(b.doc);
  let o = deep.vm;
  for (let i = 0; i < 40; i++) o = o[`n${i}`] = {};
  resign(deep);
  put('a part nested 40 deep (checksums recomputed)', JSON.stringify(deep));
  for (const [name, edit] of [
    ['version 0', (d: Json) => { d['version$u32'] = 0; }],
    ['version -1', (d: Json) => { d['version$u32'] = -1; }],
    ['version as a string', (d: Json) => { d['version$u32'] = '1'; }],
    ['magic missing', (d: Json) => { delete d['magic$str']; }],
    ['checksums missing', (d: Json) => { delete d.checksums; }],
    ['a part missing', (d: Json) => { delete d.vm; }],
    ['2000 vCPUs', (d: Json) => { d.vcpus = Array.from({ length: 2000 }, () => d.vcpus[0]); resign(d); }],
    ['2 vCPUs', (d: Json) => { d.vcpus.push(d.vcpus[0]); resign(d); }],
    ['no vCPUs', (d: Json) => { d.vcpus = []; resign(d); }],
    ['RAM named ../base.ckp.ram', (d: Json) => { d.ram['file$str'] = '../base.ckp.ram'; resign(d); }],
    ['RAM named as the document', (d: Json) => { d.ram['file$str'] = 'base.ckp'; resign(d); }],
    ['RAM size 2^53', (d: Json) => { d.ram['size$u64'] = '20000000000000'; resign(d); }],
    ['RAM size 0', (d: Json) => { d.ram['size$u64'] = '0'; d.ram['crc32$b64'] = ''; resign(d); }],
    ['memory.size 32M', (d: Json) => { d.config['memory.size$str'] = '32M'; resign(d); }],
    ['memory.size of 60000 characters and newlines', (d: Json) => { d.config['memory.size$str'] = '16M\n'.repeat(15_000); resign(d); }],
    ['a config key with a newline', (d: Json) => { d.config['cpus\nx'] = '1'; resign(d); }],
    ['a config key of 100000 characters', (d: Json) => { d.config['k'.repeat(100_000)] = '1'; resign(d); }],
    ['a new config key of 100000 characters', (d: Json) => { d.config[`${'k'.repeat(100_000)}$str`] = '1\n2'; resign(d); }],
    ['events flags with bit 31', (d: Json) => {
      const e = Buffer.from(d.vcpus[0]['events$b64'], 'base64'); e.writeUInt32LE(0x80000000, 20); d.vcpus[0]['events$b64'] = e.toString('base64');
      resign(d);
    }],
  ] as const) { const d = structuredClone(b.doc); edit(d); put(name, JSON.stringify(d)); }
  // Special files in place of the document.
  const special = (name: string, make: (p: string) => void): void => { const path = join(dir, `case-${n++}.ckp`); make(path); cases.push({ name, path }); };
  special('a FIFO', (p) => execFileSync('mkfifo', [p]));
  special('a symlink to /dev/zero', (p) => symlinkSync('/dev/zero', p));
  special('a symlink to a good snapshot', (p) => symlinkSync(b.file, p));
  special('a dangling symlink', (p) => symlinkSync(join(dir, 'nowhere'), p));
  special('a directory', (p) => mkdirSync(p));
  special('/dev/null', (p) => symlinkSync('/dev/null', p));
  special('a sparse 1 GiB file', (p) => { const fd = openSync(p, 'w'); ftruncateSync(fd, 2 ** 30); closeSync(fd); });
  return cases;
}

/** RAM-image cases: the good document in a directory of its own, with `make` putting something at base.ckp.ram. */
function ramCases(): Case[] {
  const b = base!;
  const out: Case[] = [];
  const add = (name: string, make: (p: string) => void): void => {
    const d = join(dir, `ram-${out.length}`);
    mkdirSync(d);
    writeFileSync(join(d, 'base.ckp'), b.text);
    make(join(d, 'base.ckp.ram'));
    out.push({ name: `RAM image: ${name}`, path: join(d, 'base.ckp') });
  };
  const sized = (p: string, size: number) => { const fd = openSync(p, 'w'); ftruncateSync(fd, size); closeSync(fd); };
  add('missing', () => {});
  add('a FIFO', (p) => execFileSync('mkfifo', [p]));
  add('a symlink to /dev/zero', (p) => symlinkSync('/dev/zero', p));
  add('a symlink to a file of the right size', (p) => symlinkSync(`${b.file}.ram`, p));
  add('a dangling symlink', (p) => symlinkSync(join(dir, 'nowhere'), p));
  add('a directory', (p) => mkdirSync(p));
  add('one byte short', (p) => sized(p, (16 << 20) - 1));
  add('one byte long', (p) => sized(p, (16 << 20) + 1));
  add('empty', (p) => sized(p, 0));
  return out;
}

function oneLine(e: unknown, c: Case): void {
  assert.ok(e instanceof SnapshotError, `${c.name}: a SnapshotError, not ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
  assert.equal(e.message.split('\n').length, 1, c.name);
  assert.ok(e.message.length < 400, `${c.name}: a short line, not ${e.message.length} characters`);
}

test('over 1000 corrupted snapshots are each refused with one line, quickly, in bounded memory', { skip, timeout: TOTAL_MS + 30_000 }, async (t) => {
  assert.ok(base, 'the base snapshot was made');
  const cases = allCases();
  assert.ok(cases.length >= 1000, `${cases.length} cases`);
  global.gc?.();
  const rss0 = process.memoryUsage().rss;
  let peak = rss0;
  const t0 = performance.now();
  let slowest = 0, slowestName = '';
  for (const c of cases) {
    const c0 = performance.now();
    let err: unknown;
    try {
      const m = await Machine.create(config(), { restore: readSnapshot(c.path) });
      await m.finish(ExitCode.POWEROFF);
    } catch (e) { err = e; }
    assert.ok(err !== undefined, `${c.name}: restored, but should have been refused`);
    oneLine(err, c);
    const ms = performance.now() - c0;
    if (ms > slowest) { slowest = ms; slowestName = c.name; }
    assert.ok(ms < CASE_MS, `${c.name}: ${ms.toFixed(0)} ms`);
    peak = Math.max(peak, process.memoryUsage().rss);
  }
  const total = performance.now() - t0;
  assert.ok(total < TOTAL_MS, `${cases.length} cases in ${total.toFixed(0)} ms`);
  assert.ok(peak - rss0 < RSS_GROWTH, `RSS grew by ${((peak - rss0) / 2 ** 20).toFixed(0)} MiB`);
  t.diagnostic(`${cases.length} cases in ${(total / 1000).toFixed(1)} s, slowest ${slowest.toFixed(0)} ms (${slowestName.slice(0, 60)}), RSS +${((peak - rss0) / 2 ** 20).toFixed(0)} MiB at most`);
});

test('tshyve -r refuses a sample of them with exit 4 and one line', { skip }, async () => {
  assert.ok(base, 'the base snapshot was made');
  const all = allCases();
  const r = rng(7);
  const sample = [...all.filter((c) => /FIFO|\/dev\/zero|nested 100000|1 GiB|events/.test(c.name)), ...Array.from({ length: 4 }, () => all[Math.floor(r() * all.length)]!)];
  for (const c of sample) {
    const res = await runCli(['-r', c.path, ...args()], { timeoutMs: 20_000 });
    assert.equal(res.code, 4, `${c.name}: ${res.stderr}`);
    assert.equal(res.stderr.trimEnd().split('\n').length, 1, `${c.name}: ${res.stderr}`);
    assert.match(res.stderr, /^tshyve: /);
    assert.doesNotMatch(res.stderr, /internal error/, c.name);
    assert.ok(res.ms < 10_000, `${c.name}: ${res.ms} ms`);
  }
});
