import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest-memory.js';
import { ConfigTree } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import { VIRTIO_COMMON_FEATURES, featureBit } from '../../virtio/constants.js';
import type { VirtioInterrupt } from '../../virtio/device.js';
import type { Virtqueue } from '../../virtio/queue.js';
import { MockSplitQueue } from '../../virtio/testing/mock-driver.js';
import type { SerialBackend } from '../backends/types.js';
import { UnixSerialBackend } from '../backends/socket.js';
import {
  RX_PENDING_MAX, CONTROL_PENDING_MAX, VIRTIO_CONSOLE_CONSOLE_PORT, VIRTIO_CONSOLE_DEVICE_ADD, VIRTIO_CONSOLE_DEVICE_READY,
  VIRTIO_CONSOLE_F_MULTIPORT, VIRTIO_CONSOLE_PORT_NAME, VIRTIO_CONSOLE_PORT_OPEN, VIRTIO_CONSOLE_PORT_READY,
  VirtioConsole, controlMessage,
} from './device.js';
import { parseVirtioConsolePorts, virtioConsoleLegacyConfig } from './config.js';
import { LazySerialBackend } from './lazy-backend.js';

class FakeBackend implements SerialBackend {
  written: Buffer[] = [];
  cb: ((b: Uint8Array) => void) | undefined;
  paused = false;
  closed = false;
  write(bytes: Uint8Array): void { this.written.push(Buffer.from(bytes)); }
  onData(cb: (b: Uint8Array) => void): void { this.cb = cb; }
  pause(): void { this.paused = true; }
  resume(): void { this.paused = false; }
  close(): void { this.closed = true; }
  emit(s: string | Uint8Array): void { this.cb!(typeof s === 'string' ? Buffer.from(s) : s); }
  get text(): string { return Buffer.concat(this.written).toString(); }
}

interface H {
  dev: VirtioConsole;
  drv: MockSplitQueue[];
  qs: Virtqueue[];
  backends: FakeBackend[];
  resets: unknown[];
  errors: string[];
  signals: number[];
}

const QSIZE = 64;
const SLICE = 128 * 1024;

function harness(names: { name: string; console?: boolean }[], features?: bigint, start = true): H {
  const backends = names.map(() => new FakeBackend());
  const errors: string[] = [];
  const dev = new VirtioConsole({ ports: names.map((n, i) => ({ ...n, backend: backends[i]! })), onGuestError: (m) => errors.push(m) });
  const mem = GuestMemory.ofSize(dev.numQueues * SLICE);
  const drv: MockSplitQueue[] = [];
  const qs: Virtqueue[] = [];
  for (let i = 0; i < dev.numQueues; i++) {
    const d = new MockSplitQueue(mem, QSIZE, { base: i * SLICE, dataEnd: (i + 1) * SLICE });
    drv.push(d);
    qs.push(d.makeQueue());
  }
  const h: H = { dev, drv, qs, backends, resets: [], errors, signals: [] };
  const irq: VirtioInterrupt = {
    signalUsed: (q) => { h.signals.push(q); return true; },
    signalConfig: () => {},
    needsReset: (r) => { h.resets.push(r); },
  };
  if (start) dev.activate(qs, mem, irq, features ?? (dev.features));
  return h;
}

/** Driver sends control messages on queue 3. */
function ctrlSend(h: H, ...msgs: Uint8Array[]): void {
  for (const m of msgs) h.drv[3]!.addChain({ readable: [m] });
  h.dev.queueNotify(3);
  assert.equal(h.drv[3]!.drainUsed().length, msgs.length);
}

/** Post `n` control receive buffers and return the messages the device filled. */
function ctrlRecv(h: H, n = 8): { id: number; event: number; value: number; extra: string }[] {
  const heads: number[] = [];
  for (let i = 0; i < n; i++) heads.push(h.drv[2]!.addChain({ writable: [64] }));
  h.dev.queueNotify(2);
  return h.drv[2]!.drainUsed().map((u) => {
    const b = Buffer.from(h.drv[2]!.written(u.id, u.len));
    return { id: b.readUInt32LE(0), event: b.readUInt16LE(4), value: b.readUInt16LE(6), extra: b.subarray(8).toString() };
  });
}

function handshake(h: H): void {
  ctrlSend(h, controlMessage(0, VIRTIO_CONSOLE_DEVICE_READY, 1));
  ctrlRecv(h, 32);
  const n = h.dev.numQueues / 2 - 1;
  for (let i = 0; i < n; i++) ctrlSend(h, controlMessage(i, VIRTIO_CONSOLE_PORT_READY, 1));
  ctrlRecv(h, 32);
  for (let i = 0; i < n; i++) ctrlSend(h, controlMessage(i, VIRTIO_CONSOLE_PORT_OPEN, 1));
}

