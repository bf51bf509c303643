/**
 * The qcow2 backend against QEMU's own files: images qemu-img makes (v2
 * and v3, 512 B to 2 MiB clusters, compressed, refcount widths, a
 * three-level backing chain) read back byte for byte as their raw copy;
 * after random writes, discards and write-zeroes through the backend,
 * `qemu-img check` is clean and `qemu-img compare` matches a raw file that
 * got the same writes.
 */
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { FileBlockBackend, openImage, type BlockBackend } from '../index.js';
import { Qcow2Backend } from './image.js';
import { checkImage } from './check.js';
import { iovOf, pieces, qemuImg, randomBytes, randomOps, rng, scratchDir, skipNoQemu } from './testing.js';

const MiB = 1 << 20;

/** A raw disk of `size` bytes: random data in places, zeros elsewhere. */
function rawDisk(path: string, size: number, seed: number): Buffer {
  const r = rng(seed);
  const b = Buffer.alloc(size);
  for (let i = 0; i < 24; i++) {
    const off = r(size), len = Math.min(size - off, 1 + r(300 * 1024));
    randomBytes(r, len).copy(b, off);
  }
  writeFileSync(path, b);
  return b;
}

/** Read the whole image in random pieces, through read and readv alike. */
function readAll(img: BlockBackend, seed: number): Buffer {
  const r = rng(seed);
  const out = Buffer.alloc(img.size);
  for (let off = 0; off < img.size;) {
    const len = Math.min(img.size - off, 1 + r(700 * 1024));
    const piece = out.subarray(off, off + len);
    if (r(2) === 0 && img.readv) {
      const tmp = Buffer.alloc(len);
      img.readv(iovOf(tmp, pieces(r, len)), off);
      tmp.copy(piece);
    } else {
      img.read(piece, off);
    }
    off += len;
  }
  return out;
}

function ok(r: { status: number; out: string }, what: string): void {
  assert.equal(r.status, 0, `${what}: ${r.out}`);
}

const kinds = [
  { compat: '0.10', cluster: '4k' }, { compat: '1.1', cluster: '4k' },
  { compat: '0.10', cluster: '64k' }, { compat: '1.1', cluster: '64k' },
  { compat: '1.1', cluster: '2M' }, { compat: '1.1', cluster: '512' },
];

test('qemu-img images of every kind read back as their raw copy', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const raw = rawDisk(s.path('disk.raw'), 6 * MiB + 3 * 512, 7);
    for (const k of kinds) {
      for (const compress of [false, true]) {
        const q = s.path(`d-${k.compat}-${k.cluster}-${compress}.qcow2`);
        ok(qemuImg('convert', '-O', 'qcow2', ...(compress ? ['-c'] : []), '-o', `compat=${k.compat},cluster_size=${k.cluster}`, s.path('disk.raw'), q), 'convert');
        const img = openImage({ path: q, readonly: true });
        try {
          assert.ok(img instanceof Qcow2Backend);
          assert.equal(img.size, raw.length);
          assert.ok(readAll(img, 3).equals(raw), `${k.compat} ${k.cluster} compressed=${compress} reads back as the raw disk`);
        } finally {
          img.close();
        }
      }
    }
  } finally {
    s.done();
  }
});

test('a three-level backing chain with relative names reads as qemu-img flattens it', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    rawDisk(s.path('base.raw'), 4 * MiB, 11);
    ok(qemuImg('convert', '-O', 'qcow2', s.path('base.raw'), s.path('base.qcow2')), 'base');
    ok(qemuImg('create', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'base.qcow2', '-F', 'qcow2', s.path('mid.qcow2'), '5M'), 'mid');
    ok(qemuImg('create', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'mid.qcow2', '-F', 'qcow2', s.path('top.qcow2'), '6M'), 'top');
    // some writes at each level, made by QEMU
    const io = (f: string, cmd: string) => ok(qemuIo(f, cmd), cmd);
    io(s.path('mid.qcow2'), 'write -P 0x11 1M 300k');
    io(s.path('mid.qcow2'), 'write -z 2M 64k');
    io(s.path('top.qcow2'), 'write -P 0x22 1200k 8k');
    io(s.path('top.qcow2'), 'write -P 0x33 5M 100k');
    ok(qemuImg('convert', '-O', 'raw', s.path('top.qcow2'), s.path('flat.raw')), 'flatten');
    const flat = readFileSync(s.path('flat.raw'));
    const img = openImage({ path: s.path('top.qcow2'), readonly: true });
    try {
      assert.ok(readAll(img, 5).equals(flat));
    } finally {
      img.close();
    }
  } finally {
    s.done();
  }
});

