import { test } from 'node:test';
import { createHash } from 'node:crypto';
import assert from 'node:assert/strict';
import { StateWriter, SnapshotError } from '../snapshot/state.js';
import { PART, PART_HEADER, decodeState, encodeState, joinParts, splitParts } from './state-parts.js';

const parts = () => ({
  config: { 'cpus': '2', 'pci.0.3.0.device': 'virtio-blk' },
  vm: new StateWriter().u64('clock', 12345n),
  vcpus: [0, 1].map((i) => new StateWriter().u32('mpState', i).b64('lapic', Buffer.alloc(16, i))),
  devices: [new StateWriter().str('id', 'uart0').str('kind', 'uart').obj_('state', (w) => { w.u8('ier', 5); })],
});

const refused = (payload: Buffer, re: RegExp) => assert.throws(() => decodeState(payload), (e: unknown) => e instanceof SnapshotError && re.test(e.message));

test('the state round trip: config, the VM, each vCPU and device, read with their typed readers', () => {
  const s = decodeState(encodeState(parts()));
  assert.deepEqual([...s.config], [['cpus', '2'], ['pci.0.3.0.device', 'virtio-blk']]);
  assert.equal(s.vm.u64('clock'), 12345n);
  assert.deepEqual(s.vcpus.map((v) => v.u32('mpState')), [0, 1]);
  assert.deepEqual(s.vcpus[1]!.b64('lapic', 16), Buffer.alloc(16, 1));
  assert.equal(s.devices[0]!.obj('state').u8('ier'), 5);
  assert.equal(s.vcpus[1]!.path, 'state.vcpus[1]');
});

test('a part changed without its checksum is refused, naming the part', () => {
  const p = splitParts(encodeState(parts()));
  const v1 = p.find((x) => x.kind === PART.vcpus && x.index === 1)!;
  v1.body = Buffer.from(v1.body.toString('utf8').replace('"mpState$u32":1', '"mpState$u32":3'));
  refused(joinParts(p), /^the migration state: checksum of part 'vcpus' does not match \(vcpus 1: damaged\)$/);
});

test('framing: truncated, past the end, out of order, skipped index, unknown kind, missing part, too many parts', () => {
  const good = encodeState(parts());
  refused(good.subarray(0, good.length - 1), /part 'devices' 0 of \d+ bytes runs past the end/);
  refused(Buffer.concat([good, Buffer.alloc(PART_HEADER - 1)]), /a part header cut short/);
  const p = splitParts(good);
  refused(joinParts([p[0]!, p[2]!, p[1]!, ...p.slice(3)]), /part 'vm' after 'vcpus'/);
  refused(joinParts([p[0]!, p[1]!, p[3]!]), /part 'vcpus' 1 where 0 was due/);
  refused(joinParts([...p, { ...p[4]!, kind: 9 }]), /unknown kind 9/);
  refused(joinParts(p.slice(1)), /part 'config' is missing/);
  refused(joinParts([p[0]!, p[0]!, ...p.slice(1)]), /part 'config' 0 where 1 was due/);
  const vcpu = p[2]!;
  refused(joinParts([p[0]!, p[1]!, ...Array.from({ length: 1025 }, (_, index) => ({ ...vcpu, index }))]), /more than 1024 'vcpus' parts/);
  const reserved = Buffer.from(good);
  reserved[1] = 1;
  refused(reserved, /a part header with reserved bits set at byte 0/);
});

test('a part that is not a JSON object is refused after its checksum', () => {
  const p = splitParts(encodeState(parts()));
  const body = Buffer.from('[1,2]');
  p[1] = { ...p[1]!, body, sha: createHash('sha256').update(body).digest() };
  refused(joinParts(p), /part 'vm' 0 is not a tshyve VM state part \(not a JSON object\)/);
});
