/**
 * tshyve-img against qemu-img: images it creates, converts and resizes
 * check clean and compare equal; internal snapshots it makes are listed
 * and applied by qemu-img and the other way round; its JSON uses
 * qemu-img's field names; bad input is one line and a non-zero exit;
 * and a qcow2 disk with a feature tshyve lacks stops tshyve with exit 4.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, guestBin, kvmUnavailable, runCli } from './helpers.js';
import { qemuImg, scratchDir, skipNoQemu } from '../src/devices/block/qcow2/testing.js';

const IMG = join(ROOT, 'dist', 'bundle', 'cli', 'tshyve-img.js');

function img(...args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [IMG, ...args], { encoding: 'utf8' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: { status: number; stderr?: string; out?: string }, what: string): void {
  assert.equal(r.status, 0, `${what}: ${r.stderr ?? r.out}`);
}

function qemuIo(file: string, cmd: string): string {
  const r = spawnSync('/usr/bin/qemu-io', ['-f', 'qcow2', '-c', cmd, file], { encoding: 'utf8' });
  assert.doesNotMatch(`${r.stdout}${r.stderr}`, /error|fail/i, cmd);
  return r.stdout;
}

/** The guest's view of an image, flattened by qemu-img. */
function flat(s: ReturnType<typeof scratchDir>, file: string): Buffer {
  const out = s.path('flat.raw');
  ok(qemuImg('convert', '-O', 'raw', file, out), 'flatten');
  return readFileSync(out);
}

test('create, info and map agree with qemu-img', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    for (const o of ['compat=0.10', 'compat=1.1,cluster_size=4k,refcount_bits=8,lazy_refcounts=on', 'cluster_size=2M']) {
      const f = s.path('c.qcow2');
      ok(img('create', '-f', 'qcow2', '-o', o, f, '3G'), `create ${o}`);
      ok(qemuImg('check', f), `check ${o}`);
      qemuIo(f, 'write -P 0x42 1M 300k');
      const ours = JSON.parse(img('info', '--output=json', f).stdout) as Record<string, unknown>;
      const theirs = JSON.parse(qemuImg('info', '--output=json', f).out) as Record<string, unknown>;
      assert.deepEqual(Object.keys(ours).sort(), Object.keys(theirs).sort(), o);
      for (const k of ['virtual-size', 'cluster-size', 'format', 'format-specific', 'dirty-flag']) assert.deepEqual(ours[k], theirs[k], `${o} ${k}`);
      assert.equal(img('map', '--output=json', f).stdout.trim(), qemuImg('map', '--output=json', f).out.trim(), `${o} map`);
    }
    const raw = s.path('r.raw');
    ok(img('create', '-f', 'raw', raw, '1M'), 'create raw');
    assert.equal(readFileSync(raw).length, 1 << 20);
    ok(img('create', '-f', 'qcow2', '-b', 'r.raw', '-F', 'raw', s.path('o.qcow2')), 'create overlay');
    const info = JSON.parse(img('info', '--output=json', s.path('o.qcow2')).stdout) as Record<string, unknown>;
    const qinfo = JSON.parse(qemuImg('info', '--output=json', s.path('o.qcow2')).out) as Record<string, unknown>;
    for (const k of ['virtual-size', 'backing-filename', 'backing-filename-format']) assert.deepEqual(info[k], qinfo[k], k);
    ok(qemuImg('check', s.path('o.qcow2')), 'check overlay');
  } finally {
    s.done();
  }
});

