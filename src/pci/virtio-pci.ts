/**
 * Virtio over PCI, the modern (1.x) interface: vendor capabilities pointing
 * into BAR 0 (common config, ISR, device config, notify) and MSI-X in BAR 1,
 * with INTx (ISR + a level IOAPIC pin) when the driver does not enable
 * MSI-X. The device model behind it only sees VirtioCore.
 *
 * MSI-X vectors are KVM irqfds where the host has them (ctx.msiVector): the
 * route follows the guest's table entry, set when the vector is unmasked or
 * reprogrammed while unmasked, and an interrupt is an eventfd write. Masking
 * (per vector and the function mask) stays here, with the PBA.
 *
 * BAR 0 (16 KiB):  0x0000 common cfg | 0x1000 ISR | 0x2000 device cfg | 0x3000 notify
 * BAR 1 (4 KiB):   0x000 MSI-X table (16 B/vector) | 0x800 PBA
 *
 * A transitional device (option `transitional`, for drivers that only know
 * virtio 0.9.5) has PCI device ID 0x1000 + legacy id, subsystem ID = the
 * virtio type, revision 0, and the legacy register block as I/O BAR 0; the
 * modern capabilities move to BAR 4 (as QEMU places them), MSI-X stays in
 * BAR 1. Legacy I/O BAR 0 (little-endian, guest-native on x86):
 *
 *   0x00 u32 host features (bits 0-31)   0x10 u16 queue notify
 *   0x04 u32 guest features              0x12 u8  device status
 *   0x08 u32 queue PFN                   0x13 u8  ISR (read clears)
 *   0x0c u16 queue size (read-only)      0x14 u16 config vector  } with MSI-X
 *   0x0e u16 queue select                0x16 u16 queue vector   } enabled
 *   device config at 0x14, or at 0x18 while MSI-X is enabled.
 */
import type { BusDevice, IrqLine } from '../bus/bus.js';
import type { DeviceContext, PciFunction } from './device.js';
import { PciConfig } from './config-space.js';
import { VirtioCore, type VirtioDevice } from '../virtio/device.js';
import type { StateReader, StateWriter } from '../snapshot/state.js';
import type { MsiVector } from './msi.js';
import type { ConfigNode } from '../config/tree.js';

const COMMON = 0x0000, ISR = 0x1000, DEVCFG = 0x2000, NOTIFY = 0x3000;
const BAR0_SIZE = 0x4000, BAR1_SIZE = 0x1000;
const MSIX_TABLE = 0x000, MSIX_PBA = 0x800;
const NOTIFY_MULT = 4;
const NO_VECTOR = 0xffff;
const MODERN_BAR_TRANSITIONAL = 4;
const L_HOST_FEATURES = 0x00, L_GUEST_FEATURES = 0x04, L_QUEUE_PFN = 0x08, L_QUEUE_NUM = 0x0c, L_QUEUE_SEL = 0x0e,
  L_QUEUE_NOTIFY = 0x10, L_STATUS = 0x12, L_ISR = 0x13, L_CONFIG_VECTOR = 0x14, L_QUEUE_VECTOR = 0x16;
/** Transitional PCI device IDs (virtio 1.2, 4.1.2.1), by virtio device type. */
const LEGACY_DEVICE_ID: Record<number, number> = { 1: 0x1000, 2: 0x1001, 3: 0x1003, 4: 0x1005, 5: 0x1002, 8: 0x1004, 9: 0x1009 };

export interface VirtioPciOptions {
  /** Also offer the legacy (0.9.5) interface. */
  transitional?: boolean;
}

/** Transport options of a device node: `virtio.transitional`, or the `-s` word `legacy`. */
export function virtioPciOptions(node: ConfigNode): VirtioPciOptions {
  return { transitional: node.getBool('virtio.transitional', node.getBool('legacy', false)) };
}
const CAP_VENDOR = 0x09, CAP_MSIX = 0x11;
const CFG_COMMON = 1, CFG_NOTIFY = 2, CFG_ISR = 3, CFG_DEVICE = 4;

