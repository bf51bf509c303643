import { test } from 'node:test';
import assert from 'node:assert/strict';
import { matchDevices, saveDevices, type PersistentDevice } from './persist.js';
import { SnapshotError, StateReader } from './state.js';

function dev(id: string, kind: string, log: string[]): PersistentDevice & { value: number } {
  const d = {
    id, kind, value: 0,
    saveState: (w: import('./state.js').StateWriter) => { w.u8('value', d.value); },
    restoreState: (r: StateReader) => { d.value = r.u8('value'); log.push(`restore ${id}`); },
  };
  return d;
}

/** The saved list as a restore reads it (through JSON). */
const entries = (devs: PersistentDevice[]) => saveDevices(devs).map((w, i) => new StateReader(JSON.parse(JSON.stringify(w.obj)), `devices[${i}]`));

test('devices save as { id, kind, state } and match back by id, in the VM\'s order', () => {
  const log: string[] = [];
  const a = dev('com1', 'uart', log), b = dev('rtc', 'rtc', log);
  a.value = 1; b.value = 2;
  const saved = entries([a, b]);
  assert.deepEqual(saved[0]!.raw('state'), { 'value$u8': 1 });
  assert.equal(saved[1]!.str('id'), 'rtc');
  const a2 = dev('com1', 'uart', log), b2 = dev('rtc', 'rtc', log);
  // the snapshot's order does not matter; the VM's does
  for (const { dev: d, state } of matchDevices(entries([b, a]), [a2, b2])) d.restoreState(state);
  assert.deepEqual([a2.value, b2.value], [1, 2]);
  assert.deepEqual(log, ['restore com1', 'restore rtc']);
});

test('a device list that is not this VM\'s is refused before anything is restored', () => {
  const log: string[] = [];
  const vm = [dev('com1', 'uart', log), dev('rtc', 'rtc', log)];
  const refused = (devs: PersistentDevice[], re: RegExp) => assert.throws(() => matchDevices(entries(devs), vm),
    (e: unknown) => e instanceof SnapshotError && re.test((e as Error).message));
  refused([dev('com1', 'uart', log)], /the snapshot has 1 devices, this VM has 2/);
  refused([dev('com1', 'uart', log), dev('com3', 'uart', log)], /devices\[1\]\.id: uart com3 is not in this VM/);
  refused([dev('com1', 'uart', log), dev('rtc', 'uart', log)], /devices\[1\]\.id: uart rtc is not in this VM/);
  refused([dev('com1', 'uart', log), dev('com1', 'uart', log)], /devices\[1\]\.id: com1 is in the snapshot twice/);
  assert.deepEqual(log, []);
});
