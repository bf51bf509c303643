/**
 * virtio-console (virtio 1.2, 5.3; device id 3) with VIRTIO_CONSOLE_F_MULTIPORT,
 * each port backed by a SerialBackend (bhyve's pci_virtio_console).
 *
 * Queues: port 0 receiveq 0 / transmitq 1, control receiveq 2 / transmitq 3,
 * port N>0 receiveq 2(N+1) / transmitq 2(N+1)+1.
 *
 * Handshake (device side, as bhyve does it):
 *   driver DEVICE_READY(1)       -> DEVICE_ADD(id) for every port
 *   driver PORT_READY(id, 1)     -> PORT_NAME(id, name), CONSOLE_PORT(id, 1)
 *                                   for the console port, PORT_OPEN(id, 1)
 *   driver PORT_OPEN(id, v)      -> the guest side is open (v != 0) or closed
 * Host input for a port is held (bounded, the backend paused when full)
 * until the guest has opened the port and posted receive buffers.
 * Device->driver control messages wait in a bounded list until the driver
 * posts control receive buffers.
 *
 * Without MULTIPORT negotiated only port 0 exists (queues 0 and 1) and it is
 * treated as open from activation.
 */
import { UserError } from '../../errors.js';
import type { StateReader, StateWriter } from '../../snapshot/state.js';
import { VIRTIO_COMMON_FEATURES, VIRTIO_ID_CONSOLE, featureBit, hasFeature } from '../../virtio/constants.js';
import type { VirtioDevice, VirtioInterrupt } from '../../virtio/device.js';
import { type Virtqueue, VirtqueueError } from '../../virtio/queue.js';
import type { SerialBackend } from '../backends/types.js';
import { VIRTIO_CONSOLE_MAX_PORTS } from './config.js';

export const VIRTIO_CONSOLE_F_SIZE = 0;
export const VIRTIO_CONSOLE_F_MULTIPORT = 1;
export const VIRTIO_CONSOLE_F_EMERG_WRITE = 2;

export const VIRTIO_CONSOLE_DEVICE_READY = 0;
export const VIRTIO_CONSOLE_DEVICE_ADD = 1;
export const VIRTIO_CONSOLE_DEVICE_REMOVE = 2;
export const VIRTIO_CONSOLE_PORT_READY = 3;
export const VIRTIO_CONSOLE_CONSOLE_PORT = 4;
export const VIRTIO_CONSOLE_RESIZE = 5;
export const VIRTIO_CONSOLE_PORT_OPEN = 6;
export const VIRTIO_CONSOLE_PORT_NAME = 7;

/** Size of struct virtio_console_control {le32 id; le16 event; le16 value}. */
export const CONTROL_HEADER_SIZE = 8;
export { VIRTIO_CONSOLE_MAX_PORTS };
/** Config space: cols u16, rows u16, max_nr_ports u32, emerg_wr u32. */
export const VIRTIO_CONSOLE_CONFIG_SIZE = 12;

/** Host->guest bytes held per port; the backend is paused above this. */
export const RX_PENDING_MAX = 256 * 1024;
/** Device->driver control messages held while the driver posts no buffers. */
export const CONTROL_PENDING_MAX = 4 * VIRTIO_CONSOLE_MAX_PORTS + 16;
/** Guest->host bytes forwarded from one transmit chain (the rest is dropped). */
const TX_CHAIN_MAX = 256 * 1024;
/** Longest port name sent in PORT_NAME. */
const PORT_NAME_MAX = 255;

export interface VirtioConsolePortSpec {
  name: string;
  backend: SerialBackend;
  /** The port the guest uses as its console (hvc0). At most one. */
  console?: boolean;
}

export interface VirtioConsoleOptions {
  ports: readonly VirtioConsolePortSpec[];
  /** Guest protocol mistakes (rate limiting is the caller's). */
  onGuestError?: (msg: string) => void;
  maxQueueSize?: number;
}

interface Port {
  readonly id: number;
  readonly name: string;
  readonly nameBytes: Buffer;
  readonly backend: SerialBackend;
  readonly console: boolean;
  /** driver acknowledged the port with PORT_READY(id, 1) */
  ready: boolean;
  /** guest side open (PORT_OPEN from the driver) */
  guestOpen: boolean;
  rx: Buffer[];
  rxLen: number;
  paused: boolean;
  /** host bytes dropped because the pending buffer was full */
  dropped: number;
}