/** PCI class per virtio device type (what QEMU reports). */
const CLASS: Record<number, [number, number]> = { 1: [0x02, 0x00], 2: [0x01, 0x80], 3: [0x07, 0x80], 4: [0xff, 0x00], 9: [0x01, 0x80] };

/** The IOAPIC input of slot `slot`'s INTA: 16-23, round robin (the DSDT's _PRT says the same). */
export function intxGsi(slot: number): number { return 16 + (slot % 8); }

export class VirtioPci implements PciFunction {
  readonly config: PciConfig;
  readonly core: VirtioCore;
  private dfSelect = 0;
  private gfSelect = 0;
  private queueSelect = 0;
  private configVector = NO_VECTOR;
  private queueVectors: number[];
  private isr = 0;
  private readonly msix: Uint32Array;
  private readonly pba: Uint32Array;
  private msixCapOff: number;
  private readonly intx: IrqLine;
  private readonly bar0: BusDevice;
  private readonly bar1: BusDevice;
  private readonly legacyBarSize: number;
  readonly transitional: boolean;
  /** per vector: its irqfd, or undefined (KVM_SIGNAL_MSI) */
  private readonly vectors: (MsiVector | undefined)[];
  /** per vector: the table entry changed since its route was set */
  private readonly routeStale: boolean[];

  constructor(private readonly ctx: DeviceContext, readonly device: VirtioDevice, bdf: { slot: number }, private readonly name: string,
    opts: VirtioPciOptions = {}) {
    const nq = device.numQueues;
    const legacyId = LEGACY_DEVICE_ID[device.deviceType];
    if (opts.transitional && legacyId === undefined) throw new Error(`virtio type ${device.deviceType} has no transitional PCI ID`);
    this.transitional = opts.transitional === true;
    const vectors = nq + 1;
    this.queueVectors = new Array(nq).fill(NO_VECTOR);
    this.msix = new Uint32Array(vectors * 4);
    for (let v = 0; v < vectors; v++) this.msix[v * 4 + 3] = 1; // masked at reset
    this.pba = new Uint32Array(Math.ceil(vectors / 32));
    this.vectors = Array.from({ length: vectors }, () => ctx.msiVector?.());
    this.routeStale = new Array(vectors).fill(true);
    const [cls, sub] = CLASS[device.deviceType] ?? [0xff, 0x00];
    this.config = new PciConfig(this.transitional
      ? { vendor: 0x1af4, device: legacyId!, revision: 0, classCode: cls, subclass: sub, subsysVendor: 0x1af4, subsys: device.deviceType, intPin: 1 }
      : { vendor: 0x1af4, device: 0x1040 + device.deviceType, revision: 1, classCode: cls, subclass: sub, subsysVendor: 0x1af4, subsys: 0x40, intPin: 1 });
    const modernBar = this.transitional ? MODERN_BAR_TRANSITIONAL : 0;
    // INTx: pin A of slot S on IOAPIC pin 16 + S mod 8 (the interrupt line tells the guest).
    const gsi = intxGsi(bdf.slot);
    this.config.bytes[0x3c] = gsi;
    this.intx = ctx.irq(gsi);
    this.core = new VirtioCore(device, ctx.mem, {
      raiseQueueInterrupt: (q) => this.interrupt(this.queueVectors[q] ?? NO_VECTOR, 1),
      raiseConfigInterrupt: () => this.interrupt(this.configVector, 2),
      guestError: (m) => ctx.guestError(name, m),
    });

    const cap = (type: number, off: number, len: number, extra?: number) => {
      const b = new Uint8Array(extra === undefined ? 14 : 18);
      const dv = new DataView(b.buffer);
      b[0] = b.length + 2; b[1] = type; b[2] = modernBar; // cap_len, cfg_type, bar
      dv.setUint32(6, off, true); dv.setUint32(10, len, true);
      if (extra !== undefined) dv.setUint32(14, extra, true);
      this.config.addCapability(CAP_VENDOR, b);
    };
    cap(CFG_COMMON, COMMON, 0x38);
    cap(CFG_ISR, ISR, 1);
    cap(CFG_DEVICE, DEVCFG, Math.max(device.configSize, 4));
    cap(CFG_NOTIFY, NOTIFY, nq * NOTIFY_MULT, NOTIFY_MULT);
    const mc = new Uint8Array(10);
    const mdv = new DataView(mc.buffer);
    mdv.setUint16(0, vectors - 1, true); // table size - 1; enable and mask bits are writable
    mdv.setUint32(2, MSIX_TABLE | 1, true); // BIR 1
    mdv.setUint32(6, MSIX_PBA | 1, true);
    const wm = new Uint8Array(10); wm[1] = 0xc0;
    this.msixCapOff = this.config.addCapability(CAP_MSIX, mc, wm);

    this.bar0 = { read: (o, s) => this.bar0Read(o, s), write: (o, s, v) => this.bar0Write(o, s, v) };
    this.bar1 = { read: (o, s) => this.msixRead(o, s), write: (o, s, v) => this.msixWrite(o, s, v) };
    this.config.addBar({ index: modernBar, size: BAR0_SIZE, kind: 'mem32', onMap: (a) => { this.map(this.bar0, a, BAR0_SIZE, 'modern'); this.mapNotify(a); } });
    this.config.addBar({ index: 1, size: BAR1_SIZE, kind: 'mem32', onMap: (a) => this.map(this.bar1, a, BAR1_SIZE, 'msix') });
    this.legacyBarSize = 1 << Math.max(5, Math.ceil(Math.log2(0x18 + device.configSize)));
    if (this.transitional) {
      const bar: BusDevice = { read: (o, s) => this.legacyRead(o, s), write: (o, s, v) => this.legacyWrite(o, s, v) };
      this.config.addBar({ index: 0, size: this.legacyBarSize, kind: 'io', onMap: (a) => { this.map(bar, a, this.legacyBarSize, 'legacy', 'pio'); this.mapLegacyNotify(a); } });
    }
    // Placed and decoding from the start, as firmware would leave them.
    this.config.write(0x10 + modernBar * 4, 4, ctx.allocMmio(BAR0_SIZE));
    this.config.write(0x14, 4, ctx.allocMmio(BAR1_SIZE));
    if (this.transitional) {
      if (!ctx.allocPio) throw new Error('a transitional virtio device needs I/O port space');
      this.config.write(0x10, 4, ctx.allocPio(this.legacyBarSize));
    }
    this.config.write(0x04, 2, this.transitional ? 0x0003 : 0x0002);
    this.config.onWrite = (off, size) => { if (off < this.msixCapOff + 4 && off + size > this.msixCapOff + 2) this.msixChanged(); };
  }