test('snapshots made by tshyve-img are listed and applied by qemu-img, and the other way round', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    for (const o of ['compat=1.1', 'compat=0.10,cluster_size=4k']) {
      const f = s.path('s.qcow2');
      ok(qemuImg('create', '-f', 'qcow2', '-o', o, f, '8M'), 'create');
      qemuIo(f, 'write -P 0x11 0 1M');
      const v1 = flat(s, f);
      ok(img('snapshot', '-c', 'ours', f), 'tshyve-img snapshot -c');
      ok(qemuImg('check', f), 'check after -c');
      assert.match(qemuImg('snapshot', '-l', f).out, /\bours\b/);
      qemuIo(f, 'write -P 0x22 512k 1M');
      const v2 = flat(s, f);
      ok(qemuImg('snapshot', '-c', 'theirs', f), 'qemu-img snapshot -c');
      assert.match(img('snapshot', '-l', f).stdout, /\btheirs\b/);
      qemuIo(f, 'write -P 0x33 0 4M');
      ok(qemuImg('snapshot', '-a', 'ours', f), 'qemu-img applies ours');
      assert.ok(flat(s, f).equals(v1), 'qemu-img applied our snapshot');
      ok(img('snapshot', '-a', 'theirs', f), 'tshyve-img applies theirs');
      ok(qemuImg('check', f), 'check after -a');
      assert.ok(flat(s, f).equals(v2), 'tshyve-img applied qemu-img\'s snapshot');
      ok(img('snapshot', '-a', 'ours', f), 'tshyve-img applies ours');
      assert.ok(flat(s, f).equals(v1));
      ok(img('snapshot', '-d', 'theirs', f), 'tshyve-img deletes theirs');
      ok(qemuImg('check', f), 'check after -d');
      ok(qemuImg('snapshot', '-d', 'ours', f), 'qemu-img deletes ours');
      ok(img('check', f), 'tshyve-img check');
      assert.ok(flat(s, f).equals(v1));
      assert.equal(qemuImg('snapshot', '-l', f).out.trim(), '');
    }
  } finally {
    s.done();
  }
});

test('convert (compressed too) and resize give images qemu-img finds equal and clean', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const src = s.path('src.raw');
    const b = Buffer.alloc(5 * 1024 * 1024 + 4096);
    for (let i = 0; i < b.length; i += 4096) if ((i / 4096) % 5 !== 0) b.fill((i / 4096) & 0xff, i, i + 3000);
    writeFileSync(src, b);
    for (const args of [[], ['-c'], ['-c', '-o', 'cluster_size=4k'], ['-o', 'compat=0.10']]) {
      const q = s.path('out.qcow2');
      ok(img('convert', '-O', 'qcow2', ...args, src, q), `convert ${args.join(' ')}`);
      ok(qemuImg('check', q), 'check');
      ok(qemuImg('compare', '-f', 'raw', '-F', 'qcow2', src, q), `compare ${args.join(' ')}`);
      if (args.includes('-c')) assert.match(qemuImg('check', q).out, /[1-9][0-9.]*% compressed clusters/);
      ok(img('convert', '-f', 'qcow2', '-O', 'raw', q, s.path('back.raw')), 'convert back');
      assert.ok(readFileSync(s.path('back.raw')).equals(b));
    }
    const q = s.path('out.qcow2');
    ok(img('resize', q, '+1G'), 'resize');
    ok(qemuImg('check', q), 'check after resize');
    assert.equal((JSON.parse(qemuImg('info', '--output=json', q).out) as { 'virtual-size': number })['virtual-size'], b.length + 2 ** 30);
    assert.notEqual(img('resize', q, '1M').status, 0, 'shrinking needs --shrink');
  } finally {
    s.done();
  }
});

test('check finds and repairs leaked clusters, with qemu-img\'s exit codes', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const f = s.path('l.qcow2');
    ok(img('create', '-f', 'qcow2', f, '64M'), 'create');
    // a writer that exits without a flush after a discard leaves the discarded clusters leaked
    const mod = join(ROOT, 'dist', 'src', 'devices', 'block', 'index.js');
    const r = spawnSync(process.execPath, ['--input-type=module', '-e',
      `import { openImage } from ${JSON.stringify(mod)}; const b = openImage({ path: ${JSON.stringify(f)} });
       b.write(Buffer.alloc(1 << 20, 1), 0); b.write(Buffer.alloc(65536, 2), 8 << 20); b.flush(); b.discard(0, 1 << 20); process.exit(0);`]);
    assert.equal(r.status, 0, String(r.stderr));
    assert.equal(qemuImg('check', f).status, 3);
    const c = img('check', f);
    assert.equal(c.status, 3, c.stdout);
    assert.match(c.stdout, /leaked clusters were found/);
    ok(img('check', '-r', 'leaks', f), 'repair');
    ok(qemuImg('check', f), 'clean after the repair');
  } finally {
    s.done();
  }
});

