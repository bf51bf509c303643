/**
 * Level 2 through the library API: pause and resume a vCPU that never
 * exits on its own, check it really stopped running guest code, end it;
 * a start that fails part-way closes every fd it opened.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, ConfigTree, ExitCode, UserError } from '../src/index.js';
import { kvmUnavailable, guestBin } from './helpers.js';

function config(bin: string, boot = 'boot.raw'): ConfigTree {
  const c = new ConfigTree();
  for (const [k, v] of Object.entries({ cpus: '1', sockets: '1', cores: '1', threads: '1', 'memory.size': '16M', name: 'api', [boot]: bin })) c.set(k, v);
  return c;
}

const skip = kvmUnavailable() ?? (guestBin('spin') ? undefined : 'guest programs not built (nasm missing)');

test('pause parks every vCPU, resume lets it run again, finish ends run() with its code', { skip }, async () => {
  const m = await Machine.create(config(guestBin('spin')!));
  const done = m.run();
  await new Promise((r) => m.once('running', r));
  await m.pause();
  // A paused VM serves no exits and its vCPU threads are parked.
  const before = m.exitStats!.pio;
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(m.exitStats!.pio, before);
  m.resume();
  await m.finish(ExitCode.POWEROFF);
  assert.equal(await done, ExitCode.POWEROFF);
});

test('a missing boot source is a UserError before any KVM work', async () => {
  const c = config('/nonexistent/guest.bin');
  await assert.rejects(Machine.create(c), (e: unknown) => e instanceof UserError && /nonexistent/.test((e as Error).message));
});

const openFds = (): number => readdirSync('/proc/self/fd').length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** This process's open fds once they are `expected` or 5 s have passed (device threads close theirs as they end). */
async function fdsAfter(expected: number): Promise<number> {
  let n = openFds();
  for (const end = Date.now() + 5000; n !== expected && Date.now() < end; n = openFds()) await sleep(50);
  return n;
}

test('a start refused right after the KVM device is opened (it is no KVM device) closes it', async () => {
  const c = config(guestBin('spin') ?? '/bin/true');
  c.set('kvm.device', '/dev/null');
  const before = openFds();
  await assert.rejects(Machine.create(c), /\/dev\/null reports KVM API version -1/);
  assert.equal(await fdsAfter(before), before, 'no fd left open');
});

test('a start that fails at its last device closes every fd it opened: KVM\'s, RAM\'s, the vCPUs\', the devices\' eventfds and threads', { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-create-fds-'));
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, Buffer.alloc(1 << 20));
  const failing = (): ConfigTree => {
    const c = config(guestBin('spin')!);
    c.set('cpus', '2'); c.set('sockets', '2');
    // devices that open files, eventfds and I/O threads, then one that cannot open its disk
    for (const [slot, dev, path] of [[3, 'virtio-blk', disk], [4, 'nvme', disk], [6, 'virtio-blk', join(dir, 'missing.img')]] as const) {
      c.set(`pci.0.${slot}.0.device`, dev);
      c.set(`pci.0.${slot}.0.path`, path);
    }
    c.set('pci.0.5.0.device', 'virtio-rnd');
    return c;
  };
  try {
    // once first: what a first VM loads (device modules) is not counted
    await assert.rejects(Machine.create(failing()), /missing\.img/);
    await sleep(1500); // (its threads gone)
    const before = openFds();
    await assert.rejects(Machine.create(failing()), /missing\.img/);
    assert.equal(await fdsAfter(before), before, 'no fd left open');
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('a Linux kernel refused after KVM is opened (this host\'s KVM is emulated, or the bzImage is a fake) leaves no fd open', { skip: kvmUnavailable() }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-create-fds-'));
  const kernel = join(dir, 'bzImage');
  const fake = Buffer.alloc(8192);
  fake.writeUInt32LE(0x53726448, 0x202); // "HdrS": enough to be taken for a bzImage until it is loaded
  writeFileSync(kernel, fake);
  const c = config(kernel, 'boot.kernel');
  try {
    const before = openFds();
    await assert.rejects(Machine.create(c));
    assert.equal(await fdsAfter(before), before, 'no fd left open');
  } finally {
    rmSync(dir, { recursive: true });
  }
});
