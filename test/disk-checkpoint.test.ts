/**
 * Level 2: checkpoints that include disks, on the host's KVM. The `counter`
 * guest runs with virtio-blk disks it never touches (each on its I/O
 * thread); the host writes the disks between the checkpoint and the
 * restore, as a guest that went on would. An internal checkpoint takes a
 * qcow2 snapshot that -r applies; an external one leaves the disk as it
 * was under a new overlay, and -r goes on from that disk. NVMe namespaces
 * (on their I/O thread) take part as virtio-blk disks do.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, ExitCode, parseBhyveArgs, type ConfigTree } from '../src/index.js';
import { partChecksum, readSnapshot } from '../src/snapshot/file.js';
import { openImage } from '../src/devices/block/index.js';
import { createQcow2 } from '../src/devices/block/qcow2/create.js';
import { assertOverlay, qemuImg, skipNoQemu } from '../src/devices/block/qcow2/testing.js';
import { kvmUnavailable, guestBin, runCli } from './helpers.js';

const skip = kvmUnavailable() ?? (guestBin('counter') ? undefined : 'guest programs not built (nasm missing)') ?? skipNoQemu;
const dir = mkdtempSync(join(tmpdir(), 'tshyve-diskckpt-'));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const SIZE = 1 << 20;
const A = Buffer.alloc(65536, 0xa1), B = Buffer.alloc(65536, 0xb2);
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

type Dev = 'virtio-blk' | 'nvme';
function args(disks: string[], com1 = 'stdio', dev: Dev = 'virtio-blk'): string[] {
  return ['-m', '16M', '-s', '0,hostbridge', ...disks.flatMap((d, i) => ['-s', `${4 + i},${dev},${d}`]), '-l', `com1,${com1}`,
    '-o', `boot.raw=${guestBin('counter') ?? ''}`, '-o', 'x86.halt_check_ms=0', 'dck'];
}
let outs = 0;
/** The VM's config, its console in a file of its own. */
function config(disks: string[], dev?: Dev): { cfg: ConfigTree; out: string } {
  const out = join(dir, `${++outs}.out`);
  return { cfg: parseBhyveArgs(args(disks, out, dev)).config, out };
}

/** Start the VM and wait until the guest prints. */
async function start(disks: string[], restore?: string, dev?: Dev): Promise<{ m: Machine; done: Promise<ExitCode> }> {
  const { cfg, out } = config(disks, dev);
  const m = await Machine.create(cfg, { restore: restore === undefined ? undefined : readSnapshot(restore) });
  const done = m.run();
  for (const t0 = Date.now(); !existsSync(out) || readFileSync(out, 'utf8').split('\n').length < 3; await sleep(20)) {
    if (Date.now() - t0 > 30_000) throw new Error('the guest printed nothing');
  }
  return { m, done };
}
async function stop(v: { m: Machine; done: Promise<ExitCode> }): Promise<void> {
  await v.m.finish(ExitCode.POWEROFF);
  assert.equal(await v.done, ExitCode.POWEROFF);
}

function writeAt(path: string, off: number, data: Buffer): void {
  const b = openImage({ path });
  try { b.write(data, off); b.flush(); } finally { b.close(); }
}
function readAt(path: string, off: number, len: number): Buffer {
  const b = openImage({ path, readonly: true });
  try { const out = Buffer.alloc(len); b.read(out, off); return out; } finally { b.close(); }
}

/** The files of `dev`'s runs, in a folder of its own (the same names for both: the assertions name them). */
function files(dev: Dev): { d: string; qcow: string; raw: string; snap: string } {
  const d = dev === 'virtio-blk' ? dir : join(dir, dev);
  mkdirSync(d, { recursive: true });
  return { d, qcow: join(d, 'disk.qcow2'), raw: join(d, 'disk.img'), snap: join(d, 'vm.ckp') };
}
const { qcow, raw, snap } = files('virtio-blk');

for (const dev of ['virtio-blk', 'nvme'] as const) test(`--checkpoint (${dev}): qcow2 disks get a snapshot named after the file, raw ones are named in one warning; -r applies it`, { skip }, async () => {
  const { qcow, raw, snap } = files(dev);
  createQcow2(qcow, { size: SIZE });
  writeFileSync(raw, Buffer.alloc(SIZE));
  writeAt(qcow, 0, A);
  writeAt(raw, 0, A);
  const v = await start([qcow, raw], undefined, dev);
  const r = await v.m.checkpoint(snap);
  assert.deepEqual(r.disks, [
    { id: 'pci.0.4.0', path: qcow, format: 'qcow2', readonly: false, snapshot: 'vm.ckp' },
    { id: 'pci.0.5.0', path: raw, format: 'raw', readonly: false },
  ]);
  assert.match(r.warning ?? '', /^raw disks have no snapshots .*: pci\.0\.5\.0 \(.*disk\.img\)$/);
  await stop(v);
  const list = qemuImg('snapshot', '-l', qcow);
  assert.match(list.out, /\bvm\.ckp\b/, list.out);

  // the guest went on writing after the checkpoint
  writeAt(qcow, 0, B);
  writeAt(raw, 0, B);
  await stop(await start([qcow, raw], snap, dev));
  assert.deepEqual(readAt(qcow, 0, A.length), A, 'the qcow2 disk holds what it held at the checkpoint');
  assert.deepEqual(readAt(raw, 0, B.length), B, 'a raw disk is not part of it');
  assert.equal(qemuImg('check', qcow).status, 0);
});