  private map(dev: BusDevice, addr: number | undefined, size: number, what: string, space: 'mmio' | 'pio' = 'mmio'): void {
    const bus = space === 'pio' ? this.ctx.pio : this.ctx.mmio;
    bus.unregister(dev);
    if (addr === undefined) return;
    try {
      bus.register(addr, size, dev, `${this.name}-${what}`);
    } catch (e) {
      // A guest that moves a BAR onto another is misconfiguring its own bus.
      this.ctx.guestError(this.name, `${what} at 0x${addr.toString(16)}: ${(e as Error).message}`);
    }
  }

  private notifiers: { remove(): void }[] = [];

  /**
   * Queue notifications as KVM ioeventfds where the host allows: Linux writes
   * the queue index as 16 bits, and that write then never leaves the kernel.
   */
  private mapNotify(addr: number | undefined): void {
    this.notifiers = this.rebindNotifiers(this.notifiers, addr, (a, q) => this.bindNotify(q, a + NOTIFY + q * NOTIFY_MULT, {}));
  }

  /** Drop `old` and, when the BAR is mapped at `addr`, bind one notifier per queue. */
  private rebindNotifiers(old: { remove(): void }[], addr: number | undefined,
    bind: (addr: number, q: number) => { remove(): void } | undefined): { remove(): void }[] {
    for (const n of old) n.remove();
    if (addr === undefined) return [];
    const out: { remove(): void }[] = [];
    for (let q = 0; q < this.device.numQueues; q++) {
      const n = bind(addr, q);
      if (n) out.push(n);
    }
    return out;
  }