/** qemu-io's exit status is 0 even when its command failed: look at what it says. */
function qemuIo(file: string, cmd: string): { status: number; out: string } {
  const r = spawnSync('/usr/bin/qemu-io', ['-f', 'qcow2', '-c', cmd, file], { encoding: 'utf8' });
  return { status: /error|fail/i.test(`${r.stdout}${r.stderr}`) ? 1 : r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

const writable = [
  { compat: '0.10', cluster: '64k', extra: '' }, { compat: '1.1', cluster: '4k', extra: '' },
  { compat: '1.1', cluster: '64k', extra: ',lazy_refcounts=on' }, { compat: '1.1', cluster: '2M', extra: '' },
  { compat: '1.1', cluster: '512', extra: '' },
  ...[1, 2, 4, 8, 32, 64].map((b) => ({ compat: '1.1', cluster: '4k', extra: `,refcount_bits=${b}` })),
];

test('random writes, discards and write-zeroes leave images qemu-img checks clean and finds equal to raw', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const size = 4 * MiB;
    let seed = 100;
    for (const k of writable) {
      for (const start of ['empty', 'data', 'compressed', 'backing'] as const) {
        if (k.extra.includes('refcount_bits') && start !== 'data') continue;
        seed++;
        const raw = s.path(`w${seed}.raw`), q = s.path(`w${seed}.qcow2`);
        const opts = `compat=${k.compat},cluster_size=${k.cluster}${k.extra}`;
        if (start === 'empty') {
          writeFileSync(raw, Buffer.alloc(size));
          ok(qemuImg('create', '-f', 'qcow2', '-o', opts, q, String(size)), 'create');
        } else if (start === 'backing') {
          rawDisk(s.path(`b${seed}.raw`), size, seed);
          ok(qemuImg('convert', '-O', 'qcow2', s.path(`b${seed}.raw`), s.path(`b${seed}.qcow2`)), 'base');
          ok(qemuImg('create', '-f', 'qcow2', '-o', opts, '-b', `b${seed}.qcow2`, '-F', 'qcow2', q, String(size)), 'overlay');
          writeFileSync(raw, readFileSync(s.path(`b${seed}.raw`)));
        } else {
          rawDisk(raw, size, seed);
          ok(qemuImg('convert', '-O', 'qcow2', ...(start === 'compressed' ? ['-c'] : []), '-o', opts, raw, q), 'convert');
        }
        const img = openImage({ path: q });
        const rf = FileBlockBackend.open({ path: raw });
        try {
          randomOps(rng(seed), [img, rf], size, 70);
          assert.ok(readAll(img, seed).equals(readFileSync(raw)), `${opts} ${start}: reads what was written`);
        } finally {
          img.close();
          rf.close();
        }
        ok(qemuImg('check', q), `${opts} ${start}: check`);
        ok(qemuImg('compare', '-f', 'raw', '-F', 'qcow2', raw, q), `${opts} ${start}: compare`);
        const back = openImage({ path: q, readonly: true }) as Qcow2Backend;
        const own = checkImage(back, false);
        back.close();
        assert.deepEqual([own.corruptions, own.leaks, own.flagErrors], [0, 0, 0], `${opts} ${start}: tshyve's check agrees: ${own.messages.join('; ')}`);
      }
    }
  } finally {
    s.done();
  }
});