test('tshyve -r refuses, in one line with exit 4, a disk without the snapshot or a missing disk', { skip }, async () => {
  assert.ok(existsSync(snap), 'the test above made a checkpoint');
  const copy = join(dir, 'copy.qcow2');
  assert.equal(qemuImg('convert', '-O', 'qcow2', qcow, copy).status, 0); // the same data, no snapshots
  const before = sha(copy);
  let r = await runCli([...args([copy, raw]).slice(0, -1), '-r', snap, 'dck'], { timeoutMs: 30_000 });
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr, /^tshyve: snapshot .*vm\.ckp: disk pci\.0\.4\.0: '.*copy\.qcow2' holds no qcow2 snapshot 'vm\.ckp'\n$/);
  assert.equal(sha(copy), before, 'nothing was changed');
  r = await runCli([...args([join(dir, 'gone.qcow2'), raw]).slice(0, -1), '-r', snap, 'dck'], { timeoutMs: 30_000 });
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr, /^tshyve: snapshot .*: disk pci\.0\.4\.0: '.*gone\.qcow2' is missing\n$/);
});

test('a snapshot document naming odd disks is refused before anything is opened', { skip }, () => {
  const doc = JSON.parse(readFileSync(snap, 'utf8')) as Record<string, unknown> & { disks: Record<string, unknown>[]; checksums: Record<string, string> };
  const bad = (name: string, edit: (d: Record<string, unknown>) => void, why: RegExp) => {
    const d = structuredClone(doc);
    edit(d.disks[0]!);
    d.checksums['disks$sha256'] = partChecksum(d.disks);
    const f = join(dir, `${name}.ckp`);
    writeFileSync(f, JSON.stringify(d));
    // (its RAM image is the checkpoint's, named in the document)
    assert.throws(() => readSnapshot(f), (e: Error) => why.test(e.message) && !e.message.includes('\n'));
  };
  bad('relative', (d) => { d['path$str'] = '../../etc/shadow'; }, /disks\[0\]\.path: not an absolute path/);
  bad('ctl', (d) => { d['snapshot$str'] = 'a\nb'; }, /disks\[0\]\.snapshot: not a snapshot name/);
  bad('both', (d) => { d['overlay$str'] = '/x.qcow2'; }, /not both/);
  bad('format', (d) => { d['format$str'] = 'vmdk'; }, /disks\[0\]\.format/);
  bad('id', (d) => { d['id$str'] = 'com1'; }, /disks\[0\]\.id: not a PCI device id/);
  // the part cannot be dropped while its checksum stays, nor the other way round
  const { disks: _, ...without } = doc;
  const f = join(dir, 'nodisks.ckp');
  writeFileSync(f, JSON.stringify(without));
  assert.throws(() => readSnapshot(f), /part 'disks' is missing/);
});

for (const dev of ['virtio-blk', 'nvme'] as const) test(`--ext-checkpoint (${dev}): every disk goes on in an overlay next to the file; its backing file stays; -r goes on from it`, { skip }, async () => {
  const { d } = files(dev);
  const base = join(d, 'base.qcow2'), rawBase = join(d, 'base.img'), ext = join(d, 'ext.ckp');
  createQcow2(base, { size: SIZE });
  writeFileSync(rawBase, Buffer.alloc(SIZE));
  writeAt(base, 0, A);
  writeAt(rawBase, 0, A);
  const v = await start([base, rawBase], undefined, dev);
  const r = await v.m.checkpoint(ext, { external: true });
  const ov = [`${ext}.pci.0.4.0.qcow2`, `${ext}.pci.0.5.0.qcow2`];
  assert.deepEqual(r.disks, [
    { id: 'pci.0.4.0', path: base, format: 'qcow2', readonly: false, overlay: ov[0] },
    { id: 'pci.0.5.0', path: rawBase, format: 'raw', readonly: false, overlay: ov[1] },
  ]);
  assert.equal(r.warning, undefined);
  await stop(v);
  [base, rawBase].forEach((b, i) => assertOverlay(ov[i]!, b, i === 0 ? 'qcow2' : 'raw', SIZE));
  const sums = [sha(base), sha(rawBase)];
  for (const o of ov) writeAt(o, 0, B); // the guest went on, in the overlays
  assert.deepEqual([sha(base), sha(rawBase)], sums, 'the backing files are untouched');
  assert.deepEqual(readAt(ov[0]!, 0, B.length), B);

  // restoring names the disks as they were; naming an overlay is refused
  await assert.rejects(Machine.create(config([ov[0]!, rawBase], dev).cfg, { restore: readSnapshot(ext) }), /is the overlay this checkpoint started/);
  await stop(await start([base, rawBase], ext, dev));
  assert.deepEqual(readAt(base, 0, A.length), A);
});