  private legacyNotifiers: { remove(): void }[] = [];

  /** Legacy QUEUE_NOTIFY as port ioeventfds, one per queue matching the index written. */
  private mapLegacyNotify(addr: number | undefined): void {
    this.legacyNotifiers = this.rebindNotifiers(this.legacyNotifiers, addr, (a, q) => this.bindNotify(q, a + L_QUEUE_NOTIFY, { pio: true, datamatch: q }));
  }

  /**
   * Queue q's notify register at addr as a KVM ioeventfd: the device's own
   * eventfd when its queues run on a worker (the notify never reaches this
   * thread), else one the VM polls for us. Undefined: notifies come as exits.
   */
  private bindNotify(q: number, addr: number, opts: { pio?: boolean; datamatch?: number }): { remove(): void } | undefined {
    const off = this.device.offload;
    if (off) return this.ctx.bindIoeventfd?.(off.notifyFd(q), addr, 2, opts);
    return this.ctx.ioeventfd?.(addr, 2, () => this.core.notifyQueue(q), opts);
  }

  // ---- interrupts ----

  private get msixControl(): number { return this.config.read(this.msixCapOff + 2, 2); }
  private get msixEnabled(): boolean { return (this.msixControl & 0x8000) !== 0; }

  private interrupt(vector: number, isrBit: number): void {
    if (this.msixEnabled) {
      if (vector === NO_VECTOR || vector * 4 >= this.msix.length) return;
      const masked = (this.msixControl & 0x4000) !== 0 || (this.msix[vector * 4 + 3]! & 1) !== 0;
      if (masked) { this.pba[vector >> 5]! |= 1 << (vector & 31); return; }
      this.sendMsi(vector);
      return;
    }
    this.isr |= isrBit;
    this.intx.set(true);
  }

  private entryAddress(vector: number): bigint {
    const o = vector * 4;
    return (BigInt(this.msix[o + 1]!) << 32n) | BigInt(this.msix[o]!);
  }

  /** Set vector's irqfd route to its table entry if the entry changed since. */
  private syncRoute(vector: number): void {
    const irqfd = this.vectors[vector];
    if (!irqfd || !this.routeStale[vector]) return;
    irqfd.route(this.entryAddress(vector), this.msix[vector * 4 + 2]!);
    this.routeStale[vector] = false;
  }

  private sendMsi(vector: number): void {
    const irqfd = this.vectors[vector];
    if (irqfd) {
      this.syncRoute(vector);
      irqfd.signal();
      return;
    }
    this.ctx.msi(this.entryAddress(vector), this.msix[vector * 4 + 2]!);
  }

  /** MSI-X enable/mask or a table entry changed: routes of unmasked vectors follow, pending ones go out. */
  private msixChanged(): void {
    if (this.msixEnabled && !(this.msixControl & 0x4000)) {
      for (let v = 0; v < this.vectors.length; v++) if (!(this.msix[v * 4 + 3]! & 1)) this.syncRoute(v);
    }
    this.deliverPending();
    this.updateDirect();
  }

  /**
   * For a device on a worker: per queue, the irqfd it may write itself (MSI-X
   * on, function and vector unmasked, route current), else -1 so it asks
   * this thread, which does masking, the PBA and INTx.
   */
  private updateDirect(): void {
    const words = this.device.offload?.directIrq;
    if (!words) return;
    const open = this.msixEnabled && !(this.msixControl & 0x4000);
    for (let q = 0; q < words.length; q++) {
      const v = this.queueVectors[q] ?? NO_VECTOR;
      const irqfd = open && v !== NO_VECTOR && !(this.msix[v * 4 + 3]! & 1) ? this.vectors[v] : undefined;
      if (irqfd) this.syncRoute(v);
      Atomics.store(words, q, irqfd ? irqfd.fd : -1);
    }
  }

  /** Deliver interrupts that became unmasked. */
  private deliverPending(): void {
    if (!this.msixEnabled || this.msixControl & 0x4000) return;
    for (let v = 0; v * 4 < this.msix.length; v++) {
      const bit = 1 << (v & 31);
      if ((this.pba[v >> 5]! & bit) && !(this.msix[v * 4 + 3]! & 1)) {
        this.pba[v >> 5]! &= ~bit;
        this.sendMsi(v);
      }
    }
  }

