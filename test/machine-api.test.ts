/**
 * Level 2 through the library API: pause and resume a vCPU that never
 * exits on its own, check it really stopped running guest code, end it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Machine, ConfigTree, ExitCode, UserError } from '../src/index.js';
import { kvmUnavailable, guestBin } from './helpers.js';

function config(bin: string): ConfigTree {
  const c = new ConfigTree();
  for (const [k, v] of Object.entries({ cpus: '1', sockets: '1', cores: '1', threads: '1', 'memory.size': '16M', name: 'api', 'boot.raw': bin })) c.set(k, v);
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
