/**
 * Level 2: save and restore a running guest program on the host's KVM.
 * The `counter` guest prints C<n> lines forever and checks that its count
 * in a register equals its count in memory: a restored guest must go on
 * from the checkpoint's count, with both intact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, statSync, copyFileSync, truncateSync, unlinkSync, mkdirSync, openSync, writeSync, closeSync, readSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, basename } from 'node:path';
import { Machine, ExitCode, parseBhyveArgs, type ConfigTree } from '../src/index.js';
import { readSnapshot, partChecksum, PARTS } from '../src/snapshot/file.js';
import { kvmUnavailable, guestBin, runCli } from './helpers.js';

const skip = kvmUnavailable() ?? (guestBin('counter') ? undefined : 'guest programs not built (nasm missing)');
const dir = mkdtempSync(join(tmpdir(), 'tshyve-snap-'));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The config the CLI makes of the same options (the restore check compares against it). */
function config(out: string): ConfigTree {
  return parseBhyveArgs(['-m', '16M', '-l', `com1,${out}`, '-o', `boot.raw=${guestBin('counter') ?? ''}`, '-o', 'x86.halt_check_ms=0', 'snap']).config;
}

/** The counts printed, checking they run 1, 2, 3... with no gap. */
function counts(text: string): number[] {
  const lines = text.split('\n').slice(0, -1); // the last line may be cut short by the end of the run
  const ns = lines.map((l) => { assert.match(l, /^C[0-9a-f]{8}$/, `a counter line: ${JSON.stringify(l)}`); return parseInt(l.slice(1), 16); });
  ns.forEach((n, i) => { if (i > 0) assert.equal(n, ns[i - 1]! + 1, `count ${ns[i - 1]} is followed by ${n}`); });
  return ns;
}

async function waitFor(pred: () => boolean, ms = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!pred()) { if (Date.now() - t0 > ms) throw new Error('timed out'); await sleep(20); }
}
const lineCount = (f: string) => (existsSync(f) ? readFileSync(f, 'utf8').split('\n').length - 1 : 0);

/** The file once it has stopped growing: console output the paused guest printed is written asynchronously (in chunks). */
async function settled(f: string): Promise<string> {
  let last = readFileSync(f, 'utf8');
  for (;;) {
    await sleep(100);
    const now = readFileSync(f, 'utf8');
    if (now === last) return now;
    last = now;
  }
}

let shared: string | undefined; // a snapshot the CLI tests below reuse
/** what the guest had printed when `shared` was taken: a restore of it may begin mid-line */
let sharedBefore = '';

test('checkpoint while running: the guest keeps running; a restore goes on from the checkpoint', { skip }, async () => {
  const out = join(dir, 'a.out'), snap = join(dir, 'ck.json');
  const m = await Machine.create(config(out));
  const done = m.run();
  await waitFor(() => lineCount(out) >= 5);
  // Paused around the checkpoint so what the guest had printed by then is known exactly.
  await m.pause();
  const progress: number[] = [];
  const r = await m.checkpoint(snap, { onProgress: (p) => progress.push(p.done) });
  const before = await settled(out);
  assert.equal(r.ramBytes, 16 * 2 ** 20);
  assert.equal(progress.at(-1), 16 * 2 ** 20, 'progress reaches the total');
  assert.equal(statSync(r.ramFile).size, 16 * 2 ** 20);
  assert.ok(statSync(r.ramFile).blocks * 512 < 4 * 2 ** 20, 'zero RAM is not written (sparse image)');
  m.resume();
  const n0 = lineCount(out);
  await waitFor(() => lineCount(out) >= n0 + 3); // still running after the checkpoint
  await m.finish(ExitCode.POWEROFF);
  assert.equal(await done, ExitCode.POWEROFF);

  const out2 = join(dir, 'b.out');
  const m2 = await Machine.create(config(out2), { restore: readSnapshot(snap) });
  const d2 = m2.run();
  await waitFor(() => lineCount(out2) >= 5);
  await m2.finish(ExitCode.POWEROFF);
  assert.equal(await d2, ExitCode.POWEROFF);
  // A line cut by the checkpoint is finished by the restored guest.
  const ns = counts(before + readFileSync(out2, 'utf8'));
  assert.ok(ns.length >= 10);
  shared = snap;
  sharedBefore = before;
});