  private msixRead(off: number, size: number): number {
    if (size !== 4 || off & 3) return 0;
    if (off >= MSIX_PBA) { const i = (off - MSIX_PBA) >> 2; return this.pba[i] ?? 0; }
    return this.msix[off >> 2] ?? 0;
  }

  private msixWrite(off: number, size: number, value: number): void {
    if (size !== 4 || off & 3 || off >= MSIX_PBA) return; // PBA is read-only
    const i = off >> 2;
    if (i >= this.msix.length) return;
    if ((i & 3) === 3) {
      this.msix[i] = value & 1;
    } else {
      if (this.msix[i] === value >>> 0) return;
      this.msix[i] = value >>> 0;
      this.routeStale[i >> 2] = true;
    }
    this.msixChanged();
  }

  // ---- BAR 0 ----

  private bar0Read(off: number, size: number): number {
    if (off >= COMMON && off < COMMON + 0x38) return this.commonRead(off - COMMON, size);
    if (off === ISR) {
      const v = this.isr;
      this.isr = 0; // reading acknowledges
      this.intx.set(false);
      return v;
    }
    if (off >= DEVCFG && off < NOTIFY) return this.core.readConfig(off - DEVCFG, size);
    return 0;
  }

  private bar0Write(off: number, size: number, value: number): void {
    if (off >= COMMON && off < COMMON + 0x38) { this.commonWrite(off - COMMON, size, value); return; }
    if (off >= DEVCFG && off < NOTIFY) { this.core.writeConfig(off - DEVCFG, size, value); return; }
    if (off >= NOTIFY && off < NOTIFY + this.device.numQueues * NOTIFY_MULT) {
      this.core.notifyQueue((off - NOTIFY) / NOTIFY_MULT | 0);
    }
  }

  private commonRead(off: number, size: number): number {
    const q = this.core.queue(this.queueSelect);
    let v: number;
    switch (off & ~3) {
      case 0x00: v = this.dfSelect; break;
      case 0x04: v = this.core.deviceFeatureWord(this.dfSelect); break;
      case 0x08: v = this.gfSelect; break;
      case 0x0c: v = this.core.driverFeatureWord(this.gfSelect); break;
      case 0x10: v = this.configVector | (this.device.numQueues << 16); break;
      case 0x14: v = this.core.status | (this.core.configGeneration << 8) | (this.queueSelect << 16); break;
      case 0x18: v = (q?.size ?? 0) | ((q ? this.queueVectors[this.queueSelect]! : NO_VECTOR) << 16); break;
      case 0x1c: v = (q?.ready ? 1 : 0) | ((q ? this.queueSelect : 0) << 16); break; // notify_off = queue index
      case 0x20: v = Number((q?.descTable ?? 0n) & 0xffffffffn); break;
      case 0x24: v = Number((q?.descTable ?? 0n) >> 32n); break;
      case 0x28: v = Number((q?.availRing ?? 0n) & 0xffffffffn); break;
      case 0x2c: v = Number((q?.availRing ?? 0n) >> 32n); break;
      case 0x30: v = Number((q?.usedRing ?? 0n) & 0xffffffffn); break;
      case 0x34: v = Number((q?.usedRing ?? 0n) >> 32n); break;
      default: v = 0;
    }
    const shift = (off & 3) * 8;
    return size === 4 ? v >>> 0 : (v >>> shift) & (size === 2 ? 0xffff : 0xff);
  }

