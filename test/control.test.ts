/**
 * Level 2: tshyvectl against real tshyve processes running a guest that
 * prints forever (ticker.asm) on this host's /dev/kvm: stats, pause and
 * resume (seen in what the guest prints), --list, the ends of a VM and
 * their exit codes, the control socket gone after each exit.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, CTL, kvmUnavailable, guestBin, type RunResult } from './helpers.js';
import { Machine, ConfigTree, ControlServer, connectVm, ExitCode } from '../src/index.js';
import { createQcow2 } from '../src/devices/block/qcow2/create.js';

const dir = mkdtempSync(join(tmpdir(), 'tshyve-ctl-l2-'));
const env = { ...process.env, TSHYVE_CONTROL_DIR: dir };
const skip = kvmUnavailable() ?? (guestBin('ticker') ? undefined : 'guest program ticker.bin not built (nasm missing: run scripts/setup.sh)');

interface Vm { child: ChildProcess; out(): string; err(): string; exited: Promise<RunResult>; sock: string }

/** Start tshyve on the ticker guest; resolves once the guest has printed. */
async function startVm(name: string, extra: string[] = [], envOver: Record<string, string> = {}): Promise<Vm> {
  const args = ['-c', '1', '-m', '16M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio', '-o', `boot.raw=${guestBin('ticker')}`, ...extra, name];
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...env, ...envOver }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  child.stdout!.on('data', (d) => { stdout += d; });
  child.stderr!.on('data', (d) => { stderr += d; });
  const t0 = Date.now();
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const exited = new Promise<RunResult>((resolve) => child.on('close', (code, signal) => {
    clearTimeout(timer);
    resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 });
  }));
  const vm = { child, out: () => stdout, err: () => stderr, exited, sock: join(envOver.TSHYVE_CONTROL_DIR ?? dir, `${name}.sock`) };
  await until(() => stdout.includes('T\n') || child.exitCode !== null, 10_000);
  assert.ok(stdout.includes('T\n'), `guest printed (stderr: ${stderr})`);
  return vm;
}

function ctl(args: string[]): Promise<RunResult> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [CTL, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 }); });
  });
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(20);
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function stats(r: RunResult): Record<string, string> {
  assert.equal(r.code, 0, r.stderr);
  return Object.fromEntries(r.stdout.trim().split('\n').map((l) => l.split(/\s+/, 2) as [string, string]));
}

test('tshyvectl: stats grow, pause stops the guest, resume restarts it, --list, checkpoint keeps it running, force-poweroff exits 1',
  { skip }, async () => {
    const vm = await startVm('ctl1');
    try {
      assert.ok(statSync(vm.sock).isSocket(), 'socket under TSHYVE_CONTROL_DIR');
      const list = await ctl(['--list']);
      assert.equal(list.code, 0, list.stderr);
      assert.deepEqual(list.stdout.split('\n').filter(Boolean), ['ctl1']);

      const s1 = stats(await ctl(['--vm=ctl1', '--get-stats']));
      assert.equal(s1.name, 'ctl1');
      assert.equal(s1.state, 'running');
      assert.match(s1.exits_pio!, /^\d+$/);
      assert.equal(s1.com1_dropped_bytes, '0', 'stdout is read: no console output dropped');
      await sleep(300);
      const s2 = stats(await ctl([`--socket=${vm.sock}`, '--get-stats']));
      assert.ok(Number(s2.exits_pio) > Number(s1.exits_pio), `exits grow: ${s1.exits_pio} -> ${s2.exits_pio}`);

      const p = await ctl(['--vm=ctl1', '--pause']);
      assert.equal(p.code, 0, p.stderr);
      await sleep(100); // output already on its way
      const frozen = vm.out().length;
      await sleep(300);
      assert.equal(vm.out().length, frozen, 'no output while paused');
      assert.equal(stats(await ctl(['--vm=ctl1', '--get-stats'])).state, 'paused');
      const r = await ctl(['--vm', 'ctl1', '--resume']);
      assert.equal(r.code, 0, r.stderr);
      await until(() => vm.out().length > frozen, 3000);
      assert.ok(vm.out().length > frozen, 'output again after resume');

      // A checkpoint: the state and RAM files appear, one summary line, and the VM runs on.
      const ckp = join(dir, 'ctl1.ckp');
      const c = await ctl(['--vm=ctl1', `--checkpoint=${ckp}`]);
      assert.equal(c.code, 0, c.stderr);
      assert.match(c.stdout + c.stderr, /checkpointed VM ctl1/);
      assert.ok(existsSync(ckp) && existsSync(`${ckp}.ram`), 'state and RAM written');
      // The same file again: replaced whole, the VM still runs.
      const c2 = await ctl(['--vm=ctl1', `--checkpoint=${ckp}`]);
      assert.equal(c2.code, 0, c2.stderr);
      const after = vm.out().length;
      await until(() => vm.out().length > after, 3000);
      assert.ok(vm.out().length > after, 'still running after the checkpoint');
      assert.equal(vm.child.exitCode, null);

      const off = await ctl(['--vm=ctl1', '--force-poweroff']);
      assert.equal(off.code, 0, off.stderr);
      const end = await vm.exited;
      assert.equal(end.code, 1, end.stderr);
      assert.ok(!existsSync(vm.sock), 'socket removed');
    } finally {
      vm.child.kill('SIGKILL');
    }
  });

