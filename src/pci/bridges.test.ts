import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigTree } from '../config/tree.js';
import { UserError } from '../errors.js';
import { loadPciDevice, type DeviceContext } from './device.js';
import './bridges.js';

async function hostBridgeId(name: string, firmware: boolean, keys: Record<string, string> = {}): Promise<number> {
  const c = new ConfigTree();
  c.set('pci.0.0.0.device', name);
  for (const [k, v] of Object.entries(keys)) c.set(`pci.0.0.0.${k}`, v);
  const emu = (await loadPciDevice(name))!;
  const fn = emu.create({ firmware } as DeviceContext, c.node('pci.0.0.0')!, { bus: 0, slot: 0, func: 0 });
  return fn.config.read(0, 4);
}

test('host bridge identity: bhyve\'s by default, i440FX when booting firmware, vendor=/devid= over both', async () => {
  assert.equal(await hostBridgeId('hostbridge', false), 0x12751275);
  assert.equal(await hostBridgeId('amd_hostbridge', false), 0x74321022);
  assert.equal(await hostBridgeId('hostbridge', true), 0x12378086);
  assert.equal(await hostBridgeId('amd_hostbridge', true), 0x12378086);
  assert.equal(await hostBridgeId('hostbridge', true, { vendor: '0x8086', devid: '0x29c0' }), 0x29c08086);
  assert.equal(await hostBridgeId('hostbridge', false, { devid: '4660' }), 0x12341275);
  for (const bad of ['0x10000', '-1', 'abc', '']) {
    await assert.rejects(hostBridgeId('hostbridge', false, { vendor: bad }), UserError);
  }
});