  private commonWrite(off: number, size: number, value: number): void {
    this.core.setLegacy(false);
    const q = this.queueSelect;
    const w16 = value & 0xffff;
    switch (off) {
      case 0x00: this.dfSelect = value >>> 0; break;
      case 0x08: this.gfSelect = value >>> 0; break;
      case 0x0c: this.core.writeDriverFeatureWord(this.gfSelect, value >>> 0); break;
      // A vector past the table reads back as NO_VECTOR: the driver checks.
      case 0x10: this.configVector = w16 < this.device.numQueues + 1 ? w16 : NO_VECTOR; break;
      case 0x14:
        if (size === 1 || size === 4) {
          this.core.writeStatus(value & 0xff);
          if ((value & 0xff) === 0) this.resetTransport();
        }
        break;
      case 0x16: this.queueSelect = w16; break;
      case 0x18: this.core.setQueueSize(q, w16); break;
      case 0x1a:
        if (q < this.queueVectors.length) this.queueVectors[q] = w16 < this.device.numQueues + 1 ? w16 : NO_VECTOR;
        this.updateDirect();
        break;
      case 0x1c: this.core.setQueueEnable(q, w16 === 1); break;
      case 0x20: case 0x24: case 0x28: case 0x2c: case 0x30: case 0x34: {
        const vq = this.core.queue(q);
        if (!vq) break;
        const kind = off < 0x28 ? 'desc' : off < 0x30 ? 'avail' : 'used';
        const cur = kind === 'desc' ? vq.descTable : kind === 'avail' ? vq.availRing : vq.usedRing;
        const hi = (off & 4) !== 0;
        const next = hi ? (cur & 0xffffffffn) | (BigInt(value >>> 0) << 32n) : (cur & ~0xffffffffn) | BigInt(value >>> 0);
        this.core.setQueueAddress(q, kind, next);
        break;
      }
      default: break; // read-only or unknown: ignored
    }
  }

  // ---- legacy I/O BAR 0 (transitional devices) ----

  private get legacyConfigOffset(): number { return this.msixEnabled ? 0x18 : 0x14; }

  private legacyRead(off: number, size: number): number {
    const cfg = this.legacyConfigOffset;
    if (off >= cfg) return this.core.readConfig(off - cfg, size);
    const q = this.core.queue(this.queueSelect);
    let v: number;
    let base: number;
    switch (true) {
      case off < 0x04: base = L_HOST_FEATURES; v = this.core.deviceFeatureWord(0); break;
      case off < 0x08: base = L_GUEST_FEATURES; v = this.core.driverFeatureWord(0); break;
      case off < 0x0c: base = L_QUEUE_PFN; v = q ? Number(q.descTable / 4096n) >>> 0 : 0; break;
      case off < 0x0e: base = L_QUEUE_NUM; v = q ? q.maxSize : 0; break;
      case off < 0x10: base = L_QUEUE_SEL; v = this.queueSelect; break;
      case off < 0x12: base = L_QUEUE_NOTIFY; v = 0; break;
      case off === L_STATUS: base = L_STATUS; v = this.core.status; break;
      case off === L_ISR: {
        const isr = this.isr;
        this.isr = 0; // reading acknowledges
        this.intx.set(false);
        return size === 1 ? isr : 0;
      }
      case off < 0x16: base = L_CONFIG_VECTOR; v = this.configVector; break;
      default: base = L_QUEUE_VECTOR; v = q ? this.queueVectors[this.queueSelect]! : NO_VECTOR; break;
    }
    const shift = (off - base) * 8;
    const mask = size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff;
    return ((v >>> shift) & mask) >>> 0;
  }

  private legacyWrite(off: number, size: number, value: number): void {
    const cfg = this.legacyConfigOffset;
    if (off >= cfg) { this.core.writeConfig(off - cfg, size, value); return; }
    this.core.setLegacy(true);
    const w16 = value & 0xffff;
    switch (off) {
      case L_GUEST_FEATURES: if (size === 4) this.core.writeDriverFeatureWord(0, value >>> 0); break;
      case L_QUEUE_PFN: if (size === 4) this.core.setQueuePfn(this.queueSelect, value >>> 0); break;
      case L_QUEUE_SEL: if (size === 2) this.queueSelect = w16; break;
      case L_QUEUE_NOTIFY: if (size === 2) this.core.notifyQueue(w16); break;
      case L_STATUS:
        if (size === 1) {
          this.core.writeStatus(value & 0xff);
          if ((value & 0xff) === 0) this.resetTransport();
        }
        break;
      case L_CONFIG_VECTOR: if (size === 2 && this.msixEnabled) this.configVector = w16 < this.device.numQueues + 1 ? w16 : NO_VECTOR; break;
      case L_QUEUE_VECTOR:
        if (size === 2 && this.msixEnabled && this.queueSelect < this.queueVectors.length) {
          this.queueVectors[this.queueSelect] = w16 < this.device.numQueues + 1 ? w16 : NO_VECTOR;
          this.updateDirect();
        }
        break;
      default: break; // read-only or unknown: ignored
    }
  }

