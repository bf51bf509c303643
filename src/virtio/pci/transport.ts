/**
 * Virtio over PCI, the modern (1.x) interface: vendor capabilities pointing
 * into BAR 0 (common config, ISR, device config, notify) and MSI-X in BAR 1
 * (pci/msix.ts), with INTx (ISR + a level IOAPIC pin) when the driver does
 * not enable MSI-X. The device model behind it only sees VirtioCore.
 *
 * BAR 0 (16 KiB):  0x0000 common cfg | 0x1000 ISR | 0x2000 device cfg | 0x3000 notify
 * BAR 1 (4 KiB):   0x000 MSI-X table (16 B/vector) | 0x800 PBA
 *
 * A transitional device (option `transitional`, for drivers that only know
 * virtio 0.9.5) has PCI device ID 0x1000 + legacy id, subsystem ID = the
 * virtio type, revision 0, and the legacy register block (legacy.ts) as I/O
 * BAR 0; the modern capabilities move to BAR 4 (as QEMU places them), MSI-X
 * stays in BAR 1.
 */
import type { IrqLine } from '../../bus/bus.js';
import { intxGsi, type DeviceContext, type PciFunction } from '../../pci/device.js';
import { PciConfig } from '../../pci/config-space.js';
import { PciBars } from '../../pci/bars.js';
import { Msix } from '../../pci/msix.js';
import { VirtioCore, type VirtioDevice } from '../device.js';
import { LEGACY_QUEUE_NOTIFY, LegacyRegisters, legacyBarSize, legacyDeviceId, type TransportRegisters } from './legacy.js';
import type { StateReader, StateWriter } from '../../snapshot/state.js';
import type { ConfigNode } from '../../config/tree.js';
import type { DiskCheckpoint } from '../../snapshot/disks.js';

const COMMON = 0x0000, ISR = 0x1000, DEVCFG = 0x2000, NOTIFY = 0x3000;
const BAR0_SIZE = 0x4000, BAR1_SIZE = 0x1000;
const MSIX_TABLE = 0x000, MSIX_PBA = 0x800;
const NOTIFY_MULT = 4;
const NO_VECTOR = 0xffff;
const MODERN_BAR_TRANSITIONAL = 4;

export interface VirtioPciOptions {
  /** Also offer the legacy (0.9.5) interface. */
  transitional?: boolean;
}

/** Transport options of a device node: `virtio.transitional`, or the `-s` word `legacy`. */
export function virtioPciOptions(node: ConfigNode): VirtioPciOptions {
  return { transitional: node.getBool('virtio.transitional', node.getBool('legacy', false)) };
}
const CAP_VENDOR = 0x09;
const CFG_COMMON = 1, CFG_NOTIFY = 2, CFG_ISR = 3, CFG_DEVICE = 4;

/** PCI class per virtio device type (what QEMU reports). */
const CLASS: Record<number, [number, number]> = { 1: [0x02, 0x00], 2: [0x01, 0x80], 3: [0x07, 0x80], 4: [0xff, 0x00], 9: [0x01, 0x80] };

type Notifier = { remove(): void };

export class VirtioPci implements PciFunction, TransportRegisters {
  readonly config: PciConfig;
  readonly core: VirtioCore;
  readonly transitional: boolean;
  /** queue_select, one register for both interfaces */
  queueSelect = 0;
  private dfSelect = 0;
  private gfSelect = 0;
  private cfgVector = NO_VECTOR;
  private queueVectors: number[];
  private isr = 0;
  private readonly msix: Msix;
  private readonly intx: IrqLine;
  private notifiers: Notifier[] = [];
  private legacyNotifiers: Notifier[] = [];

