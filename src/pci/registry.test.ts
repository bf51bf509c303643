import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findPciDevice, loadPciDevice, registerPciDevice, type PciDeviceEmulation } from './device.js';

const notBuilt: PciDeviceEmulation['create'] = () => { throw new Error('not built in this test'); };

test('a lazy device is found by its info and loaded once, when first built', async () => {
  let loads = 0;
  const legacyConfig = () => {};
  registerPciDevice({
    name: 'x-lazy', legacyConfig, hostPathKeys: ['path'],
    load: async () => { loads++; registerPciDevice({ name: 'x-lazy', legacyConfig, hostPathKeys: ['path'], create: notBuilt }); },
  });
  const info = findPciDevice('x-lazy')!;
  assert.equal(info.legacyConfig, legacyConfig);
  assert.deepEqual(info.hostPathKeys, ['path']);
  assert.equal(loads, 0, 'nothing imported at registration');
  assert.equal((await loadPciDevice('x-lazy'))?.create, notBuilt);
  assert.equal((await loadPciDevice('x-lazy'))?.create, notBuilt);
  assert.equal(loads, 1);
  assert.equal(await loadPciDevice('x-none'), undefined);
});

test('a lazy entry whose module registers nothing is an error, not a device', async () => {
  registerPciDevice({ name: 'x-empty', load: async () => {} });
  await assert.rejects(loadPciDevice('x-empty'), /did not register/);
});

test('a model registered before its lazy entry stays; a name registered twice is refused', () => {
  registerPciDevice({ name: 'x-eager', create: notBuilt });
  registerPciDevice({ name: 'x-eager', load: async () => { throw new Error('must not load'); } });
  assert.ok('create' in findPciDevice('x-eager')!);
  assert.throws(() => registerPciDevice({ name: 'x-eager', create: notBuilt }), /registered twice/);
  registerPciDevice({ name: 'x-lazy2', load: async () => {} });
  assert.throws(() => registerPciDevice({ name: 'x-lazy2', load: async () => {} }), /registered twice/);
});
