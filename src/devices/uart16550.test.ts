import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Uart16550, UART_BACKLOG_MAX } from './uart16550.js';
import { SnapshotError, StateReader, StateWriter } from '../snapshot/state.js';
import type { SerialBackend } from './backends/types.js';
import type { IrqLine } from '../bus/bus.js';

const RBR = 0, THR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;

class FakeIrq implements IrqLine {
  levels: boolean[] = [];
  get level(): boolean { return this.levels.at(-1) ?? false; }
  set(level: boolean): void { this.levels.push(level); }
}

class FakeBackend implements SerialBackend {
  out: number[] = [];
  cb: ((b: Uint8Array) => void) | null = null;
  paused = false;
  pauses = 0;
  write(bytes: Uint8Array): void { this.out.push(...bytes); }
  onData(cb: (b: Uint8Array) => void): void { this.cb = cb; }
  pause(): void { this.paused = true; this.pauses++; }
  resume(): void { this.paused = false; }
  close(): void { /* nothing */ }
  send(s: string | number[]): void { this.cb!(typeof s === 'string' ? Buffer.from(s) : Uint8Array.from(s)); }
  get text(): string { return Buffer.from(this.out).toString('latin1'); }
}

function setup() {
  const irq = new FakeIrq();
  const be = new FakeBackend();
  const u = new Uart16550(irq, be);
  const r = (o: number) => u.read(o, 1);
  const w = (o: number, v: number) => u.write(o, 1, v);
  return { irq, be, u, r, w };
}

/** What Linux's 8250 autoconfig + startup do, in order. */
function linuxProbeAndStartup(r: (o: number) => number, w: (o: number, v: number) => void): void {
  // Scratch register test.
  w(SCR, 0xa5); assert.equal(r(SCR), 0xa5);
  w(SCR, 0x5a); assert.equal(r(SCR), 0x5a);
  // IER test: bits 0-3 stick, the rest read 0.
  w(IER, 0); assert.equal(r(IER) & 0x0f, 0);
  w(IER, 0xff); assert.equal(r(IER), 0x0f);
  w(IER, 0);
  // Loopback test: LOOP|OUT2|RTS -> MSR high nibble DCD|CTS.
  w(MCR, 0x10 | 0x0a);
  assert.equal(r(MSR) & 0xf0, 0x90);
  w(MCR, 0);
  // FIFO detection: IIR bits 7:6 = 11 for a 16550A.
  w(FCR, 0x01);
  assert.equal(r(IIR) >> 6, 3);
  // Baud 115200 via the divisor latch.
  w(LCR, 0x80); w(DLL, 1); w(DLM, 0);
  assert.equal(r(DLL), 1); assert.equal(r(DLM), 0);
  w(LCR, 0x03); // 8N1, DLAB off
  assert.equal(r(LCR), 0x03);
  w(FCR, 0x01 | 0x02 | 0x04 | 0x80); // enable + clear, trigger 8
  w(MCR, 0x0b); // DTR|RTS|OUT2
}

test('probe, baud, FIFO and loopback like Linux 8250', () => {
  const { irq, be, r, w } = setup();
  linuxProbeAndStartup(r, w);
  assert.equal(r(IIR), 0xc1, 'FIFO enabled, nothing pending');
  assert.equal(r(LSR), 0x60, 'THRE|TEMT, no data');
  assert.deepEqual(be.out, [], 'probe wrote nothing to the backend');
  assert.deepEqual(irq.levels, [], 'no interrupt during probe');
  // MSR outside loopback: DCD|DSR|CTS, and the deltas from leaving loopback.
  assert.equal(r(MSR) & 0xf0, 0xb0);
  assert.equal(r(MSR) & 0x0f, 0, 'deltas clear on read');
});