export function controlMessage(id: number, event: number, value: number, extra?: Uint8Array): Buffer {
  const b = Buffer.alloc(CONTROL_HEADER_SIZE + (extra?.length ?? 0));
  b.writeUInt32LE(id >>> 0, 0);
  b.writeUInt16LE(event & 0xffff, 4);
  b.writeUInt16LE(value & 0xffff, 6);
  if (extra) b.set(extra, CONTROL_HEADER_SIZE);
  return b;
}

export class VirtioConsole implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_CONSOLE;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features = VIRTIO_COMMON_FEATURES | featureBit(VIRTIO_CONSOLE_F_MULTIPORT);
  readonly configSize = VIRTIO_CONSOLE_CONFIG_SIZE;
  private readonly ports: Port[];
  private readonly onGuestError: (msg: string) => void;
  private queues: readonly Virtqueue[] = [];
  private irq: VirtioInterrupt | undefined;
  private multiport = false;
  private controlPending: Buffer[] = [];
  /** control messages dropped because the pending list was full */
  controlDropped = 0;

  constructor(opts: VirtioConsoleOptions) {
    const specs = opts.ports;
    if (specs.length < 1 || specs.length > VIRTIO_CONSOLE_MAX_PORTS) {
      throw new UserError(`virtio-console: ${specs.length} ports (expected 1 to ${VIRTIO_CONSOLE_MAX_PORTS})`);
    }
    const seen = new Set<string>();
    let consoles = 0;
    this.ports = specs.map((s, id) => {
      const nameBytes = Buffer.from(s.name, 'utf8');
      if (nameBytes.length === 0 || nameBytes.length > PORT_NAME_MAX || s.name.includes('\0')) {
        throw new UserError(`virtio-console: bad port name '${s.name}'`);
      }
      if (seen.has(s.name)) throw new UserError(`virtio-console: port name '${s.name}' used twice`);
      seen.add(s.name);
      if (s.console) consoles++;
      return {
        id, name: s.name, nameBytes, backend: s.backend, console: !!s.console,
        ready: false, guestOpen: false, rx: [], rxLen: 0, paused: false, dropped: 0,
      };
    });
    if (consoles > 1) throw new UserError('virtio-console: more than one console port');
    this.numQueues = 2 * (this.ports.length + 1);
    this.maxQueueSize = opts.maxQueueSize ?? 64;
    this.onGuestError = opts.onGuestError ?? (() => {});
    for (const p of this.ports) p.backend.onData((b) => this.hostInput(p, b));
  }

  /** Port state for tests and stats. */
  portInfo(id: number): { name: string; ready: boolean; guestOpen: boolean; pending: number; paused: boolean; dropped: number } | undefined {
    const p = this.ports[id];
    return p && { name: p.name, ready: p.ready, guestOpen: p.guestOpen, pending: p.rxLen, paused: p.paused, dropped: p.dropped };
  }

  get controlPendingCount(): number { return this.controlPending.length; }

  // ---- config -------------------------------------------------------------------

  readConfig(offset: number, size: number): number {
    const cfg = Buffer.alloc(VIRTIO_CONSOLE_CONFIG_SIZE);
    cfg.writeUInt32LE(this.ports.length, 4); // max_nr_ports; cols/rows 0 (no F_SIZE)
    if (offset < 0 || offset + size > cfg.length) return 0;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + cfg[offset + i]!;
    return v;
  }

  writeConfig(offset: number, size: number, value: number): void {
    // emerg_wr works only with F_EMERG_WRITE, which is not offered.
    this.onGuestError(`virtio-console: config write at ${offset}/${size} = 0x${(value >>> 0).toString(16)} ignored`);
  }

  // ---- lifecycle ---------------------------------------------------------------

  activate(queues: readonly Virtqueue[], _mem: unknown, interrupt: VirtioInterrupt, features: bigint): void {
    this.queues = queues;
    this.irq = interrupt;
    this.multiport = hasFeature(features, VIRTIO_CONSOLE_F_MULTIPORT);
    if (!this.multiport) {
      const p0 = this.ports[0]!;
      p0.ready = p0.guestOpen = true;
    }
    this.run(() => { for (const p of this.ports) this.flushRx(p); });
  }

  // Host input not yet in the guest's buffers is not saved: like bytes on a
  // wire, it was never the guest's.
  saveState(w: StateWriter): void {
    w.arr('controlPending', this.controlPending, (cw, m) => { cw.b64('msg', m); });
    w.arr('ports', this.ports, (pw, p) => { pw.str('name', p.name ).bool('ready', p.ready).bool('guestOpen', p.guestOpen); });
  }

  restoreState(r: StateReader): void {
    const pending = r.arr('controlPending', CONTROL_PENDING_MAX).map((c) => c.b64('msg', [CONTROL_HEADER_SIZE, CONTROL_HEADER_SIZE + 256]));
    const ports = r.arr('ports', this.ports.length);
    if (ports.length !== this.ports.length) r.fail('ports', `${ports.length} ports, this device has ${this.ports.length}`);
    const st = ports.map((pr, i) => {
      const name = pr.str('name', 256);
      if (name !== this.ports[i]!.name) pr.fail('name', `port ${i} was '${name}', this device's is '${this.ports[i]!.name}'`);
      return { ready: pr.bool('ready'), guestOpen: pr.bool('guestOpen') };
    });
    this.controlPending = pending;
    st.forEach((x, i) => { this.ports[i]!.ready = x.ready; this.ports[i]!.guestOpen = x.guestOpen; });
  }

  reset(): void {
    this.queues = [];
    this.irq = undefined;
    this.multiport = false;
    this.controlPending = [];
    for (const p of this.ports) {
      p.ready = p.guestOpen = false;
      p.rx = [];
      p.rxLen = 0;
      if (p.paused) { p.paused = false; p.backend.resume(); }
    }
  }

  queueNotify(q: number): void {
    this.run(() => {
      if (q === 2 || q === 3) {
        if (!this.multiport) { this.onGuestError(`virtio-console: notify of control queue ${q} without MULTIPORT`); return; }
        if (q === 2) this.flushControl(); else this.controlTx();
        return;
      }
      const id = q < 2 ? 0 : (q >> 1) - 1;
      const p = this.ports[id];
      if (!p || (id > 0 && !this.multiport)) { this.onGuestError(`virtio-console: notify of queue ${q}`); return; }
      if (q & 1) this.portTx(p, q); else this.flushRx(p);
    });
  }

  /** Run queue work; a VirtqueueError (or anything else) puts the device in NEEDS_RESET, never throws. */
  private run(fn: () => void): void {
    const irq = this.irq;
    if (!irq) return;
    try {
      fn();
    } catch (e) {
      irq.needsReset(e instanceof VirtqueueError ? e : new Error(`virtio-console: ${e instanceof Error ? e.message : String(e)}`));
    }
  }

  private queue(q: number): Virtqueue | undefined {
    const vq = this.queues[q];
    return vq && vq.ready && vq.isValid ? vq : undefined;
  }

  private rxQueue(p: Port): number { return p.id === 0 ? 0 : 2 * (p.id + 1); }

  // ---- control queues ----------------------------------------------------------------

  private sendControl(msg: Buffer): void {
    if (this.controlPending.length >= CONTROL_PENDING_MAX) {
      this.controlDropped++;
      this.onGuestError('virtio-console: control receive queue full, message dropped');
      return;
    }
    this.controlPending.push(msg);
  }

  private flushControl(): void {
    const vq = this.queue(2);
    if (!vq || this.controlPending.length === 0) return;
    let pushed = false;
    while (this.controlPending.length > 0) {
      const chain = vq.popChain();
      if (!chain) break;
      const msg = this.controlPending.shift()!;
      if (chain.writableLen < msg.length) this.onGuestError(`virtio-console: control buffer of ${chain.writableLen} bytes for a ${msg.length}-byte message`);
      vq.pushUsed(chain.head, chain.write(msg, 0));
      pushed = true;
    }
    if (pushed) this.irq?.signalUsed(2);
  }

  private controlTx(): void {
    const vq = this.queue(3);
    if (!vq) return;
    let pushed = false;
    for (let chain = vq.popChain(); chain; chain = vq.popChain()) {
      const msg = chain.readAll(CONTROL_HEADER_SIZE);
      vq.pushUsed(chain.head, 0);
      pushed = true;
      if (msg.length < CONTROL_HEADER_SIZE) {
        this.onGuestError(`virtio-console: short control message (${msg.length} bytes)`);
        continue;
      }
      this.handleControl(msg.readUInt32LE(0), msg.readUInt16LE(4), msg.readUInt16LE(6));
    }
    if (pushed) this.irq?.signalUsed(3);
    this.flushControl();
  }

  private handleControl(id: number, event: number, value: number): void {
    if (event === VIRTIO_CONSOLE_DEVICE_READY) {
      if (value !== 1) { this.onGuestError('virtio-console: driver failed to initialise (DEVICE_READY 0)'); return; }
      for (const p of this.ports) this.sendControl(controlMessage(p.id, VIRTIO_CONSOLE_DEVICE_ADD, 1));
      return;
    }
    const p = this.ports[id];
    if (!p) { this.onGuestError(`virtio-console: control event ${event} for unknown port ${id}`); return; }
    switch (event) {
      case VIRTIO_CONSOLE_PORT_READY:
        if (value !== 1) { this.onGuestError(`virtio-console: driver failed to add port ${id}`); return; }
        if (p.ready) return; // announced already
        p.ready = true;
        this.sendControl(controlMessage(id, VIRTIO_CONSOLE_PORT_NAME, 1, p.nameBytes));
        if (p.console) this.sendControl(controlMessage(id, VIRTIO_CONSOLE_CONSOLE_PORT, 1));
        this.sendControl(controlMessage(id, VIRTIO_CONSOLE_PORT_OPEN, 1));
        return;
      case VIRTIO_CONSOLE_PORT_OPEN:
        p.guestOpen = value !== 0;
        if (p.guestOpen) this.flushRx(p);
        return;
      default:
        this.onGuestError(`virtio-console: unexpected control event ${event} for port ${id}`);
    }
  }

  // ---- data queues -------------------------------------------------------------------

  private portTx(p: Port, q: number): void {
    const vq = this.queue(q);
    if (!vq) return;
    let pushed = false;
    for (let chain = vq.popChain(); chain; chain = vq.popChain()) {
      if (chain.readableLen > TX_CHAIN_MAX) this.onGuestError(`virtio-console: ${chain.readableLen}-byte transmit buffer truncated`);
      const bytes = chain.readAll(TX_CHAIN_MAX);
      vq.pushUsed(chain.head, 0);
      pushed = true;
      if (bytes.length > 0) p.backend.write(bytes);
    }
    if (pushed) this.irq?.signalUsed(q);
  }

  private hostInput(p: Port, bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const room = RX_PENDING_MAX - p.rxLen;
    if (room <= 0) { p.dropped += bytes.length; return; }
    const keep = bytes.length > room ? bytes.subarray(0, room) : bytes;
    p.dropped += bytes.length - keep.length;
    p.rx.push(Buffer.from(keep));
    p.rxLen += keep.length;
    if (p.rxLen >= RX_PENDING_MAX && !p.paused) { p.paused = true; p.backend.pause(); }
    this.run(() => this.flushRx(p));
  }

  private flushRx(p: Port): void {
    if (p.rxLen === 0 || !p.guestOpen) return;
    const q = this.rxQueue(p);
    const vq = this.queue(q);
    if (!vq) return;
    let pushed = false;
    while (p.rxLen > 0) {
      const chain = vq.popChain();
      if (!chain) break;
      let written = 0;
      while (p.rx.length > 0 && written < chain.writableLen) {
        const first = p.rx[0]!;
        const n = chain.write(first, written);
        written += n;
        p.rxLen -= n;
        if (n === first.length) p.rx.shift(); else p.rx[0] = first.subarray(n);
        if (n === 0) break;
      }
      vq.pushUsed(chain.head, written);
      pushed = true;
    }
    if (pushed) this.irq?.signalUsed(q);
    if (p.paused && p.rxLen <= RX_PENDING_MAX / 2) { p.paused = false; p.backend.resume(); }
  }
}
