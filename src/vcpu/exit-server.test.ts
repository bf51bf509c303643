import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Bus, type BusDevice } from '../bus/bus.js';
import { Uart16550 } from '../devices/uart16550.js';
import { ExitServer } from './exit-server.js';
import { MB, DB, MbKind, MbState, RING_ENTRIES, RING_WORDS, RING_SEQ, newMailbox, type Mailbox } from './mailbox.js';

// These helpers publish accesses the way a vCPU thread (worker.ts) does.

/** Queue a 1-byte posted port write numbered `seq`. */
function post(mb: Mailbox, seq: number, port: number, value: number): void {
  const w = mb.words;
  const head = Atomics.load(w, MB.HEAD);
  const o = MB.RING + (head % RING_ENTRIES) * RING_WORDS;
  w[o] = (MbKind.PIO << 8) | 1;
  w[o + 1] = port; w[o + 2] = 0; w[o + 3] = value; w[o + 4] = 0;
  w[o + RING_SEQ] = seq | 0;
  Atomics.store(w, MB.HEAD, head + 1);
}

function requestRead(mb: Mailbox, port: number): void {
  const w = mb.words;
  w[MB.KIND] = MbKind.PIO; w[MB.DIR] = 0; w[MB.SIZE] = 1; w[MB.ADDR_LO] = port; w[MB.ADDR_HI] = 0;
  Atomics.store(w, MB.STATE, MbState.REQUEST);
}

const server = (boxes: Mailbox[], pio: Bus) =>
  new ExitServer(new Int32Array(new SharedArrayBuffer(DB.WORDS * 4)), boxes, pio, new Bus('mmio'), () => {});

function recorder(pio: Bus, port: number): number[] {
  const seen: number[] = [];
  const dev: BusDevice = { read: () => 0, write: (_o, _s, v) => { seen.push(v); } };
  pio.register(port, 1, dev, 'rec');
  return seen;
}

const COM1 = 0x3f8, IER = COM1 + 1, MCR = COM1 + 4;

test('posted writes of several vCPUs reach devices in the order they were numbered, not mailbox by mailbox', () => {
  const pio = new Bus('pio');
  const seen = recorder(pio, 0x80);
  const b0 = newMailbox(), b1 = newMailbox();
  for (const t of [1, 4, 5]) post(b0, t, 0x80, t);
  for (const t of [2, 3, 6]) post(b1, t, 0x80, t);
  const s = server([b0, b1], pio);
  assert.equal(s.serveOnce(), true);
  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6]);
  assert.equal(Atomics.load(b0.words, MB.TAIL), 3);
  assert.equal(Atomics.load(b1.words, MB.TAIL), 3);
  assert.equal(s.serveOnce(), false);
});

test('UART: IER writes two vCPUs make in turn under the driver lock leave THRI on (the lost-console stall)', () => {
  // vCPU1's interrupt handler empties the TX buffer and turns THRI off, then
  // vCPU0 queues output and turns it back on. Served mailbox by mailbox, the
  // UART ended with THRI off while the driver believed it on: no THRE
  // interrupt ever came and console output stopped for good.
  const pio = new Bus('pio');
  const edges: boolean[] = [];
  const uart = new Uart16550({ set: (l) => edges.push(l) }, null);
  pio.register(COM1, 8, uart, 'com1');
  pio.write(MCR, 1, 0x0b);
  pio.write(IER, 1, 0x05);
  const b0 = newMailbox(), b1 = newMailbox();
  post(b1, 10, IER, 0x05);
  post(b0, 11, IER, 0x07);
  server([b0, b1], pio).serveOnce();
  assert.equal(pio.read(IER, 1), 0x07);
  assert.deepEqual(edges, [true], 'the THRE interrupt is raised');
});

test("a read sees another vCPU's earlier posted write", () => {
  const pio = new Bus('pio');
  pio.register(COM1, 8, new Uart16550({ set: () => {} }, null), 'com1');
  const b0 = newMailbox(), b1 = newMailbox();
  post(b1, 20, IER, 0x07);
  requestRead(b0, IER);
  server([b0, b1], pio).serveOnce();
  assert.equal(Atomics.load(b0.words, MB.STATE), MbState.REPLY);
  assert.equal(b0.data[0], 0x07);
});

test('the order survives the 32-bit wrap of the sequence number', () => {
  const pio = new Bus('pio');
  const seen = recorder(pio, 0x80);
  const b0 = newMailbox(), b1 = newMailbox();
  post(b0, -0x80000000, 0x80, 2); // numbered after 0x7fffffff wrapped
  post(b1, 0x7fffffff, 0x80, 1);
  server([b0, b1], pio).serveOnce();
  assert.deepEqual(seen, [1, 2]);
});