test('loopback TX goes to RX, not to the backend, and overruns after 16', () => {
  const { be, r, w } = setup();
  w(FCR, 0x07);
  w(MCR, 0x10);
  for (let i = 0; i < 17; i++) w(THR, 0x41 + i);
  assert.deepEqual(be.out, []);
  const lsr = r(LSR);
  assert.equal(lsr & 0x03, 0x03, 'DR and OE');
  assert.equal(r(LSR) & 0x02, 0, 'OE clears on read');
  const got: number[] = [];
  while (r(LSR) & 1) got.push(r(RBR));
  assert.deepEqual(got, Array.from({ length: 16 }, (_, i) => 0x41 + i));
});

test('RX interrupt: inject bytes, IIR sequence, IRQ levels', () => {
  const { irq, be, r, w } = setup();
  linuxProbeAndStartup(r, w);
  w(IER, 0x05); // RX data + line status
  assert.deepEqual(irq.levels, []);
  be.send('hi');
  assert.deepEqual(irq.levels, [true]);
  assert.equal(r(IIR), 0xcc, 'RX (timeout) with FIFO bits');
  assert.equal(r(LSR) & 1, 1);
  assert.equal(r(RBR), 0x68);
  assert.equal(irq.level, true, 'still data');
  assert.equal(r(RBR), 0x69);
  assert.equal(irq.level, false);
  assert.equal(r(IIR), 0xc1);
  assert.deepEqual(irq.levels, [true, false], 'asserted/deasserted only on change');
  // OUT2 clear gates the line even with data pending.
  w(MCR, 0x03);
  be.send('x');
  assert.equal(irq.level, false);
  assert.equal(r(IIR), 0xcc);
  w(MCR, 0x0b);
  assert.equal(irq.level, true);
  r(RBR);
  assert.equal(irq.level, false);
});

test('THRE interrupt: pending on enable and after THR write, cleared by IIR read or THR write', () => {
  const { irq, be, r, w } = setup();
  linuxProbeAndStartup(r, w);
  w(IER, 0x02);
  assert.equal(irq.level, true, 'enabling ETBEI raises THRE');
  assert.equal(r(IIR), 0xc2);
  assert.equal(irq.level, false, 'reading IIR acknowledged it');
  assert.equal(r(IIR), 0xc1);
  w(THR, 0x4f);
  assert.equal(irq.level, true, 'THR write: empty again at once');
  assert.equal(r(LSR) & 0x60, 0x60);
  w(THR, 0x4b);
  assert.equal(r(IIR), 0xc2);
  assert.equal(irq.level, false);
  assert.equal(be.text, 'OK');
  // Linux's startup THRE test: IER 0 -> THRI twice must show THRE both times.
  w(IER, 0); w(IER, 0x02); const a = r(IIR); w(IER, 0); w(IER, 0x02); const b = r(IIR); w(IER, 0);
  assert.equal(a & 0x0f, 0x02); assert.equal(b & 0x0f, 0x02);
  // Re-writing IER with ETBEI already set does not re-raise.
  w(IER, 0x02); r(IIR); w(IER, 0x02);
  assert.equal(r(IIR), 0xc1);
});

test('priority: line status > RX data > THRE > modem status', () => {
  const { be, r, w } = setup();
  w(FCR, 0x00); // 16450 mode: 1-byte FIFO, IIR RX code 0x04
  w(MCR, 0x0b);
  r(MSR); // clear deltas
  w(IER, 0x0f);
  be.send('ab'); // second byte waits in the backlog
  w(MCR, 0x1f); // loopback with OUT1 -> RI up (no delta on a rising RI)
  assert.equal(r(MSR), 0xf0);
  w(THR, 1); // loopback write into a full FIFO -> overrun, byte lost
  assert.equal(r(IIR), 0x06, 'line status first');
  r(LSR);
  assert.equal(r(IIR), 0x04, 'then RX data');
  w(MCR, 0x0b); // leave loopback: RI falls (TERI), backlog flows
  assert.equal(r(RBR), 0x61);
  assert.equal(r(RBR), 0x62);
  assert.equal(r(IIR), 0x02, 'then THRE');
  assert.equal(r(IIR), 0x00, 'then modem status');
  r(MSR);
  assert.equal(r(IIR), 0x01);
});

