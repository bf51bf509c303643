/**
 * Snapshot files as an attacker would plant them (docs/security.md): saves
 * that must not write through symlinks, over other users' files or outside
 * snapshot.dir; temporary names nobody can guess; keys and HMACs; a RAM
 * image changed after a restore that the guest must not see.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync,
  symlinkSync, writeFileSync, writeSync, closeSync, readSync,
} from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, ExitCode, ControlServer, connectVm, parseBhyveArgs, UserError, type ConfigTree } from '../src/index.js';
import { loadRamImage, readSnapshot, writeSnapshot, partChecksum, PARTS, type SaveOptions } from '../src/snapshot/file.js';
import { createGuestRam } from '../src/memory/ram.js';
import { SnapshotError, StateWriter } from '../src/snapshot/state.js';
import { readKeyFile } from '../src/snapshot/secure-files.js';
import { kvmUnavailable, guestBin, runCli } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'tshyve-snapfiles-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const fresh = () => { const d = join(dir, `t${n++}`); mkdirSync(d); return d; };

const RAM = Buffer.alloc(1 << 20);
RAM.write('guest memory', 0x1000);
const parts = () => ({ config: { 'memory.size': '1M' }, vm: new StateWriter(), vcpus: [new StateWriter()], devices: [] });
const save = (file: string, opts: SaveOptions = {}) => writeSnapshot(file, RAM, [[0, RAM.length]], parts(), opts);

/** Asserts `p` rejects with one line matching `re`. */
async function refused(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error) => {
    assert.ok(e instanceof UserError || e instanceof SnapshotError, `a UserError, not ${e.constructor.name}: ${e.message}`);
    assert.equal(e.message.split('\n').length, 1);
    assert.match(e.message, re);
    return true;
  });
}

test('a save never writes through a symlink at the document or RAM image name', async () => {
  const d = fresh();
  const victim = join(d, 'victim');
  writeFileSync(victim, 'precious');
  symlinkSync(victim, join(d, 'a.ckp'));
  await refused(save(join(d, 'a.ckp')), /will not save over .*a\.ckp: it is a symbolic link/);
  symlinkSync(victim, join(d, 'b.ckp.ram'));
  await refused(save(join(d, 'b.ckp')), /will not save over .*b\.ckp\.ram: it is a symbolic link/);
  assert.equal(readFileSync(victim, 'utf8'), 'precious');
  assert.deepEqual(readdirSync(d).sort(), ['a.ckp', 'b.ckp.ram', 'victim'], 'no temporary file is left behind');
});

test('temporary files have unpredictable names: symlinks planted at the old FILE.ram.tmp-PID names are not followed', async () => {
  const d = fresh();
  const victim = join(d, 'victim');
  writeFileSync(victim, 'precious');
  for (const t of [`c.ckp.ram.tmp-${process.pid}`, `c.ckp.tmp-${process.pid}`]) symlinkSync(victim, join(d, t));
  const seen: string[][] = [];
  const opts = { onProgress: () => { seen.push(readdirSync(d).filter((f) => f.startsWith('.'))); } };
  await save(join(d, 'c.ckp'), opts);
  await save(join(d, 'c.ckp'), opts);
  assert.equal(readFileSync(victim, 'utf8'), 'precious');
  const names = [...new Set(seen.flat())];
  assert.equal(names.length, 2, `one temporary RAM image per save: ${names}`);
  for (const t of names) assert.match(t, /^\.c\.ckp\.ram\.[0-9a-f]{16}\.tmp$/);
  assert.deepEqual(readdirSync(d).filter((f) => f.startsWith('.')), [], 'temporaries renamed away');
  assert.equal(statSync(join(d, 'c.ckp')).mode & 0o777, 0o600);
  assert.equal(statSync(join(d, 'c.ckp.ram')).mode & 0o777, 0o600);
});

test('a save replaces only a regular file of this user: not a directory, a FIFO, or another user\'s file', async (t) => {
  const d = fresh();
  mkdirSync(join(d, 'dir.ckp'));
  await refused(save(join(d, 'dir.ckp')), /will not save over .*dir\.ckp: it is not a regular file/);
  execFileSync('mkfifo', [join(d, 'fifo.ckp')]);
  await refused(save(join(d, 'fifo.ckp')), /fifo\.ckp: it is not a regular file/);
  await refused(save(join(d, 'nodir', 'x.ckp')), /its directory .*nodir does not exist/);
  writeFileSync(join(d, 'file'), '');
  await refused(save(join(d, 'file', 'x.ckp')), /its directory .*file is not a directory/);
  writeFileSync(join(d, 'mine.ckp'), 'old');
  await save(join(d, 'mine.ckp'));
  assert.notEqual(readFileSync(join(d, 'mine.ckp'), 'utf8'), 'old', 'an own regular file is replaced');
  if (process.geteuid?.() !== 0) { t.diagnostic('not root: cannot make a file of another user'); return; }
  writeFileSync(join(d, 'theirs.ckp'), 'theirs');
  chownSync(join(d, 'theirs.ckp'), 65534, 65534);
  await refused(save(join(d, 'theirs.ckp')), /theirs\.ckp: it belongs to uid 65534, not to this user \(uid 0\)/);
  assert.equal(readFileSync(join(d, 'theirs.ckp'), 'utf8'), 'theirs');
});