  constructor(private readonly ctx: DeviceContext, readonly device: VirtioDevice, bdf: { slot: number }, name: string,
    opts: VirtioPciOptions = {}) {
    const nq = device.numQueues;
    const legacyId = legacyDeviceId(device.deviceType);
    if (opts.transitional && legacyId === undefined) throw new Error(`virtio type ${device.deviceType} has no transitional PCI ID`);
    this.transitional = opts.transitional === true;
    this.queueVectors = new Array(nq).fill(NO_VECTOR);
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
      raiseQueueInterrupt: (q) => this.interrupt(this.queueVector(q), 1),
      raiseConfigInterrupt: () => this.interrupt(this.cfgVector, 2),
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
    this.msix = new Msix(this.config, ctx, { vectors: nq + 1, bar: 1, table: MSIX_TABLE, pba: MSIX_PBA }, () => this.updateDirect());

    // Placed and decoding from the start, as firmware would leave them.
    const bars = new PciBars(ctx, this.config, name);
    bars.add({
      index: modernBar, size: BAR0_SIZE, kind: 'mem32', what: 'modern',
      dev: { read: (o, s) => this.bar0Read(o, s), write: (o, s, v) => this.bar0Write(o, s, v) },
      onMap: (a) => this.mapNotify(a),
    });
    bars.add({ index: 1, size: BAR1_SIZE, kind: 'mem32', what: 'msix', dev: this.msix });
    if (this.transitional) {
      bars.add({
        index: 0, size: legacyBarSize(device.configSize), kind: 'io', what: 'legacy',
        dev: new LegacyRegisters(this), onMap: (a) => this.mapLegacyNotify(a),
      });
    }
    bars.enable();
  }

  /**
   * Queue notifications as KVM ioeventfds where the host allows: Linux writes
   * the queue index as 16 bits, and that write then never leaves the kernel.
   */
  private mapNotify(addr: number | undefined): void {
    this.notifiers = this.rebindNotifiers(this.notifiers, addr, (a, q) => this.bindNotify(q, a + NOTIFY + q * NOTIFY_MULT, {}));
  }

  /** Legacy QUEUE_NOTIFY as port ioeventfds, one per queue matching the index written. */
  private mapLegacyNotify(addr: number | undefined): void {
    this.legacyNotifiers = this.rebindNotifiers(this.legacyNotifiers, addr, (a, q) => this.bindNotify(q, a + LEGACY_QUEUE_NOTIFY, { pio: true, datamatch: q }));
  }

  /** Drop `old` and, when the BAR is mapped at `addr`, bind one notifier per queue. */
  private rebindNotifiers(old: Notifier[], addr: number | undefined, bind: (addr: number, q: number) => Notifier | undefined): Notifier[] {
    for (const n of old) n.remove();
    if (addr === undefined) return [];
    const out: Notifier[] = [];
    for (let q = 0; q < this.device.numQueues; q++) {
      const n = bind(addr, q);
      if (n) out.push(n);
    }
    return out;
  }

  /**
   * Queue q's notify register at addr as a KVM ioeventfd: the device's own
   * eventfd when its queues run on a worker (the notify never reaches this
   * thread), else one the VM polls for us. Undefined: notifies come as exits.
   */
  private bindNotify(q: number, addr: number, opts: { pio?: boolean; datamatch?: number }): Notifier | undefined {
    const off = this.device.offload;
    if (off) return this.ctx.bindIoeventfd?.(off.notifyFd(q), addr, 2, opts);
    return this.ctx.ioeventfd?.(addr, 2, () => this.core.notifyQueue(q), opts);
  }

  // ---- interrupts and the registers both interfaces share ----

  get msixEnabled(): boolean { return this.msix.enabled; }
  get configVector(): number { return this.cfgVector; }
  queueVector(q: number): number { return this.queueVectors[q] ?? NO_VECTOR; }

  /** A vector register's value: one past the table reads back as NO_VECTOR (the driver checks). */
  private vector(v: number): number { return v < this.msix.vectors ? v : NO_VECTOR; }

  setConfigVector(v: number): void { this.cfgVector = this.vector(v); }

  setQueueVector(q: number, v: number): void {
    if (q < this.queueVectors.length) this.queueVectors[q] = this.vector(v);
    this.updateDirect();
  }

  writeStatus(value: number): void {
    this.core.writeStatus(value & 0xff);
    if ((value & 0xff) === 0) this.resetTransport();
  }

  takeIsr(): number {
    const v = this.isr;
    this.isr = 0; // reading acknowledges
    this.intx.set(false);
    return v;
  }