test('backpressure: backend paused while the FIFO is full, resumed when drained', () => {
  const { be, r, w } = setup();
  w(FCR, 0x01);
  const data = Array.from({ length: 100 }, (_, i) => i);
  be.send(data);
  assert.equal(be.paused, true);
  const got: number[] = [];
  while (r(LSR) & 1) got.push(r(RBR));
  assert.deepEqual(got, data);
  assert.equal(be.paused, false);
  // Past the backlog bound, bytes are dropped and reported as overrun.
  be.send(new Array(UART_BACKLOG_MAX + 100).fill(0x55));
  assert.equal(r(LSR) & 0x02, 0x02);
  let n = 0;
  while (r(LSR) & 1) { r(RBR); n++; }
  assert.equal(n, UART_BACKLOG_MAX);
});

test('snapshot/restore round trip and validation', () => {
  const { be, r, w, u } = setup();
  w(FCR, 0x01); w(MCR, 0x0b); w(IER, 0x01); w(SCR, 0x77);
  be.send('xyz');
  const saved = new StateWriter();
  u.saveState(saved);
  const s = JSON.parse(JSON.stringify(saved.obj)) as Record<string, unknown>;
  const restored = (irq: IrqLine, state: unknown) => { const x = new Uart16550(irq, null); x.restoreState(new StateReader(state, 'uart')); return x; };
  const irq2 = new FakeIrq();
  const u2 = restored(irq2, s);
  assert.deepEqual(irq2.levels, [true]);
  const again = new StateWriter();
  restored(new FakeIrq(), s).saveState(again);
  assert.deepEqual(again.obj, s);
  assert.equal(u2.read(SCR, 1), 0x77);
  assert.equal(String.fromCharCode(u2.read(RBR, 1), u2.read(RBR, 1), u2.read(RBR, 1)), 'xyz');
  assert.equal(r(RBR), 0x78);
  const b64 = (bytes: number[]) => Buffer.from(bytes).toString('base64');
  const bad = (state: unknown, re: RegExp) => assert.throws(() => restored(new FakeIrq(), state),
    (e: unknown) => e instanceof SnapshotError && re.test((e as Error).message));
  bad({ ...s, 'rxFifo$b64': b64(new Array(17).fill(0)) }, /uart\.rxFifo: 17 bytes/);
  bad({ ...s, 'fcr$u8': 0, 'rxFifo$b64': b64([1, 2]) }, /uart\.rxFifo: 2 bytes, but the FIFO is off/);
  bad({ ...s, 'ier$u8': 0x10 }, /uart\.ier: 16 is not an integer in \[0, 15\]/);
  bad({ ...s, 'mcr$u8': 0x20 }, /uart\.mcr/);
  bad({ ...s, 'dll$u8': 1.5 }, /uart\.dll/);
  bad({ ...s, 'fcr$u8': 0x03 }, /uart\.fcr: unsupported bits 0x3/);
  bad(null, /not an object/);
});

test('hostile guest: 1e5 random accesses never throw, IRQ only toggles', () => {
  const irq = new FakeIrq();
  const be = new FakeBackend();
  const u = new Uart16550(irq, be);
  let seed = 12345;
  const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed; };
  const sizes = [1, 2, 4, 8, 0, 3];
  for (let i = 0; i < 100_000; i++) {
    const off = (rnd() % 12) - 2;
    const size = sizes[rnd() % sizes.length]!;
    if (rnd() & 1) {
      const v = u.read(off, size);
      assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xffffffff);
    } else {
      u.write(off, size, rnd());
    }
    if (i % 1000 === 0) be.send([rnd() & 0xff, rnd() & 0xff]);
  }
  u.write(NaN, 1, NaN);
  u.read(1.5, 1);
  for (let i = 1; i < irq.levels.length; i++) assert.notEqual(irq.levels[i], irq.levels[i - 1]);
});