test('snapshot.dir confines saves: .., a symlinked directory leading out, a path outside are refused', async () => {
  const root = fresh();
  const inside = join(root, 'snaps'), outside = join(root, 'elsewhere');
  mkdirSync(inside); mkdirSync(outside); mkdirSync(join(inside, 'sub'));
  writeFileSync(join(outside, 'x.ckp'), 'precious');
  symlinkSync(outside, join(inside, 'link'));
  const within = { within: inside };
  await refused(save(join(inside, '..', 'elsewhere', 'x.ckp'), within), /outside snapshot\.dir/);
  await refused(save(join(inside, 'link', 'x.ckp'), within), /outside snapshot\.dir/);
  await refused(save(join(outside, 'y.ckp'), within), /outside snapshot\.dir/);
  await refused(save(join(`${inside}-x`, 'y.ckp'), within), /directory .* does not exist/);
  assert.equal(readFileSync(join(outside, 'x.ckp'), 'utf8'), 'precious');
  assert.deepEqual(readdirSync(outside), ['x.ckp']);
  await save(join(inside, 'sub', 'ok.ckp'), within);
  await save(join(inside, 'sub', '..', 'ok2.ckp'), within);
  assert.ok(existsSync(join(inside, 'sub', 'ok.ckp.ram')) && existsSync(join(inside, 'ok2.ckp')));
});

test('snapshot.key: an HMAC that a recomputed checksum cannot forge, SHA-256 over RAM that a kept CRC cannot; the key file must be private', async () => {
  const d = fresh();
  const keyFile = join(d, 'key'), key2File = join(d, 'key2');
  writeFileSync(keyFile, 'k'.repeat(32), { mode: 0o600 });
  writeFileSync(key2File, 'j'.repeat(32), { mode: 0o600 });
  const key = readKeyFile(keyFile);
  const file = join(d, 's.ckp');
  await save(file, { key });
  assert.match(readFileSync(file, 'utf8'), /"hmac\$sha256": "[0-9a-f]{64}"/);
  assert.equal(readSnapshot(file, { key }).authenticated, true);
  assert.throws(() => readSnapshot(file, { key: readKeyFile(key2File) }), /its HMAC does not match snapshot\.key/);
  // An attacker edits a part and recomputes its checksum: the checksums pass, the HMAC does not.
  const o = JSON.parse(readFileSync(file, 'utf8')) as Record<string, any>;
  o['config']['memory.size$str'] = '2M';
  for (const p of PARTS) o['checksums'][`${p}$sha256`] = partChecksum(o[p]);
  writeFileSync(file, JSON.stringify(o));
  assert.throws(() => readSnapshot(file, { key }), /its HMAC does not match snapshot\.key/);
  assert.doesNotThrow(() => readSnapshot(file), 'without a key, checksums alone are checked');
  delete o['hmac$sha256'];
  writeFileSync(file, JSON.stringify(o));
  assert.throws(() => readSnapshot(file, { key }), /carries no HMAC, and snapshot\.key asks for one/);
  // RAM: XOR-ing the CRC-32 polynomial into a chunk keeps its CRC; the keyed SHA-256 still finds it.
  const signed = join(d, 'ram.ckp');
  await save(signed, { key });
  const fd = openSync(`${signed}.ram`, 'r+');
  const b = Buffer.alloc(5);
  readSync(fd, b, 0, 5, 0x1000);
  [0x41, 0x06, 0x71, 0xdb, 0x01].forEach((x, i) => { b[i]! ^= x; });
  writeSync(fd, b, 0, 5, 0x1000);
  closeSync(fd);
  const restore = (opts: { key?: Buffer }, verify: boolean) => loadRamImage(readSnapshot(signed, opts), createGuestRam(RAM.length), verify);
  assert.doesNotThrow(() => restore({}, true), 'every CRC still matches');
  assert.throws(() => restore({ key }, false), /RAM image .* is damaged at offset 0x0 \(SHA-256 mismatch\)/);
  // The key file itself.
  chmodSync(keyFile, 0o640);
  assert.throws(() => readKeyFile(keyFile), /is open to group or others \(mode 640\)/);
  writeFileSync(join(d, 'short'), 'x'.repeat(31), { mode: 0o600 });
  assert.throws(() => readKeyFile(join(d, 'short')), /holds 31 bytes; a key needs at least 32/);
  execFileSync('mkfifo', ['-m', '600', join(d, 'fifo')]);
  assert.throws(() => readKeyFile(join(d, 'fifo')), /is not a regular file/);
  assert.throws(() => readKeyFile(d), /is not a regular file/);
});