test('suspend ends the VM with exit 0; two restores from one snapshot both go on from it', { skip }, async () => {
  const out = join(dir, 's.out'), snap = join(dir, 'susp.json');
  const m = await Machine.create(config(out));
  const done = m.run();
  await waitFor(() => lineCount(out) >= 3);
  await m.suspend(snap);
  assert.equal(await done, ExitCode.REBOOT, 'exit 0 after a suspend');
  const before = await settled(out);
  for (const run of ['r1', 'r2']) {
    const o = join(dir, `${run}.out`);
    const m2 = await Machine.create(config(o), { restore: readSnapshot(snap) });
    const d = m2.run();
    await waitFor(() => lineCount(o) >= 3);
    await m2.finish(ExitCode.POWEROFF);
    await d;
    counts(before + readFileSync(o, 'utf8'));
  }
});

test('a restored VM (RAM copy-on-write from the image) is checkpointed again, and that restores too', { skip }, async () => {
  assert.ok(shared, 'the first test made a snapshot');
  const o1 = join(dir, 'cow1.out'), o2 = join(dir, 'cow2.out'), ck2 = join(dir, 'cow.json');
  const m = await Machine.create(config(o1), { restore: readSnapshot(shared!) });
  const d = m.run();
  await waitFor(() => lineCount(o1) >= 5);
  await m.suspend(ck2);
  assert.equal(await d, ExitCode.REBOOT);
  const m2 = await Machine.create(config(o2), { restore: readSnapshot(ck2) });
  const d2 = m2.run();
  await waitFor(() => lineCount(o2) >= 5);
  await m2.finish(ExitCode.POWEROFF);
  await d2;
  // what the checkpointed VM printed, then the first restore, then the second: one
  // unbroken count (each save may land mid-line; the restore finishes the line)
  const ns = counts(sharedBefore + readFileSync(o1, 'utf8') + readFileSync(o2, 'utf8'));
  assert.ok(ns.length >= 10);
});

test('tshyve -r restores from the command line', { skip }, async () => {
  assert.ok(shared, 'the first test made a snapshot');
  const r = await runCli(['-m', '16M', '-l', 'com1,stdio', '-o', `boot.raw=${guestBin('counter')}`, '-o', 'x86.halt_check_ms=0', '-r', shared!, 'snap'], {
    timeoutMs: 30_000,
    onStdout: (s, child) => { if (s.split('\n').length > 6) child.kill('SIGINT'); },
  });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stdout, /^C[0-9a-f]{8}$/m);
});

/** A copy of the shared snapshot, changed by `edit`; returns the document's path. */
function damaged(name: string, edit: (doc: string, ram: string) => void): string {
  // Same file names in a directory of its own: the document names its RAM image.
  mkdirSync(join(dir, name));
  const doc = join(dir, name, basename(shared!)), ram = `${doc}.ram`;
  copyFileSync(shared!, doc);
  copyFileSync(`${shared!}.ram`, ram);
  edit(doc, ram);
  return doc;
}

/** Edit the document; with resign, the checksums are made to match, so the field's own check must catch it. */
function editJson(doc: string, f: (o: Record<string, any>) => void, resign = false): void {
  const o = JSON.parse(readFileSync(doc, 'utf8')) as Record<string, any>;
  f(o);
  if (resign) for (const p of PARTS) o['checksums'][`${p}$sha256`] = partChecksum(o[p]);
  writeFileSync(doc, JSON.stringify(o));
}

/** The snapshot's entry for device `id` (the devices part is one list: the PCI host, com1, rtc, pm, post). */
function device(o: Record<string, any>, id: string): Record<string, any> {
  const d = (o['devices'] as Record<string, any>[]).find((x) => x['id$str'] === id);
  assert.ok(d, `the snapshot has ${id}`);
  return d;
}