  private resetTransport(): void {
    this.configVector = NO_VECTOR;
    this.queueVectors.fill(NO_VECTOR);
    this.isr = 0;
    this.intx.set(false);
    this.updateDirect();
  }

  reset(): void { this.core.reset(); this.resetTransport(); }

  /** Set by the device's registration when the model holds host resources (files). */
  onDestroy?: () => void;

  /** Stop taking requests (a device on a worker finishes what it took and hands its queue state back). */
  async quiesce(): Promise<void> {
    await this.device.offload?.quiesce();
    this.device.syncForSave?.();
  }
  unquiesce(): void { this.device.offload?.unquiesce(); }
  activity(): number { const s = this.device.offload?.served; return s ? Atomics.load(s, 0) : 0; }

  /**
   * VM teardown: the notifiers first (nothing new comes in), then the model
   * (a worker stops there), then the irqfds it may have been writing.
   */
  destroy(): void {
    this.mapNotify(undefined);
    this.mapLegacyNotify(undefined);
    try {
      this.onDestroy?.();
    } finally {
      for (const v of this.vectors) v?.close();
    }
  }

  // ---- save / restore ----

  saveState(w: StateWriter): void {
    w.u32('dfSelect', this.dfSelect).u32('gfSelect', this.gfSelect).u16('queueSelect', this.queueSelect)
      .u16('configVector', this.configVector).u8('isr', this.isr)
      .b64('queueVectors', new Uint8Array(Uint16Array.from(this.queueVectors).buffer))
      .b64('msix', new Uint8Array(this.msix.buffer)).b64('pba', new Uint8Array(this.pba.buffer));
    w.obj_('virtio', (vw) => this.core.saveState(vw));
  }

  restoreState(r: StateReader): void {
    const nq = this.device.numQueues;
    const vecOk = (v: number) => v === NO_VECTOR || v < nq + 1;
    const dfSelect = r.u32('dfSelect'), gfSelect = r.u32('gfSelect'), queueSelect = r.u16('queueSelect');
    const configVector = r.u16('configVector'), isr = r.u8('isr', 3);
    if (!vecOk(configVector)) r.fail('configVector', `vector ${configVector} is past the MSI-X table (${nq + 1} entries)`);
    const qv = r.b64('queueVectors', nq * 2);
    const queueVectors = Array.from({ length: nq }, (_, i) => qv.readUInt16LE(i * 2));
    queueVectors.forEach((v, i) => { if (!vecOk(v)) r.fail('queueVectors', `queue ${i}: vector ${v} is past the MSI-X table`); });
    const msix = r.b64('msix', this.msix.byteLength), pba = r.b64('pba', this.pba.byteLength);
    this.core.restoreState(r.obj('virtio'));
    this.dfSelect = dfSelect; this.gfSelect = gfSelect; this.queueSelect = queueSelect;
    this.configVector = configVector; this.queueVectors = queueVectors; this.isr = isr;
    this.msix.set(new Uint32Array(msix.buffer.slice(msix.byteOffset, msix.byteOffset + msix.length)));
    for (let v = 0; v * 4 < this.msix.length; v++) this.msix[v * 4 + 3]! &= 1;
    this.pba.set(new Uint32Array(pba.buffer.slice(pba.byteOffset, pba.byteOffset + pba.length)));
    // irqfd routes and a worker's direct interrupts follow the restored table.
    this.routeStale.fill(true);
    this.msixChanged();
    if (!this.msixEnabled) this.intx.set(this.isr !== 0);
  }

  afterRestore(): void {
    this.deliverPending();
    this.core.kickQueues();
  }

}