test('config space and features', () => {
  const h = harness([{ name: 'a' }, { name: 'b' }, { name: 'c' }], undefined, false);
  assert.equal(h.dev.numQueues, 8);
  assert.equal(h.dev.readConfig(4, 4), 3);
  assert.equal(h.dev.readConfig(0, 2), 0);
  assert.equal(h.dev.readConfig(20, 4), 0);
  assert.equal(h.dev.features, VIRTIO_COMMON_FEATURES | featureBit(VIRTIO_CONSOLE_F_MULTIPORT));
  assert.throws(() => new VirtioConsole({ ports: [] }), UserError);
  const b = new FakeBackend();
  assert.throws(() => new VirtioConsole({ ports: [{ name: 'x', backend: b }, { name: 'x', backend: b }] }), UserError);
  assert.throws(() => new VirtioConsole({ ports: Array.from({ length: 17 }, (_, i) => ({ name: `p${i}`, backend: b })) }), UserError);
  assert.throws(() => new VirtioConsole({ ports: [{ name: 'x', backend: b, console: true }, { name: 'y', backend: b, console: true }] }), UserError);
});

test('handshake: DEVICE_READY -> DEVICE_ADD, PORT_READY -> PORT_NAME, CONSOLE_PORT, PORT_OPEN', () => {
  const h = harness([{ name: 'console', console: true }, { name: 'org.agent' }]);
  // messages wait until the driver posts control buffers
  ctrlSend(h, controlMessage(0, VIRTIO_CONSOLE_DEVICE_READY, 1));
  assert.equal(h.dev.controlPendingCount, 2);
  assert.deepEqual(ctrlRecv(h, 1), [{ id: 0, event: VIRTIO_CONSOLE_DEVICE_ADD, value: 1, extra: '' }]);
  assert.deepEqual(ctrlRecv(h, 4), [{ id: 1, event: VIRTIO_CONSOLE_DEVICE_ADD, value: 1, extra: '' }]);
  // two buffers still posted: PORT_READY fills them at once
  ctrlSend(h, controlMessage(0, VIRTIO_CONSOLE_PORT_READY, 1), controlMessage(1, VIRTIO_CONSOLE_PORT_READY, 1));
  const got = [...h.drv[2]!.drainUsed().map((u) => Buffer.from(h.drv[2]!.written(u.id, u.len))), ...ctrlRecv(h, 8).map((m) => controlMessage(m.id, m.event, m.value, Buffer.from(m.extra)))];
  const msgs = got.map((b) => [b.readUInt32LE(0), b.readUInt16LE(4), b.readUInt16LE(6), b.subarray(8).toString()]);
  assert.deepEqual(msgs, [
    [0, VIRTIO_CONSOLE_PORT_NAME, 1, 'console'],
    [0, VIRTIO_CONSOLE_CONSOLE_PORT, 1, ''],
    [0, VIRTIO_CONSOLE_PORT_OPEN, 1, ''],
    [1, VIRTIO_CONSOLE_PORT_NAME, 1, 'org.agent'],
    [1, VIRTIO_CONSOLE_PORT_OPEN, 1, ''],
  ]);
  assert.equal(h.dev.portInfo(1)!.ready, true);
  assert.equal(h.dev.portInfo(1)!.guestOpen, false);
  ctrlSend(h, controlMessage(1, VIRTIO_CONSOLE_PORT_OPEN, 1));
  assert.equal(h.dev.portInfo(1)!.guestOpen, true);
  ctrlSend(h, controlMessage(1, VIRTIO_CONSOLE_PORT_OPEN, 0));
  assert.equal(h.dev.portInfo(1)!.guestOpen, false);
  assert.deepEqual(h.resets, []);
  assert.deepEqual(h.errors, []);
});

test('guest -> host bytes reach the port backend', () => {
  const h = harness([{ name: 'console', console: true }, { name: 'p1' }]);
  handshake(h);
  h.drv[1]!.addChain({ readable: [Buffer.from('hello '), Buffer.from('hvc0')] });
  h.dev.queueNotify(1);
  h.drv[5]!.addChain({ readable: [Buffer.from('to p1')] }, { indirect: true });
  h.dev.queueNotify(5);
  assert.equal(h.backends[0]!.text, 'hello hvc0');
  assert.equal(h.backends[1]!.text, 'to p1');
  assert.deepEqual(h.drv[1]!.drainUsed().map((u) => u.len), [0]);
  assert.ok(h.signals.includes(1) && h.signals.includes(5));
});