test('--force-reset exits 0; a second VM on a live socket is refused with one line; the socket goes with the VM',
  { skip }, async () => {
    const vm = await startVm('ctl2');
    try {
      const twin = await new Promise<RunResult>((resolve) => {
        const c = spawn(process.execPath, [CLI, '-m', '16M', '-l', 'com1,stdio', '-o', `boot.raw=${guestBin('ticker')}`, 'ctl2'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '', stderr = '';
        c.stdout.on('data', (d) => { stdout += d; });
        c.stderr.on('data', (d) => { stderr += d; });
        c.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: 0 }));
      });
      assert.equal(twin.code, 4);
      assert.match(twin.stderr, /^tshyve: control socket .*ctl2\.sock belongs to a running VM.*\n$/);
      assert.ok(existsSync(vm.sock), 'the first VM keeps its socket');
      const r = await ctl(['--vm=ctl2', '--force-reset']);
      assert.equal(r.code, 0, r.stderr);
      const end = await vm.exited;
      assert.equal(end.code, 0, end.stderr);
      assert.ok(!existsSync(vm.sock));
    } finally {
      vm.child.kill('SIGKILL');
    }
  });

test('a killed tshyve leaves a stale socket, the next one replaces it; --destroy exits 4', { skip }, async () => {
  const first = await startVm('ctl3');
  first.child.kill('SIGKILL');
  await first.exited;
  assert.ok(existsSync(first.sock), 'SIGKILL leaves the socket behind');
  const gone = await ctl(['--vm=ctl3', '--get-stats']);
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /^tshyvectl: VM ctl3 is not answering \(stale socket .*\)\n$/);
  assert.equal((await ctl(['--list'])).stdout, '', '--list skips stale sockets');
  const vm = await startVm('ctl3');
  try {
    const d = await ctl(['--vm=ctl3', '--destroy']);
    assert.equal(d.code, 0, d.stderr);
    const end = await vm.exited;
    assert.equal(end.code, 4);
    assert.match(end.stderr, /destroyed by the controller/);
    assert.ok(!existsSync(vm.sock));
  } finally {
    vm.child.kill('SIGKILL');
  }
});

test('SIGINT ends tshyve with exit 1 and the socket goes too', { skip }, async () => {
  const vm = await startVm('ctl5');
  assert.ok(existsSync(vm.sock));
  vm.child.kill('SIGINT');
  const end = await vm.exited;
  assert.equal(end.code, 1, end.stderr);
  assert.ok(!existsSync(vm.sock));
});

// (`-o control.path=` cannot be said: bhyve's -o refuses empty values; the library's ConfigTree can.)
test('-o control.enable=false serves no socket; -o control.path chooses it', { skip }, async () => {
  for (const [opt, sock] of [['control.enable=false', undefined], [`control.path=${join(dir, 'elsewhere.sock')}`, join(dir, 'elsewhere.sock')]] as const) {
    const vm = await startVm('ctl4', ['-o', opt]);
    try {
      assert.ok(!existsSync(vm.sock), `${opt}: no default socket`);
      if (sock) {
        assert.ok(existsSync(sock));
        assert.equal((await ctl([`--socket=${sock}`, '--force-poweroff'])).code, 0);
        assert.equal((await vm.exited).code, 1);
        assert.ok(!existsSync(sock));
      }
    } finally {
      vm.child.kill('SIGKILL');
      await vm.exited;
    }
  }
});

test('a socket directory others can write: the default socket is skipped with a warning, a chosen control.path is an error', { skip }, async () => {
  const loose = join(dir, 'loose');
  mkdirSync(loose);
  chmodSync(loose, 0o777);
  const vm = await startVm('ctl5', [], { TSHYVE_CONTROL_DIR: loose });
  try {
    assert.match(vm.err(), new RegExp(`warn: no control socket: control socket directory ${loose} is writable by others \\(mode 0777\\)`));
    assert.ok(!existsSync(vm.sock), 'no socket made there');
  } finally {
    vm.child.kill('SIGKILL');
    await vm.exited;
  }
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const c = spawn(process.execPath, [CLI, '-m', '16M', '-l', 'com1,stdio', '-o', `boot.raw=${guestBin('ticker')}`, '-o', `control.path=${join(loose, 'x.sock')}`, 'ctl6'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr.on('data', (d) => { stderr += d; });
    c.on('close', (code) => resolve({ code, stderr }));
  });
  assert.equal(r.code, 4);
  assert.equal(r.stderr, `tshyve: control socket directory ${loose} is writable by others (mode 0777); use a directory only its owner can write\n`);
});