const badInputs: [string, () => string, RegExp][] = [
  ['a truncated document', () => damaged('trunc', (d) => { truncateSync(d, Math.floor(statSync(d).size / 2)); }), /not valid JSON/],
  ['a flipped bit in a part', () => damaged('flip', (d) => {
    const t = readFileSync(d, 'utf8');
    const i = t.indexOf('"rip$u64": "') + 12;
    writeFileSync(d, t.slice(0, i) + (t[i] === '1' ? '0' : '1') + t.slice(i + 1));
  }), /checksum of part 'vcpus' does not match/],
  ['a wrong magic', () => damaged('magic', (d) => editJson(d, (o) => { o['magic$str'] = 'qemu-savevm'; })), /not a tshyve snapshot \(wrong magic\)/],
  ['a future version', () => damaged('ver', (d) => editJson(d, (o) => { o['version$u32'] = 99; })), /version 99 snapshot/],
  ['a truncated RAM image', () => damaged('ramtrunc', (_d, r) => { truncateSync(r, 4096); }), /RAM image .* is 4096 bytes, expected 16777216/],
  ['a missing RAM image', () => damaged('ramgone', (_d, r) => { unlinkSync(r); }), /RAM image .* cannot be read \(ENOENT\)/],
  ['a changed part without its checksum', () => damaged('ramname', (d) => editJson(d, (o) => { o['ram']['file$str'] = 'other.ram'; })), /checksum of part 'ram' does not match/],
  ['a UART FIFO longer than the FIFO', () => damaged('fifo', (d) => editJson(d, (o) => {
    device(o, 'com1')['state']['rxFifo$b64'] = Buffer.alloc(17).toString('base64');
  }, true)), /snapshot field snapshot\.devices\[1\]\.state\.rxFifo: 17 bytes, expected 0-16/],
  ['an MP state out of range', () => damaged('mp', (d) => editJson(d, (o) => { o['vcpus'][0]['mpState$u32'] = 99; }, true)), /vcpus\[0\]\.mpState: 99 is not an integer in \[0, 8\]/],
  ['a missing field', () => damaged('nofield', (d) => editJson(d, (o) => { delete o['vcpus'][0]['lapic$b64']; }, true)), /vcpus\[0\]\.lapic: missing/],
  ['a device the VM does not have', () => damaged('nodev', (d) => editJson(d, (o) => { device(o, 'com1')['id$str'] = 'com3'; }, true)), /com3 is not in this VM/],
  ['a device twice', () => damaged('twice', (d) => editJson(d, (o) => {
    const devs = o['devices'] as unknown[];
    devs[devs.indexOf(device(o, 'rtc'))] = structuredClone(device(o, 'com1'));
  }, true)), /devices\[2\]\.id: com1 is in the snapshot twice/],
  ['a device of another kind', () => damaged('kind', (d) => editJson(d, (o) => { device(o, 'com1')['kind$str'] = 'rtc'; }, true)), /rtc com1 is not in this VM/],
  ['a device missing', () => damaged('fewer', (d) => editJson(d, (o) => { o['devices'].pop(); }, true)), /the snapshot has 4 devices, this VM has 5/],
  ['a version 1 snapshot (before the one device list)', () => damaged('v1', (d) => editJson(d, (o) => {
    o['version$u32'] = 1;
    o['devices'] = { 'pciAddress$u32': 0, pci: [], uarts: [{ 'name$str': 'com1', state: device(o, 'com1')['state'] }], rtc: device(o, 'rtc')['state'], pm: device(o, 'pm')['state'] };
  }, true)), /is a version 1 snapshot; this tshyve reads version 2/],
];

for (const [what, make, re] of badInputs) {
  test(`tshyve -r refuses ${what} with one line and exit 4`, { skip }, async () => {
    const doc = make();
    const r = await runCli(['-m', '16M', '-l', 'com1,stdio', '-r', doc, 'snap'], { timeoutMs: 20_000 });
    assert.equal(r.code, 4, r.stderr);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, re);
    assert.equal(r.stdout, '', 'no VM ran');
  });
}

test('tshyve -r refuses a snapshot of another machine: -m differs', { skip }, async () => {
  const r = await runCli(['-m', '32M', '-l', 'com1,stdio', '-r', shared!, 'snap'], { timeoutMs: 20_000 });
  assert.equal(r.code, 4);
  assert.match(r.stderr, /^tshyve: the snapshot was taken with memory\.size=16M, this command line has memory\.size=32M\n$/);
});

test('snapshot.verify_ram=true finds a flipped bit in the RAM image before starting', { skip }, async () => {
  const doc = damaged('ramflip', (_d, ram) => {
    const fd = openSync(ram, 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, 0x1000);
    b[0]! ^= 0x10;
    writeSync(fd, b, 0, 1, 0x1000);
    closeSync(fd);
  });
  const r = await runCli(['-m', '16M', '-l', 'com1,stdio', '-o', 'snapshot.verify_ram=true', '-r', doc, 'snap'], { timeoutMs: 20_000 });
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr, /RAM image .* is damaged at offset 0x0 \(CRC mismatch\)/);
});