  private interrupt(vector: number, isrBit: number): void {
    if (this.msix.signal(vector)) return;
    this.isr |= isrBit;
    this.intx.set(true);
  }

  /**
   * For a device on a worker: per queue, the irqfd it may write itself (MSI-X
   * on, function and vector unmasked, route current), else -1 so it asks
   * this thread, which does masking, the PBA and INTx.
   */
  private updateDirect(): void {
    const words = this.device.offload?.directIrq;
    if (!words) return;
    for (let q = 0; q < words.length; q++) Atomics.store(words, q, this.msix.directFd(this.queueVector(q)));
  }

  // ---- BAR 0 ----

  private bar0Read(off: number, size: number): number {
    if (off >= COMMON && off < COMMON + 0x38) return this.commonRead(off - COMMON, size);
    if (off === ISR) return this.takeIsr();
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
      case 0x10: v = this.cfgVector | (this.device.numQueues << 16); break;
      case 0x14: v = this.core.status | (this.core.configGeneration << 8) | (this.queueSelect << 16); break;
      case 0x18: v = (q?.size ?? 0) | (this.queueVector(this.queueSelect) << 16); break;
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
      case 0x10: this.setConfigVector(w16); break;
      case 0x14: if (size === 1 || size === 4) this.writeStatus(value); break;
      case 0x16: this.queueSelect = w16; break;
      case 0x18: this.core.setQueueSize(q, w16); break;
      case 0x1a: this.setQueueVector(q, w16); break;
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

  private resetTransport(): void {
    this.cfgVector = NO_VECTOR;
    this.queueVectors.fill(NO_VECTOR);
    this.isr = 0;
    this.intx.set(false);
    this.updateDirect();
  }

  reset(): void { this.core.reset(); this.resetTransport(); }

  /** Set by the device's registration when the model holds host resources (files). */
  onDestroy?: () => void;
  /** Set by the device's registration when it counts things for `tshyvectl --get-stats` (PciFunction.stats). */
  stats?: () => Record<string, number>;
  /** Set by the registration of a device with a disk (PciFunction.disk). */
  disk?: DiskCheckpoint;

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
      this.msix.close();
    }
  }

  // ---- save / restore ----

  saveState(w: StateWriter): void {
    w.u32('dfSelect', this.dfSelect).u32('gfSelect', this.gfSelect).u16('queueSelect', this.queueSelect)
      .u16('configVector', this.cfgVector).u8('isr', this.isr)
      .b64('queueVectors', new Uint8Array(Uint16Array.from(this.queueVectors).buffer));
    this.msix.saveState(w);
    w.obj_('virtio', (vw) => this.core.saveState(vw));
  }

  restoreState(r: StateReader): void {
    const nq = this.device.numQueues;
    const vecOk = (v: number) => this.vector(v) === v;
    const dfSelect = r.u32('dfSelect'), gfSelect = r.u32('gfSelect'), queueSelect = r.u16('queueSelect');
    const configVector = r.u16('configVector'), isr = r.u8('isr', 3);
    if (!vecOk(configVector)) r.fail('configVector', `vector ${configVector} is past the MSI-X table (${this.msix.vectors} entries)`);
    const qv = r.b64('queueVectors', nq * 2);
    const queueVectors = Array.from({ length: nq }, (_, i) => qv.readUInt16LE(i * 2));
    queueVectors.forEach((v, i) => { if (!vecOk(v)) r.fail('queueVectors', `queue ${i}: vector ${v} is past the MSI-X table`); });
    const installMsix = this.msix.readState(r);
    this.core.restoreState(r.obj('virtio'));
    this.dfSelect = dfSelect; this.gfSelect = gfSelect; this.queueSelect = queueSelect;
    this.cfgVector = configVector; this.queueVectors = queueVectors; this.isr = isr;
    // irqfd routes and a worker's direct interrupts follow the restored table.
    installMsix();
    if (!this.msix.enabled) this.intx.set(this.isr !== 0);
  }

  afterRestore(): void {
    this.msix.deliverPending();
    this.core.kickQueues();
  }
}