test('host -> guest bytes wait for open port and posted buffers', () => {
  const h = harness([{ name: 'console', console: true }, { name: 'p1' }]);
  h.backends[1]!.emit('early');
  assert.equal(h.dev.portInfo(1)!.pending, 5);
  handshake(h);
  // open but no buffers yet
  h.backends[1]!.emit(' data');
  assert.equal(h.dev.portInfo(1)!.pending, 10);
  const a = h.drv[4]!.addChain({ writable: [4] });
  const b = h.drv[4]!.addChain({ writable: [100] });
  h.dev.queueNotify(4);
  const used = h.drv[4]!.drainUsed();
  assert.deepEqual(used, [{ id: a, len: 4 }, { id: b, len: 6 }]);
  assert.equal(Buffer.from(h.drv[4]!.written(a, 4)).toString() + Buffer.from(h.drv[4]!.written(b, 6)).toString(), 'early data');
  assert.equal(h.dev.portInfo(1)!.pending, 0);
  // a buffer already posted is filled as soon as data arrives
  const c = h.drv[4]!.addChain({ writable: [64] });
  h.dev.queueNotify(4);
  assert.deepEqual(h.drv[4]!.drainUsed(), []);
  h.backends[1]!.emit('now');
  assert.deepEqual(h.drv[4]!.drainUsed(), [{ id: c, len: 3 }]);
  assert.equal(Buffer.from(h.drv[4]!.written(c, 3)).toString(), 'now');
  // port 0 uses queue 0
  const d = h.drv[0]!.addChain({ writable: [64] });
  h.backends[0]!.emit('x');
  assert.deepEqual(h.drv[0]!.drainUsed(), [{ id: d, len: 1 }]);
});

test('host input is bounded: backend paused when full, resumed when drained', () => {
  const h = harness([{ name: 'p0' }]);
  handshake(h);
  const be = h.backends[0]!;
  const chunk = Buffer.alloc(64 * 1024, 0x41);
  for (let i = 0; i < 4; i++) be.emit(chunk);
  assert.equal(be.paused, true);
  be.emit(chunk); // arrived after pause: dropped and counted
  assert.equal(h.dev.portInfo(0)!.pending, RX_PENDING_MAX);
  assert.equal(h.dev.portInfo(0)!.dropped, chunk.length);
  for (let i = 0; i < 8; i++) h.drv[0]!.addChain({ writable: [8192] });
  h.dev.queueNotify(0);
  assert.equal(h.dev.portInfo(0)!.pending, RX_PENDING_MAX - 8 * 8192);
  assert.equal(be.paused, true);
  let total = 8 * 8192;
  while (be.paused) {
    h.drv[0]!.drainUsed();
    for (let i = 0; i < 8; i++) h.drv[0]!.addChain({ writable: [8192] });
    h.dev.queueNotify(0);
    total += 8 * 8192;
  }
  assert.ok(h.dev.portInfo(0)!.pending <= RX_PENDING_MAX / 2);
  assert.equal(h.dev.portInfo(0)!.pending, RX_PENDING_MAX - total);
});

test('control messages to the driver are bounded', () => {
  const h = harness([{ name: 'p0' }]);
  for (let i = 0; i < CONTROL_PENDING_MAX + 10; i++) {
    h.drv[3]!.addChain({ readable: [controlMessage(0, VIRTIO_CONSOLE_DEVICE_READY, 1)] });
    h.dev.queueNotify(3);
    h.drv[3]!.drainUsed();
  }
  assert.equal(h.dev.controlPendingCount, CONTROL_PENDING_MAX);
  assert.equal(h.dev.controlDropped, 10);
  assert.deepEqual(h.resets, []);
});

test('malformed control messages are ignored with a guest error', () => {
  const h = harness([{ name: 'p0' }, { name: 'p1' }]);
  ctrlSend(h,
    Buffer.from([1, 2, 3]), // short
    controlMessage(7, VIRTIO_CONSOLE_PORT_READY, 1), // unknown port
    controlMessage(0, 99, 1), // unknown event
    controlMessage(0, VIRTIO_CONSOLE_DEVICE_ADD, 1), // device->driver event from the driver
    controlMessage(0xffffffff, VIRTIO_CONSOLE_PORT_OPEN, 1),
  );
  assert.equal(h.errors.length, 5);
  assert.equal(h.dev.controlPendingCount, 0);
  assert.deepEqual(h.resets, []);
  // a readable chain split mid-header still parses
  const m = controlMessage(0, VIRTIO_CONSOLE_DEVICE_READY, 1);
  ctrlSend(h, Buffer.concat([m.subarray(0, 3)]));
  h.drv[3]!.addChain({ readable: [m.subarray(0, 3), m.subarray(3)] });
  h.dev.queueNotify(3);
  assert.equal(h.dev.controlPendingCount, 2);
});