test('a firmware-booted VM (-l bootrom) restores with its fw_cfg offset and its PIIX4 PM block in place', { skip: kvmUnavailable() ?? (guestBin('fwcfg-pause') ? undefined : 'guest programs not built (nasm missing)') }, async () => {
  const fwConfig = (out: string) => parseBhyveArgs(['-m', '16M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', `com1,${out}`,
    // x86.irqchip=kernel: auto picks user-space interrupt controllers (no snapshots yet) on a virtualized host
    '-l', `bootrom,${guestBin('fwcfg-pause')!}`, '-o', 'x86.halt_check_ms=0', '-o', 'x86.irqchip=kernel', 'fwsnap']).config;
  const out = join(dir, 'fw.out'), snap = join(dir, 'fw.json');
  const m = await Machine.create(fwConfig(out));
  const done = m.run();
  await waitFor(() => existsSync(out) && readFileSync(out, 'utf8') === 'QE');
  await m.suspend(snap);
  assert.equal(await done, ExitCode.REBOOT);
  const doc = JSON.parse(readFileSync(snap, 'utf8')) as Record<string, any>;
  assert.deepEqual(device(doc, 'fwcfg')['state'], { 'selector$u16': 0, 'offset$u32': 2, 'dmaHigh$u32': 0 });
  device(doc, 'bootrom');
  device(doc, 'pci.0.1.3');

  const out2 = join(dir, 'fw2.out');
  const m2 = await Machine.create(fwConfig(out2), { restore: readSnapshot(snap) });
  m2.mem.writeU8(0x500, 1); // let the guest go on
  assert.equal(await m2.run(), ExitCode.POWEROFF, 'powered off through the PM block at 0xB000');
  assert.equal(await settled(out2), 'MU\n', 'the signature goes on where the snapshot left it');
});

test('a firmware-booted VM with a variable store restores mid-command: the flash finishes the program the snapshot caught, into VARFILE', { skip: kvmUnavailable() ?? (guestBin('fwflash-pause') ? undefined : 'guest programs not built (nasm missing)') }, async () => {
  const vars = join(dir, 'fwflash-vars.fd');
  writeFileSync(vars, Buffer.alloc(4096, 0xff)); // the 12 KiB ROM's store: 16 KiB in all
  const fwConfig = (out: string) => parseBhyveArgs(['-m', '16M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', `com1,${out}`,
    // x86.irqchip=kernel: auto picks user-space interrupt controllers (no snapshots yet) on a virtualized host
    '-l', `bootrom,${guestBin('fwflash-pause')!},${vars}`, '-o', 'x86.halt_check_ms=0', '-o', 'x86.irqchip=kernel', 'fwflash']).config;
  const out = join(dir, 'fwflash.out'), snap = join(dir, 'fwflash.json');
  const m = await Machine.create(fwConfig(out));
  const done = m.run();
  try {
    await waitFor(() => existsSync(out) && readFileSync(out, 'utf8') === 'P');
  } catch (e) { await m.finish(ExitCode.ERROR); throw e; }
  await m.suspend(snap);
  assert.equal(await done, ExitCode.REBOOT);
  const doc = JSON.parse(readFileSync(snap, 'utf8')) as Record<string, any>;
  const flash = device(doc, 'bootrom')['state'] as Record<string, unknown>;
  assert.equal(flash['pending$u8'], 1, 'a program command pending (Pending.PROGRAM)');
  assert.equal(flash['varsSize$u32'], 4096);
  assert.equal(readFileSync(vars)[0x10], 0xff, 'not programmed yet');
  writeFileSync(vars, Buffer.alloc(4096, 0x00)); // the restore puts the saved store back into VARFILE

  const out2 = join(dir, 'fwflash2.out');
  const m2 = await Machine.create(fwConfig(out2), { restore: readSnapshot(snap) });
  m2.mem.writeU8(0x500, 1); // let the guest go on
  const timer = setTimeout(() => void m2.finish(ExitCode.ERROR, 'timed out'), 30_000);
  assert.equal(await m2.run(), ExitCode.POWEROFF, m2.errorMessage);
  clearTimeout(timer);
  assert.equal(await settled(out2), 'SV\n', 'the data cycle completed the pending program: status ready, the byte in the array');
  const file = readFileSync(vars);
  assert.equal(file[0x10], 0xa5, 'the program reached VARFILE');
  assert.equal(file[0x11], 0xff, 'the rest is the saved store');
});
