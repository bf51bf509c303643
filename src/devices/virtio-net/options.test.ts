import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigTree } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import { netBackendFactory, registerNetBackend } from './backend.js';
import './backends.js';
import { formatMac, hostfwdRules, parseMac, parseNetOptions, stableMac, virtioNetLegacyConfig } from './options.js';

function legacy(opts: string): ConfigTree {
  const t = new ConfigTree();
  virtioNetLegacyConfig({ set: (k, v) => t.set(`pci.0.3.0.${k}`, v) }, opts);
  return t;
}
const node = (kv: Record<string, string>) => {
  const t = new ConfigTree();
  for (const [k, v] of Object.entries(kv)) t.set(`pci.0.3.0.${k}`, v);
  return t.node('pci.0.3.0')!;
};
const BDF = { slot: 3, func: 0 };

test('-s syntax: the backend first, then mac= and mtu=; backend= works too; each hostfwd= is the next hostfwd.N', () => {
  assert.deepEqual(legacy('tap0,mac=58:9c:fc:01:02:03,mtu=9000').dump(),
    ['pci.0.3.0.backend=tap0', 'pci.0.3.0.mac=58:9c:fc:01:02:03', 'pci.0.3.0.mtu=9000']);
  assert.deepEqual(legacy('backend=tap1,mtu=1500').dump(), ['pci.0.3.0.backend=tap1', 'pci.0.3.0.mtu=1500']);
  assert.deepEqual(legacy('slirp,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-:53').dump(),
    ['pci.0.3.0.backend=slirp', 'pci.0.3.0.hostfwd.0=tcp::2222-:22', 'pci.0.3.0.hostfwd.1=udp:127.0.0.1:5353-:53']);
  assert.deepEqual(legacy('slirp,hostfwd=tcp::80-:80;udp::53-:53,hostfwd=tcp::22-:22').dump(),
    ['pci.0.3.0.backend=slirp', 'pci.0.3.0.hostfwd.0=tcp::80-:80', 'pci.0.3.0.hostfwd.1=udp::53-:53', 'pci.0.3.0.hostfwd.2=tcp::22-:22'],
    'bhyve\'s ;-separated rules, one key each');
  assert.throws(() => legacy(',mac=58:9c:fc:01:02:03'), UserError);
  const o = parseNetOptions(legacy('tap0,mac=58:9c:fc:01:02:03,mtu=9000').node('pci.0.3.0')!, 'vm', BDF);
  assert.deepEqual({ ...o, mac: formatMac(o.mac) }, { backend: 'tap0', mac: '58:9c:fc:01:02:03', mtu: 9000 });
});

test('MAC formats: colons or dashes, one or two hex digits; multicast, zero and malformed ones are refused', () => {
  assert.deepEqual([...parseMac('58:9C:fc:1:2:3')], [0x58, 0x9c, 0xfc, 1, 2, 3]);
  assert.deepEqual([...parseMac('02-00-00-aa-bb-cc')], [2, 0, 0, 0xaa, 0xbb, 0xcc]);
  for (const bad of ['58:9c:fc:01:02', '58:9c:fc:01:02:03:04', '58:9c:fc:01:02:g3', '589cfc010203', '58:9c:fc:01:02:123', '']) {
    assert.throws(() => parseMac(bad, 'pci.0.3.0.mac'), /pci\.0\.3\.0\.mac: .* is not a MAC address/, bad);
  }
  assert.throws(() => parseMac('01:00:5e:00:00:01'), /multicast/);
  assert.throws(() => parseMac('00:00:00:00:00:00'), /zero address/);
});

test('without mac=: bhyve\'s stable MAC, the same for the same VM name and slot, another for another', () => {
  const a = stableMac('vm1', 3, 0);
  assert.deepEqual([...a.subarray(0, 3)], [0x58, 0x9c, 0xfc]);
  assert.equal(a[0]! & 1, 0, 'unicast');
  // bhyve's net_genmac(): `printf 3-0-vm1 | md5sum` starts ee082b
  assert.equal(formatMac(a), '58:9c:fc:ee:08:2b');
  assert.deepEqual(stableMac('vm1', 3, 0), a);
  assert.notDeepEqual(stableMac('vm1', 4, 0), a);
  assert.notDeepEqual(stableMac('vm2', 3, 0), a);
  assert.deepEqual(parseNetOptions(node({ backend: 'tap0' }), 'vm1', BDF).mac, a);
});

test('bad values are one-line UserErrors naming the key', () => {
  assert.throws(() => parseNetOptions(node({ mac: '58:9c:fc:01:02:03' }), 'vm', BDF), /set pci\.0\.3\.0\.backend/);
  assert.throws(() => parseNetOptions(node({ backend: 'tap0', mac: 'nope' }), 'vm', BDF), /pci\.0\.3\.0\.mac: 'nope' is not a MAC/);
  for (const mtu of ['67', '65536', '1500x', '-1', '']) {
    assert.throws(() => parseNetOptions(node({ backend: 'tap0', mtu }), 'vm', BDF), /pci\.0\.3\.0\.mtu: .* is not an MTU between 68 and 65535/, mtu);
  }
  assert.equal(parseNetOptions(node({ backend: 'tap0', mtu: '68' }), 'vm', BDF).mtu, 68);
  assert.equal(parseNetOptions(node({ backend: 'tap0', mtu: '65535' }), 'vm', BDF).mtu, 65535);
  const e = (() => { try { netBackendFactory('eth0', 'pci.0.3.0.backend'); } catch (x) { return x; } })();
  assert.ok(e instanceof UserError);
  assert.match(e.message, /^pci\.0\.3\.0\.backend: unknown network backend 'eth0'/);
});

test('backend types: tapN and vmnetN are taps, a registered name is its own type', () => {
  const tap = netBackendFactory('tap0');
  assert.equal(netBackendFactory('vmnet3'), tap);
  assert.equal(netBackendFactory('tapfoo'), tap);
  const fake = { open: () => { throw new Error('not here'); }, init: () => ({ type: 'test-be', fd: -1, vnetHdr: false }), fromInit: () => { throw new Error('no'); } };
  registerNetBackend('test-be', fake);
  assert.equal(netBackendFactory('test-be'), fake);
  assert.match(String((() => { try { netBackendFactory('eth0'); } catch (x) { return x; } })()), /test-be/, 'the error lists the types there are');
});

test('hostfwdRules: bhyve\'s hostfwd (rules joined by ;) or hostfwd.N in number order', () => {
  assert.deepEqual(hostfwdRules(node({ backend: 'slirp' })), []);
  assert.deepEqual(hostfwdRules(legacy('slirp,hostfwd=tcp::80-:80;udp::53-:53,hostfwd=tcp::22-:22').node('pci.0.3.0')!),
    ['tcp::80-:80', 'udp::53-:53', 'tcp::22-:22']);
  assert.deepEqual(hostfwdRules(node({ hostfwd: 'tcp::1-:1;tcp::2-:2' })), ['tcp::1-:1', 'tcp::2-:2']);
  assert.deepEqual(hostfwdRules(node({ 'hostfwd.10': 'tcp::10-:10', 'hostfwd.2': 'tcp::3-:3', 'hostfwd.0': 'tcp::1-:1' })),
    ['tcp::1-:1', 'tcp::3-:3', 'tcp::10-:10']);
});