test('tshyvectl: bad usage and unknown VMs are one line and a non-zero exit', async () => {
  const cases: [string[], number, RegExp][] = [
    [['--vm=ghost', '--get-stats'], 1, new RegExp(`^tshyvectl: no VM named ghost \\(no socket at ${dir}/ghost\\.sock\\)$`)],
    [['--get-stats'], 2, /needs --vm=NAME/],
    [['--vm=x'], 2, /no operation/],
    [['--vm=x', '--pause', '--destroy'], 2, /one operation at a time/],
    [['--vm=x', '--frobnicate'], 2, /Unknown option '--frobnicate'/],
    [['--vm=../etc', '--pause'], 2, /invalid VM name/],
    [['--vm=x', '--checkpoint='], 2, /needs a file/],
    [['--vm=x', '--ext-checkpoint='], 2, /needs a file/],
  ];
  for (const [args, code, re] of cases) {
    const r = await ctl(args);
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr.split('\n').length, 2, `one line: ${r.stderr}`);
    assert.match(r.stderr.trimEnd(), re);
  }
});

test('tshyvectl --checkpoint names the qcow2 snapshot and, in one warning line, the raw disk; --ext-checkpoint the overlays', { skip }, async () => {
  const qcow = join(dir, 'ck.qcow2'), raw = join(dir, 'ck.img');
  createQcow2(qcow, { size: 1 << 20 });
  writeFileSync(raw, Buffer.alloc(1 << 20));
  const vm = await startVm('ctldisk', ['-s', `4,virtio-blk,${qcow}`, '-s', `5,virtio-blk,${raw}`]);
  try {
    const c = await ctl(['--vm=ctldisk', `--checkpoint=${join(dir, 'disk.ckp')}`]);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, new RegExp(`^  disk pci\\.0\\.4\\.0: qcow2 snapshot 'disk\\.ckp' in ${qcow}$`, 'm'));
    assert.equal(c.stderr, `tshyvectl: warning: raw disks have no snapshots and are not part of the checkpoint (writes after it stay): pci.0.5.0 (${raw})\n`);
    const e = await ctl(['--vm=ctldisk', `--ext-checkpoint=${join(dir, 'ext.ckp')}`]);
    assert.equal(e.code, 0, e.stderr);
    for (const [id, file] of [['4', qcow], ['5', raw]] as const) {
      assert.match(e.stdout, new RegExp(`^  disk pci\\.0\\.${id}\\.0: now writes to ${dir}/ext\\.ckp\\.pci\\.0\\.${id}\\.0\\.qcow2 \\(backing file ${file}\\)$`, 'm'));
    }
    assert.equal(e.stderr, '');
    // the same file again: its overlays exist, so nothing is replaced and the VM goes on
    const again = await ctl(['--vm=ctldisk', `--ext-checkpoint=${join(dir, 'ext.ckp')}`]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^tshyvectl: VM ctldisk: checkpoint of disk pci\.0\.4\.0 failed: .*EEXIST.*; nothing was saved\n$/);
    assert.equal((await ctl(['--vm=ctldisk', '--get-stats'])).code, 0);
  } finally {
    vm.child.kill('SIGKILL');
    await vm.exited;
  }
});

test('library: a program serves the Machine it embeds and controls it by socket path', { skip }, async () => {
  const c = new ConfigTree();
  for (const [k, v] of Object.entries({ cpus: '1', sockets: '1', cores: '1', threads: '1', 'memory.size': '16M', name: 'embedded', 'boot.raw': guestBin('spin')! })) c.set(k, v);
  const m = await Machine.create(c);
  const server = new ControlServer(m);
  const sock = join(dir, 'embedded.sock');
  await server.listen(sock);
  const done = m.run();
  try {
    await new Promise((r) => m.once('running', r));
    const vm = await connectVm(sock);
    assert.equal((await vm.info()).name, 'embedded');
    await vm.pause();
    assert.equal(m.paused, true);
    assert.equal((await vm.stats()).state, 'paused');
    await vm.resume();
    assert.equal(m.paused, false);
    await vm.forcePoweroff();
    assert.equal(await done, ExitCode.POWEROFF);
    vm.close();
  } finally {
    await m.finish(ExitCode.POWEROFF);
    await server.close();
  }
  assert.ok(!existsSync(sock));
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
