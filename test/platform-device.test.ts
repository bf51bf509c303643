/**
 * Level 2: a platform device added by one registerPlatformDevice() call is
 * configured by `-l`, built by the VM, saved with a checkpoint and restored,
 * and the restore's config check follows the keys it declares.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, ExitCode, parseBhyveArgs, type ConfigTree } from '../src/index.js';
import { supportedLpcDevices } from '../src/cli/args.js';
import { registerPlatformDevice } from '../src/devices/platform.js';
import { readSnapshot } from '../src/snapshot/file.js';
import { SnapshotError, type StateReader, type StateWriter } from '../src/snapshot/state.js';
import { kvmUnavailable, guestBin } from './helpers.js';

const skip = kvmUnavailable() ?? (guestBin('counter') ? undefined : 'guest programs not built (nasm missing)');
const dir = mkdtempSync(join(tmpdir(), 'tshyve-platform-'));

/** A device with one register of state. */
class Probe {
  value = 0;
  saveState(w: StateWriter): void { w.u32('value', this.value); }
  restoreState(r: StateReader): void { this.value = r.u32('value'); }
}
const built: Probe[] = [];

registerPlatformDevice({
  name: 'probe', kind: 'probe', node: 'lpc.probe', hostOnlyKeys: ['note'], hostPathKeys: ['file'],
  lpcConfig: (node, conf) => node.set('file', conf ?? ''),
  create: (_ctx, node) => {
    if (node.get('file') === undefined) return undefined;
    const p = new Probe();
    built.push(p);
    return p;
  },
});

function config(...extra: string[]): ConfigTree {
  return parseBhyveArgs(['-m', '16M', '-l', `com1,${join(dir, 'com1.out')}`, '-o', `boot.raw=${guestBin('counter') ?? ''}`,
    '-o', 'x86.halt_check_ms=0', ...extra, 'probe']).config;
}

test('-l takes a registered platform device and -l help lists it', () => {
  assert.deepEqual(supportedLpcDevices(), ['com1', 'com2', 'com3', 'com4', 'bootrom', 'fwcfg', 'probe']);
  assert.equal(config('-l', 'PROBE,/tmp/p').get('lpc.probe.file'), '/tmp/p');
});

test('a registered platform device is built, checkpointed and restored; its declared keys rule the config check', { skip }, async () => {
  const snap = join(dir, 'probe.ckp');
  const m = await Machine.create(config('-l', 'probe,/host/a', '-o', 'lpc.probe.note=first'));
  assert.equal(built.length, 1, 'built because the config asks for it');
  const done = m.run();
  await new Promise((r) => m.once('running', r));
  built[0]!.value = 0xc0ffee;
  await m.suspend(snap);
  assert.equal(await done, ExitCode.REBOOT);

  // Another host path and another host-only note: the same machine.
  const m2 = await Machine.create(config('-l', 'probe,/host/b', '-o', 'lpc.probe.note=second'), { restore: readSnapshot(snap) });
  assert.equal(built.length, 2);
  assert.equal(built[1]!.value, 0xc0ffee, 'the device restored its own state');
  await m2.finish(ExitCode.POWEROFF);

  const refused = (cfg: ConfigTree, re: RegExp) => assert.rejects(Machine.create(cfg, { restore: readSnapshot(snap) }),
    (e: unknown) => e instanceof SnapshotError && re.test((e as Error).message));
  // A host path's presence is part of the machine, and so is a key the device did not declare.
  await refused(config(), /^the snapshot's VM had lpc\.probe\.file, this command line has no lpc\.probe\.file$/);
  await refused(config('-l', 'probe,/host/a', '-o', 'lpc.probe.mode=2'), /^this command line has lpc\.probe\.mode=2, the snapshot's VM had no lpc\.probe\.mode$/);
  assert.equal(built.length, 2, 'a refused restore builds no VM');
});
