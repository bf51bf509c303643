/**
 * The transport's snapshot state is what saved snapshots hold: the same
 * fields, in the same order, with the same encodings (values below were
 * saved by the transport before it moved to virtio/pci and took its MSI-X
 * from pci/msix.ts), and a restore gives back exactly what was saved.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Bus } from '../../bus/bus.js';
import { mmioAllocator, type DeviceContext } from '../../pci/device.js';
import { StateReader, StateWriter } from '../../snapshot/state.js';
import { VirtioRnd } from '../../devices/virtio-rnd.js';
import { MockSplitQueue } from '../testing/mock-driver.js';
import { VirtioPci } from './transport.js';

const B0 = 0xc0000000, B1 = 0xc0004000;

function device() {
  const mem = GuestMemory.ofSize(1 << 20);
  const mmio = new Bus('mmio');
  const msis: number[] = [];
  const ctx: DeviceContext = {
    mem, pio: new Bus('pio'), mmio, irq: () => ({ set: () => {} }), msi: (_a, d) => { msis.push(d); }, guestError: () => {},
    allocMmio: mmioAllocator(B0, 0xfec00000),
  };
  const fn = new VirtioPci(ctx, new VirtioRnd(), { slot: 4 }, 'rnd');
  return { fn, mem, mmio, msis };
}

/** A driver's bring-up, a request completed on a masked vector (pending), and some select registers left set. */
function drive(s: ReturnType<typeof device>): void {
  const w = (o: number, size: number, v: number) => s.mmio.write(B0 + o, size, v);
  let cap = 0;
  for (let p = s.fn.config.read(0x34, 1); p; p = s.fn.config.read(p + 1, 1)) if (s.fn.config.read(p, 1) === 0x11) cap = p;
  w(0x14, 1, 0); w(0x14, 1, 1); w(0x14, 1, 3); w(0x08, 4, 1); w(0x0c, 4, 1); w(0x14, 1, 0x0b);
  s.fn.config.write(cap + 2, 2, 0x8000);
  s.mmio.write(B1, 4, 0xfee00000); s.mmio.write(B1 + 8, 4, 0x41); s.mmio.write(B1 + 12, 4, 0);
  s.mmio.write(B1 + 16, 4, 0xfee01000); s.mmio.write(B1 + 24, 4, 0x42);
  w(0x10, 2, 0); w(0x16, 2, 0);
  const q = new MockSplitQueue(s.mem, 64, { base: 0x10000 });
  w(0x18, 2, 64); w(0x20, 4, q.desc); w(0x28, 4, q.avail); w(0x30, 4, q.used); w(0x1a, 2, 1); w(0x1c, 2, 1);
  w(0x14, 1, 0x0f);
  q.addChain({ writable: [16] });
  w(0x3000, 2, 0);
  s.fn.core.signalConfig();
  w(0x00, 4, 1); w(0x08, 4, 0); w(0x16, 2, 3);
}

test('the snapshot fields of the transport keep their names, order and encodings; a restore gives them back', () => {
  const a = device();
  drive(a);
  assert.deepEqual(a.msis, [0x41], 'the config interrupt went out; the queue\'s vector is masked');
  const w = new StateWriter();
  a.fn.saveState(w);
  const { virtio, ...transport } = w.obj;
  assert.deepEqual(Object.keys(w.obj), ['dfSelect$u32', 'gfSelect$u32', 'queueSelect$u16', 'configVector$u16', 'isr$u8', 'queueVectors$b64', 'msix$b64', 'pba$b64', 'virtio']);
  assert.deepEqual(transport, {
    'dfSelect$u32': 1, 'gfSelect$u32': 0, 'queueSelect$u16': 3, 'configVector$u16': 0, 'isr$u8': 0, 'queueVectors$b64': 'AQA=',
    'msix$b64': 'AADg/gAAAABBAAAAAAAAAAAQ4P4AAAAAQgAAAAEAAAA=', 'pba$b64': 'AgAAAA==',
  });
  assert.equal(typeof virtio, 'object');

  const b = device();
  const cw = new StateWriter();
  a.fn.config.saveState(cw);
  b.fn.config.restoreState(new StateReader(cw.obj, 'config')); // the host restores config space first
  b.fn.restoreState(new StateReader(JSON.parse(JSON.stringify(w.obj)), 'dev'));
  const w2 = new StateWriter();
  b.fn.saveState(w2);
  assert.deepEqual(w2.obj, w.obj);
  b.mmio.write(B1 + 28, 4, 0); // unmask the queue's vector: its pending interrupt goes out
  assert.deepEqual(b.msis, [0x42]);
});