test('a broken queue sets NEEDS_RESET and queueNotify never throws', () => {
  const h = harness([{ name: 'p0' }]);
  h.drv[3]!.mem.writeU16(h.drv[3]!.avail + 2, 200); // avail idx far ahead
  assert.doesNotThrow(() => h.dev.queueNotify(3));
  assert.equal(h.resets.length, 1);
  assert.doesNotThrow(() => h.dev.queueNotify(42));
  h.dev.reset();
  assert.doesNotThrow(() => h.dev.queueNotify(3));
  h.backends[0]!.emit('after reset');
  assert.equal(h.dev.portInfo(0)!.pending, 11);
});

test('without MULTIPORT port 0 is open at once and control queues are unused', () => {
  const h = harness([{ name: 'p0' }, { name: 'p1' }], VIRTIO_COMMON_FEATURES);
  const a = h.drv[0]!.addChain({ writable: [16] });
  h.backends[0]!.emit('hi');
  assert.deepEqual(h.drv[0]!.drainUsed(), [{ id: a, len: 2 }]);
  h.dev.queueNotify(3);
  h.dev.queueNotify(5);
  assert.equal(h.errors.length, 2);
});

test('legacy config and port parsing', () => {
  const t = new ConfigTree();
  virtioConsoleLegacyConfig({ set: (k, v) => t.set(`pci.0.4.0.${k}`, v) }, 'console=/tmp/a.sock,org.qemu.guest_agent.0=/tmp/b.sock');
  assert.equal(t.get('pci.0.4.0.port.1.name'), 'org.qemu.guest_agent.0');
  assert.deepEqual(parseVirtioConsolePorts(t.node('pci.0.4.0')!), [
    { name: 'console', path: '/tmp/a.sock', console: true },
    { name: 'org.qemu.guest_agent.0', path: '/tmp/b.sock', console: false },
  ]);
  assert.throws(() => virtioConsoleLegacyConfig({ set: () => {} }, 'noport'), UserError);
  assert.throws(() => virtioConsoleLegacyConfig({ set: () => {} }, 'a='), UserError);
  assert.throws(() => parseVirtioConsolePorts(new ConfigTree().root), UserError);
});

test('end to end over a unix socket through LazySerialBackend', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-vcon-'));
  const path = join(dir, 'p.sock');
  const be = new LazySerialBackend(() => UnixSerialBackend.open(path, `unix=${path}`));
  try {
    const errors: string[] = [];
    const dev = new VirtioConsole({ ports: [{ name: 'console', backend: be, console: true }], onGuestError: (m) => errors.push(m) });
    const mem = GuestMemory.ofSize(4 * SLICE);
    const drv = Array.from({ length: 4 }, (_, i) => new MockSplitQueue(mem, QSIZE, { base: i * SLICE, dataEnd: (i + 1) * SLICE }));
    dev.activate(drv.map((d) => d.makeQueue()), mem, { signalUsed: () => true, signalConfig: () => {}, needsReset: (r) => { throw r; } }, dev.features);
    drv[1]!.addChain({ readable: [Buffer.from('boot msg')] }); // before the socket is even listening
    dev.queueNotify(1);
    dev.queueNotify(3);
    await be.ready;
    const client = net.connect({ path });
    const received: Buffer[] = [];
    client.on('data', (b: Buffer) => received.push(b));
    await new Promise<void>((r) => client.once('connect', () => r()));
    client.write('typed');
    const rx = drv[0]!.addChain({ writable: [64] });
    for (let i = 0; i < 200 && (Buffer.concat(received).length < 8 || dev.portInfo(0)!.pending < 5); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    // guest has not opened the port (MULTIPORT negotiated): data is held
    assert.equal(Buffer.concat(received).toString(), 'boot msg');
    assert.equal(dev.portInfo(0)!.pending, 5);
    drv[3]!.addChain({ readable: [controlMessage(0, VIRTIO_CONSOLE_PORT_OPEN, 1)] });
    dev.queueNotify(3);
    const used = drv[0]!.drainUsed();
    assert.deepEqual(used, [{ id: rx, len: 5 }]);
    assert.equal(Buffer.from(drv[0]!.written(rx, 5)).toString(), 'typed');
    client.destroy();
    assert.deepEqual(errors, []);
  } finally {
    await be.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