const skip = kvmUnavailable() ?? (guestBin('counter') ? undefined : 'guest programs not built (nasm missing)');
function config(out: string, extra: string[] = []): ConfigTree {
  return parseBhyveArgs(['-m', '16M', '-l', `com1,${out}`, '-o', `boot.raw=${guestBin('counter') ?? ''}`, '-o', 'x86.halt_check_ms=0', ...extra, 'snap']).config;
}

const running = (m: Machine) => new Promise((r) => m.once('running', r));

test('after a restore, writing to the RAM image does not change what the guest sees', { skip }, async () => {
  const d = fresh();
  const snap = join(d, 'r.ckp');
  const m = await Machine.create(config(join(d, 'a.out')));
  const done = m.run();
  await running(m);
  await m.suspend(snap);
  assert.equal(await done, ExitCode.REBOOT);
  const m2 = await Machine.create(config(join(d, 'b.out')), { restore: readSnapshot(snap) });
  // 0x1000: the guest program's code (data in the image); 8 MiB: a hole the guest never touched.
  const code = Buffer.from(m2.mem.read(0x1000, 64));
  assert.ok(code.some((b) => b !== 0), 'the guest program is at 0x1000');
  const fd = openSync(`${snap}.ram`, 'r+');
  writeSync(fd, Buffer.alloc(64, 0xcc), 0, 64, 0x1000);
  writeSync(fd, Buffer.alloc(64, 0xcc), 0, 64, 8 << 20);
  const back = Buffer.alloc(64);
  readSync(fd, back, 0, 64, 0x1000);
  closeSync(fd);
  assert.ok(back.every((b) => b === 0xcc), 'the image was changed');
  assert.deepEqual(Buffer.from(m2.mem.read(0x1000, 64)), code);
  assert.ok(m2.mem.read(8 << 20, 64).every((b) => b === 0));
  await m2.finish(ExitCode.POWEROFF);
});

test('tshyve -r with snapshot.key: the key must match; a bad key file is one line, exit 4', { skip }, async () => {
  const d = fresh();
  const keyFile = join(d, 'key');
  writeFileSync(keyFile, randomKey(), { mode: 0o600 });
  const snap = join(d, 'k.ckp');
  const m = await Machine.create(config(join(d, 'a.out'), ['-o', `snapshot.key=${keyFile}`]));
  const done = m.run();
  await running(m);
  await m.suspend(snap);
  await done;
  const args = (key: string) => ['-m', '16M', '-l', 'com1,stdio', '-o', `snapshot.key=${key}`, '-r', snap, 'snap'];
  const ok = await runCli(args(keyFile), { timeoutMs: 20_000, onStdout: (s, child) => { if (s.includes('\n')) child.kill('SIGINT'); } });
  assert.equal(ok.code, 1, ok.stderr);
  writeFileSync(join(d, 'other'), randomKey(), { mode: 0o600 });
  chmodSync(join(d, 'other'), 0o600);
  for (const [key, re] of [[join(d, 'other'), /HMAC does not match snapshot\.key/], [d, /is not a regular file/]] as const) {
    const r = await runCli(args(key), { timeoutMs: 20_000 });
    assert.equal(r.code, 4, r.stderr);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, re);
  }
  chmodSync(keyFile, 0o604);
  const r = await runCli(args(keyFile), { timeoutMs: 20_000 });
  assert.equal(r.code, 4);
  assert.match(r.stderr, /^tshyve: snapshot\.key .* is open to group or others \(mode 604\); chmod 600 it\n$/);
});

function randomKey(): Buffer { return Buffer.from(Array.from({ length: 48 }, () => Math.floor(Math.random() * 256))); }

test('the control socket: with snapshot.dir, a checkpoint outside it is refused with one line; inside it works', { skip }, async () => {
  const d = fresh();
  const inside = join(d, 'snaps');
  mkdirSync(inside);
  const m = await Machine.create(config(join(d, 'a.out'), ['-o', `snapshot.dir=${inside}`]));
  const server = new ControlServer(m);
  const sock = join(d, 'c.sock');
  await server.listen(sock);
  const done = m.run();
  try {
    await running(m);
    const vm = await connectVm(sock);
    await assert.rejects(vm.checkpoint(join(inside, '..', 'out.ckp')), (e: Error) => /outside snapshot\.dir/.test(e.message) && !e.message.includes('\n'));
    await assert.rejects(vm.checkpoint('/etc/passwd'), /outside snapshot\.dir/);
    assert.ok(!existsSync(join(d, 'out.ckp')));
    const r = await vm.checkpoint(join(inside, 'in.ckp'));
    assert.equal(r.ramBytes, 16 << 20);
    assert.ok(lstatSync(join(inside, 'in.ckp')).isFile());
    vm.close();
  } finally {
    await m.finish(ExitCode.POWEROFF);
    await done;
    await server.close();
  }
});