test('bad input: one line on stderr, non-zero exit', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    writeFileSync(s.path('r.raw'), Buffer.alloc(4096));
    const cases: [string[], RegExp][] = [
      [['frob'], /unknown command 'frob'/],
      [['info', s.path('nope')], /nope.*no such file/],
      [['create', '-f', 'qcow2', s.path('x.qcow2'), '12Q'], /invalid size '12Q'/],
      [['create', '-f', 'qcow2', '-o', 'colour=red', s.path('x.qcow2'), '1M'], /does not know the option 'colour'/],
      [['create', '-f', 'qcow2', '-o', 'cluster_size=3000', s.path('x.qcow2'), '1M'], /cluster size 3000/],
      [['create', '-f', 'vmdk', s.path('x'), '1M'], /unknown format 'vmdk'/],
      [['snapshot', '-l', s.path('r.raw')], /needs a qcow2 image/],
      [['snapshot', '-a', 'none', s.path('x.qcow2')], /no such file|nope|x\.qcow2/],
      [['convert', s.path('r.raw')], /SRC DST expected/],
      [['info', '--bogus', s.path('r.raw')], /bogus/],
      [['info', '-f', 'qcow2', s.path('r.raw')], /not a qcow2 image/],
    ];
    for (const [args, re] of cases) {
      const r = img(...args);
      assert.notEqual(r.status, 0, args.join(' '));
      const lines = r.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(lines[0]!, /^tshyve-img: /);
      assert.match(lines[0]!, re, args.join(' '));
    }
    ok(img('create', '-f', 'qcow2', s.path('y.qcow2'), '1M'), 'create');
    const none = img('snapshot', '-a', 'missing', s.path('y.qcow2'));
    assert.equal(none.status, 1);
    assert.match(none.stderr, /^tshyve-img: .*no snapshot 'missing'.*\n$/);
  } finally {
    s.done();
  }
});

test('tshyve refuses a qcow2 disk with a feature it lacks: one line naming it, exit 4', { skip: skipNoQemu }, async () => {
  const s = scratchDir();
  try {
    const f = s.path('ext.qcow2');
    ok(qemuImg('create', '-f', 'qcow2', f, '1M'), 'create');
    const b = readFileSync(f);
    b.writeBigUInt64BE(16n, 72); // extended L2 entries
    writeFileSync(f, b);
    const hlt = s.path('hlt.bin');
    writeFileSync(hlt, Buffer.from([0xf4]));
    const r = await runCli(['-s', '0,hostbridge', '-s', `2,virtio-blk,${f}`, '-o', `boot.raw=${hlt}`, 'vm'], { timeoutMs: 20_000 });
    assert.equal(r.code, 4, r.stderr);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^tshyve: .*qcow2 feature not supported: extended L2 entries/);
  } finally {
    s.done();
  }
});

test('a VM with qcow2 disks (an overlay on its I/O thread, a read-only one) starts and ends, the images clean and unchanged',
  { skip: skipNoQemu || kvmUnavailable() || (guestBin('long') ? false : 'guest program long.bin not built') }, async () => {
    const s = scratchDir();
    try {
      ok(qemuImg('create', '-f', 'qcow2', s.path('base.qcow2'), '4M'), 'base');
      ok(img('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', s.path('top.qcow2')), 'overlay');
      const before = readFileSync(s.path('top.qcow2'));
      const r = await runCli(['-c', '1', '-m', '16M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio',
        '-s', `4,virtio-blk,${s.path('top.qcow2')}`, '-s', `5,virtio-blk,${s.path('base.qcow2')},ro,format=qcow2`,
        '-o', `boot.raw=${guestBin('long')!}`, 'testvm'], { timeoutMs: 30_000 });
      assert.equal(r.stdout, 'RPROTECTED OK\nLONG OK\nMMIO OK\n');
      assert.equal(r.code, 1, r.stderr);
      ok(qemuImg('check', s.path('top.qcow2')), 'overlay clean');
      assert.ok(readFileSync(s.path('top.qcow2')).equals(before), 'a guest that wrote nothing changed nothing');
    } finally {
      s.done();
    }
  });