test('a discarded whole cluster is freed and its hole punched once flushed', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const q = s.path('d.qcow2');
    ok(qemuImg('create', '-f', 'qcow2', q, '16M'), 'create');
    const img = openImage({ path: q });
    img.write(Buffer.alloc(8 * MiB, 0x5a), 0);
    img.flush();
    const before = statSync(q).blocks;
    img.discard(0, 8 * MiB);
    img.flush();
    const back = Buffer.alloc(MiB, 1);
    img.read(back, MiB);
    assert.ok(back.every((x) => x === 0));
    img.close();
    assert.ok(statSync(q).blocks < before / 2, `blocks ${before} -> ${statSync(q).blocks}`);
    ok(qemuImg('check', q), 'check');
  } finally {
    s.done();
  }
});

test('an image QEMU left dirty (lazy refcounts, killed) is repaired when opened for writing', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const q = s.path('dirty.qcow2');
    ok(qemuImg('create', '-f', 'qcow2', '-o', 'lazy_refcounts=on', q, '8M'), 'create');
    spawnSync('/usr/bin/qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 0 300k', '-c', 'sigraise 9', q]);
    assert.equal(readFileSync(q).readBigUInt64BE(72) & 1n, 1n, 'QEMU left the dirty bit');
    assert.equal(qemuImg('check', q).status, 2, 'refcounts QEMU never wrote');
    const img = openImage({ path: q });
    const b = Buffer.alloc(300 * 1024);
    img.read(b, 0);
    assert.ok(b.every((x) => x === 0x44));
    img.write(Buffer.alloc(4096, 1), MiB);
    img.close();
    assert.equal(readFileSync(q).readBigUInt64BE(72) & 1n, 0n, 'the dirty bit is cleared');
    ok(qemuImg('check', q), 'check');
  } finally {
    s.done();
  }
});

test('snapshots taken, applied and deleted between random writes keep the data and the refcounts exact', { skip: skipNoQemu }, () => {
  const s = scratchDir();
  try {
    const size = 2 * MiB;
    for (const [i, opts] of ['cluster_size=4k', 'compat=0.10,cluster_size=64k', 'cluster_size=512,refcount_bits=4'].entries()) {
      const q = s.path(`s${i}.qcow2`), raw = s.path(`s${i}.raw`);
      ok(qemuImg('create', '-f', 'qcow2', '-o', opts, q, String(size)), 'create');
      writeFileSync(raw, Buffer.alloc(size));
      const img = openImage({ path: q });
      const rf = FileBlockBackend.open({ path: raw });
      const r = rng(77 + i);
      const saved = new Map<string, Buffer>();
      try {
        for (let round = 0; round < 12; round++) {
          randomOps(r, [img, rf], size, 15, 64 * 1024);
          const names = [...saved.keys()];
          const pick = r(3);
          if (pick === 0 || names.length === 0) {
            const name = `snap${round}`;
            img.snapshots!.create(name);
            saved.set(name, readFileSync(raw));
          } else if (pick === 1) {
            const name = names[r(names.length)]!;
            img.snapshots!.apply(name);
            rf.write(saved.get(name)!, 0);
          } else {
            const name = names[r(names.length)]!;
            img.snapshots!.delete(name);
            saved.delete(name);
          }
          assert.ok(readAll(img, round).equals(readFileSync(raw)), `${opts} round ${round}`);
        }
      } finally {
        img.close();
        rf.close();
      }
      ok(qemuImg('check', q), `${opts}: check`);
      ok(qemuImg('compare', '-f', 'raw', '-F', 'qcow2', raw, q), `${opts}: compare`);
      const back = openImage({ path: q, readonly: true }) as Qcow2Backend;
      const own = checkImage(back, false);
      back.close();
      assert.deepEqual([own.corruptions, own.leaks, own.flagErrors], [0, 0, 0], `${opts}: tshyve's check agrees: ${own.messages.join('; ')}`);
      assert.deepEqual(new Set(qemuImg('snapshot', '-l', q).out.split('\n').slice(2).map((l) => l.split(/\s+/)[1]).filter(Boolean)), new Set(saved.keys()));
    }
  } finally {
    s.done();
  }
});
