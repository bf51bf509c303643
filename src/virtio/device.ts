/**
 * The virtio device model interface (bhyve's virtio_consts, Firecracker's
 * VirtioDevice) and VirtioCore, the transport-independent half of every
 * virtio device: device status, feature negotiation, per-queue
 * configuration, activation at DRIVER_OK, NEEDS_RESET and notifications.
 *
 * A transport (virtio-pci modern, later maybe MMIO) owns the register
 * layout, feature/queue select registers, ISR and MSI-X; it forwards the
 * driver's accesses to VirtioCore and supplies the interrupt hooks.
 *
 * Status rules enforced here (spec 2.1, 3.1):
 *  - writing 0 resets the device (queues, features, status);
 *  - status bits are only cleared by reset; NEEDS_RESET is device-owned;
 *  - DRIVER needs ACKNOWLEDGE, FEATURES_OK needs DRIVER, DRIVER_OK needs
 *    FEATURES_OK: a bit set out of order is dropped;
 *  - FEATURES_OK is dropped unless the driver's features are a subset of the
 *    offered ones, include VERSION_1 and the device accepts them;
 *  - driver features are frozen once FEATURES_OK is set;
 *  - at DRIVER_OK every enabled queue is validated and the device activated;
 *    a bad queue sets NEEDS_RESET instead;
 *  - queue configuration is refused once the queue is enabled, and after
 *    DRIVER_OK it also sets NEEDS_RESET.
 *
 * Legacy mode (a transitional device driven through its 0.9.5 interface,
 * chosen by the transport while the status is 0): there is no FEATURES_OK
 * step and no VERSION_1. The driver writes its features (32 bits) and then
 * DRIVER_OK, at which point the features are checked (a subset of the
 * offered ones, without VERSION_1) and frozen; unacceptable ones keep
 * DRIVER_OK from being set. A queue is configured by one page number and is
 * live from then on (setQueuePfn).
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import {
  FEATURES_MASK, VIRTIO_F_VERSION_1, VIRTIO_LEGACY_PAGE, legacyRingLayout, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
  VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DRIVER, VIRTIO_STATUS_DRIVER_OK, VIRTIO_STATUS_FAILED,
  VIRTIO_STATUS_FEATURES_OK, VIRTIO_STATUS_NEEDS_RESET, featureBit, hasFeature,
} from './constants.js';
import { Virtqueue, VirtqueueError } from './queue.js';
import { SnapshotError, type StateReader, type StateWriter } from '../snapshot/state.js';

/** What a device uses to talk back to the driver. */
export interface VirtioInterrupt {
  /**
   * Call after pushUsed on queue `q`: raises the queue's interrupt if the
   * driver wants one now (NO_INTERRUPT / used_event). Returns whether it did.
   */
  signalUsed(q: number): boolean;
  /** The device config changed: bump the generation, raise the config interrupt. */
  signalConfig(): void;
  /** A guest protocol error (e.g. a VirtqueueError): set NEEDS_RESET. */
  needsReset(reason: unknown): void;
  /**
   * Raise queue `q`'s interrupt without looking at the ring: for a device
   * whose queue runs on another thread, which already checked that the
   * driver wants it (main thread).
   */
  raise?(q: number): void;
}

/**
 * A device that serves its queues off the main thread (a worker per device)
 * takes its notifications and signals its interrupts without the main
 * thread. Its transport asks for these and honours them.
 */
export interface VirtioOffload {
  /** The eventfd the worker waits on for queue `q`: the transport binds its notify registers to it (KVM ioeventfds). */
  notifyFd(q: number): number;
  /**
   * One word per queue, shared with the worker: the irqfd to write for the
   * queue's interrupt while direct delivery is allowed (MSI-X on, vector
   * unmasked, route set), else -1 and the worker asks the main thread.
   */
  readonly directIrq: Int32Array;
  /**
   * A counter shared with the worker (word 0, wraps): the queue
   * notifications it has taken. It works without vCPU exits, so the halt
   * check reads this to tell a busy VM from a halted one.
   */
  readonly served: Int32Array;
  /** Stop taking requests; resolves when in-flight ones are on the used ring and the main thread's queues hold the true state. */
  quiesce(): Promise<void>;
  unquiesce(): void;
}

/** A virtio device model: what the generic core needs to know and call. */
export interface VirtioDevice {
  /** Virtio device ID (VIRTIO_ID_*). */
  readonly deviceType: number;
  /** Number of virtqueues. */
  readonly numQueues: number;
  /** Largest size of each queue (power of two <= 32768); one number for all queues. */
  readonly maxQueueSize: number | readonly number[];
  /** Offered features (device-specific and VIRTIO_COMMON_FEATURES it supports). */
  readonly features: bigint;
  /** Bytes of device-specific configuration. */
  readonly configSize: number;
  /** Optional per-queue options (e.g. a larger maxChainLen for indirect tables). */
  queueMaxChainLen?(q: number): number | undefined;
  /** Little-endian read of 1, 2 or 4 bytes of device config (out-of-range bytes read 0). */
  readConfig(offset: number, size: number): number;
  /** Little-endian write of device config (read-only fields ignore it). */
  writeConfig(offset: number, size: number, value: number): void;
  /** Optional extra check at FEATURES_OK; return false to refuse the feature set. */
  acceptFeatures?(features: bigint): boolean;
  /**
   * DRIVER_OK: start using the queues (all of them, indexed by queue number;
   * only `ready` ones were validated and may be used). `features` are the
   * negotiated ones.
   */
  activate(queues: readonly Virtqueue[], mem: GuestMemory, interrupt: VirtioInterrupt, features: bigint): void;
  /** The driver notified queue `q` (only delivered while active). */
  queueNotify(q: number): void;
  /** Forget everything from the previous activation (device reset). Called on every reset. */
  reset(): void;
  /**
   * Device state beyond its queues, for snapshots. restoreState runs after
   * activate() when the snapshot was taken with the device active.
   */
  saveState?(w: StateWriter): void;
  restoreState?(r: StateReader): void;
  /** Before a snapshot (after in-flight requests are done): make written data durable. */
  syncForSave?(): void;
  /** Present when the device's queues run on a worker thread. */
  readonly offload?: VirtioOffload;
}

/** Provided by the transport. */
export interface VirtioTransportHooks {
  /** Raise the used-buffer interrupt for queue `q` (ISR bit 0 or its MSI-X vector). */
  raiseQueueInterrupt(q: number): void;
  /** Raise the configuration-change interrupt (ISR bit 1 or the config vector). */
  raiseConfigInterrupt(): void;
  /** Report a guest mistake (rate limited by the caller's logger). */
  guestError?(msg: string): void;
}

export type QueueAddressKind = 'desc' | 'avail' | 'used';

const DRIVER_BITS = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK |
  VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_FAILED;

export class VirtioCore {
  readonly queues: readonly Virtqueue[];
  /** Features offered to the driver (device features plus VERSION_1). */
  readonly offeredFeatures: bigint;
  private _status = 0;
  private _driverFeatures = 0n;
  private _negotiated = 0n;
  private _generation = 0;
  private _active = false;
  private _legacy = false;
  private readonly interrupt: VirtioInterrupt;

  constructor(readonly device: VirtioDevice, readonly mem: GuestMemory, private readonly hooks: VirtioTransportHooks) {
    if (!Number.isInteger(device.numQueues) || device.numQueues < 0 || device.numQueues > 0x10000) {
      throw new RangeError(`virtio device: bad queue count ${device.numQueues}`);
    }
    const qs: Virtqueue[] = [];
    for (let i = 0; i < device.numQueues; i++) {
      const max = typeof device.maxQueueSize === 'number' ? device.maxQueueSize : device.maxQueueSize[i];
      if (max === undefined) throw new RangeError(`virtio device: no max size for queue ${i}`);
      const mcl = device.queueMaxChainLen?.(i);
      qs.push(new Virtqueue(mem, max, mcl === undefined ? {} : { maxChainLen: mcl }));
    }
    this.queues = qs;
    this.offeredFeatures = (device.features | featureBit(VIRTIO_F_VERSION_1)) & FEATURES_MASK;
    this.interrupt = {
      signalUsed: (q) => this.signalUsed(q),
      signalConfig: () => this.signalConfig(),
      needsReset: (reason) => this.needsReset(reason),
      raise: (q) => { if (this._active && !(this._status & VIRTIO_STATUS_NEEDS_RESET)) this.hooks.raiseQueueInterrupt(q); },
    };
  }

  // ---- status -----------------------------------------------------------------

  get status(): number { return this._status; }
  get active(): boolean { return this._active; }
  get driverFeatures(): bigint { return this._driverFeatures; }
  /** Features fixed at FEATURES_OK (0 before). */
  get negotiatedFeatures(): bigint { return this._negotiated; }
  /** Config generation: changes whenever the device config changes. */
  get configGeneration(): number { return this._generation; }
  /** The driver uses the legacy interface. */
  get legacy(): boolean { return this._legacy; }

  /**
   * The transport saw the driver use its legacy (true) or modern (false)
   * registers. Only while the status is 0 (after reset, before the driver
   * starts): a driver cannot switch interfaces halfway through.
   */
  setLegacy(on: boolean): void {
    if (this._status === 0) this._legacy = on;
  }

  private guestError(msg: string): void {
    this.hooks.guestError?.(`virtio-${this.device.deviceType}: ${msg}`);
  }

  /** The driver wrote the device status register. */
  writeStatus(value: number): void {
    const v = value & 0xff;
    if (v === 0) {
      this.reset();
      return;
    }
    const old = this._status;
    let next = v & DRIVER_BITS;
    if (old & ~next & DRIVER_BITS) {
      this.guestError(`status 0x${v.toString(16)} clears bits of 0x${old.toString(16)} without reset`);
      next |= old & DRIVER_BITS;
    }
    const added = next & ~old;
    if ((added & VIRTIO_STATUS_DRIVER) && !(next & VIRTIO_STATUS_ACKNOWLEDGE)) {
      this.guestError('DRIVER without ACKNOWLEDGE');
      next &= ~VIRTIO_STATUS_DRIVER;
    }
    if (this._legacy && (added & VIRTIO_STATUS_FEATURES_OK)) {
      this.guestError('FEATURES_OK on the legacy interface');
      next &= ~VIRTIO_STATUS_FEATURES_OK;
    } else if (added & VIRTIO_STATUS_FEATURES_OK) {
      next = this.takeFeatures(next, VIRTIO_STATUS_FEATURES_OK, 'FEATURES_OK');
    }
    if (this._legacy && (added & VIRTIO_STATUS_DRIVER_OK)) {
      // Legacy: the features the driver wrote are taken at DRIVER_OK.
      next = this.takeFeatures(next, VIRTIO_STATUS_DRIVER_OK, 'DRIVER_OK');
    } else if ((added & VIRTIO_STATUS_DRIVER_OK) && !(next & VIRTIO_STATUS_FEATURES_OK)) {
      this.guestError('DRIVER_OK without FEATURES_OK');
      next &= ~VIRTIO_STATUS_DRIVER_OK;
    }
    this._status = next | (old & VIRTIO_STATUS_NEEDS_RESET);
    if ((next & ~old) & VIRTIO_STATUS_DRIVER_OK) this.activate();
  }

  /**
   * The status bit at which features are fixed (FEATURES_OK, or DRIVER_OK on
   * the legacy interface): it needs DRIVER and acceptable features, else it
   * is dropped from `next`.
   */
  private takeFeatures(next: number, bit: number, name: string): number {
    if (!(next & VIRTIO_STATUS_DRIVER)) {
      this.guestError(`${name} without DRIVER`);
      return next & ~bit;
    }
    if (!this.featuresAcceptable(this._driverFeatures)) return next & ~bit;
    this._negotiated = this._driverFeatures;
    return next;
  }

  private featuresAcceptable(f: bigint): boolean {
    if (f & ~this.offeredFeatures) {
      this.guestError(`driver features 0x${f.toString(16)} not a subset of 0x${this.offeredFeatures.toString(16)}`);
      return false;
    }
    if (this._legacy && hasFeature(f, VIRTIO_F_VERSION_1)) {
      this.guestError('VIRTIO_F_VERSION_1 on the legacy interface');
      return false;
    }
    if (!this._legacy && !hasFeature(f, VIRTIO_F_VERSION_1)) {
      this.guestError('driver did not accept VIRTIO_F_VERSION_1 (legacy drivers need a transitional device)');
      return false;
    }
    if (this.device.acceptFeatures && !this.device.acceptFeatures(f)) {
      this.guestError(`device refused features 0x${f.toString(16)}`);
      return false;
    }
    return true;
  }

  // ---- features ----------------------------------------------------------------

  /** 32-bit word `select` of the offered features (0 beyond bit 63). */
  deviceFeatureWord(select: number): number {
    if (!Number.isInteger(select) || select < 0 || select > 1) return 0;
    return Number((this.offeredFeatures >> BigInt(32 * select)) & 0xffff_ffffn);
  }

  /** 32-bit word `select` of the driver features as last written. */
  driverFeatureWord(select: number): number {
    if (!Number.isInteger(select) || select < 0 || select > 1) return 0;
    return Number((this._driverFeatures >> BigInt(32 * select)) & 0xffff_ffffn);
  }

  /** The driver wrote word `select` of its features. Ignored once FEATURES_OK is set. */
  writeDriverFeatureWord(select: number, value: number): void {
    if (this._status & (this._legacy ? VIRTIO_STATUS_DRIVER_OK : VIRTIO_STATUS_FEATURES_OK)) {
      this.guestError(`driver features written after ${this._legacy ? 'DRIVER_OK' : 'FEATURES_OK'}`);
      return;
    }
    if (!Number.isInteger(select) || select < 0 || select > 1) {
      if (value !== 0) this.guestError(`driver feature word ${select} = 0x${(value >>> 0).toString(16)} ignored`);
      return;
    }
    const shift = BigInt(32 * select);
    const mask = 0xffff_ffffn << shift;
    this._driverFeatures = (this._driverFeatures & ~mask) | (BigInt(value >>> 0) << shift);
  }

  /** Set all driver features at once (tests, MMIO-style transports). */
  writeDriverFeatures(features: bigint): void {
    this.writeDriverFeatureWord(0, Number(features & 0xffff_ffffn));
    this.writeDriverFeatureWord(1, Number((features >> 32n) & 0xffff_ffffn));
  }

  // ---- queue configuration ---------------------------------------------------------

  /** Queue `q`, or undefined when out of range. */
  queue(q: number): Virtqueue | undefined {
    return Number.isInteger(q) && q >= 0 ? this.queues[q] : undefined;
  }

  /** The queue if the driver may configure it now; otherwise reports and returns undefined. */
  private configurable(q: number, what: string): Virtqueue | undefined {
    const vq = this.queue(q);
    if (!vq) {
      this.guestError(`${what}: no queue ${q}`);
      return undefined;
    }
    if (this._status & VIRTIO_STATUS_DRIVER_OK) {
      this.needsReset(`${what} of queue ${q} after DRIVER_OK`);
      return undefined;
    }
    if (vq.ready) {
      this.guestError(`${what} of queue ${q} while it is enabled`);
      return undefined;
    }
    return vq;
  }

  setQueueSize(q: number, size: number): boolean {
    const vq = this.configurable(q, 'queue size');
    if (!vq) return false;
    vq.size = size;
    return true;
  }

  setQueueAddress(q: number, kind: QueueAddressKind, addr: bigint): boolean {
    const vq = this.configurable(q, `queue ${kind} address`);
    if (!vq) return false;
    if (kind === 'desc') vq.descTable = addr;
    else if (kind === 'avail') vq.availRing = addr;
    else vq.usedRing = addr;
    return true;
  }

  /** queue_enable: 1 enables; 0 is not allowed by the spec and is ignored. */
  setQueueEnable(q: number, enable: boolean): boolean {
    if (!enable) {
      this.guestError(`queue ${q} disable written (not allowed; use reset)`);
      return false;
    }
    const vq = this.configurable(q, 'queue enable');
    if (!vq) return false;
    vq.ready = true;
    return true;
  }

  /**
   * Legacy QUEUE_PFN: the queue (of its maximum size: legacy sizes are fixed)
   * lives at page `pfn` in the legacy layout and is enabled at once. 0 takes
   * it away again (Linux does so when it deletes its queues, after reset).
   */
  setQueuePfn(q: number, pfn: number): boolean {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn > 0xffff_ffff) return false;
    if (pfn === 0) {
      const vq = this.queue(q);
      if (!vq) return false;
      if (this._status & VIRTIO_STATUS_DRIVER_OK) {
        this.needsReset(`queue ${q} PFN cleared after DRIVER_OK`);
        return false;
      }
      vq.ready = false;
      vq.descTable = vq.availRing = vq.usedRing = 0n;
      return true;
    }
    const vq = this.configurable(q, 'queue PFN');
    if (!vq) return false;
    vq.size = vq.maxSize;
    const l = legacyRingLayout(BigInt(pfn) * BigInt(VIRTIO_LEGACY_PAGE), vq.size);
    vq.descTable = l.desc;
    vq.availRing = l.avail;
    vq.usedRing = l.used;
    vq.ready = true;
    return true;
  }

  // ---- activation, notification, reset --------------------------------------------

  private activate(): void {
    const f = this._negotiated;
    for (let i = 0; i < this.queues.length; i++) {
      const vq = this.queues[i]!;
      if (!vq.ready) continue;
      vq.eventIdx = hasFeature(f, VIRTIO_RING_F_EVENT_IDX);
      vq.indirectDesc = hasFeature(f, VIRTIO_RING_F_INDIRECT_DESC);
      try {
        vq.validate();
      } catch (e) {
        this.needsReset(`queue ${i}: ${e instanceof Error ? e.message : String(e)}`);
        return;
      }
    }
    try {
      this.device.activate(this.queues, this.mem, this.interrupt, f);
      this._active = true;
    } catch (e) {
      this.needsReset(`activation failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** The driver notified queue `q`. Delivered only while the device is active and not in NEEDS_RESET. */
  notifyQueue(q: number): void {
    if (!this._active || (this._status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))) return;
    const vq = this.queue(q);
    if (!vq || !vq.ready) {
      this.guestError(`notify of ${vq ? 'disabled' : 'missing'} queue ${q}`);
      return;
    }
    try {
      this.device.queueNotify(q);
    } catch (e) {
      this.needsReset(`queue ${q}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  private signalUsed(q: number): boolean {
    const vq = this.queue(q);
    if (!vq || !vq.needsNotification()) return false;
    this.hooks.raiseQueueInterrupt(q);
    return true;
  }

  /** Device config changed (also callable by the device through its VirtioInterrupt). */
  signalConfig(): void {
    this._generation = (this._generation + 1) & 0xff;
    if (this._status & VIRTIO_STATUS_DRIVER_OK) this.hooks.raiseConfigInterrupt();
  }

  /** Put the device in NEEDS_RESET (once) and tell an active driver through a config interrupt. */
  needsReset(reason: unknown): void {
    this.guestError(`needs reset: ${reason instanceof Error ? reason.message : String(reason)}`);
    if (this._status & VIRTIO_STATUS_NEEDS_RESET) return;
    this._status |= VIRTIO_STATUS_NEEDS_RESET;
    if (this._status & VIRTIO_STATUS_DRIVER_OK) this.hooks.raiseConfigInterrupt();
  }

  /** Device reset (status 0 or transport reset): device first, then queues, features, status. */
  reset(): void {
    this.device.reset();
    this._active = false;
    for (const vq of this.queues) vq.reset();
    this._driverFeatures = 0n;
    this._negotiated = 0n;
    this._status = 0;
    // the interface is chosen again by the next driver (setLegacy)
  }

  // ---- save / restore ----------------------------------------------------------------

  saveState(w: StateWriter): void {
    w.u8('status', this._status).u64('driverFeatures', this._driverFeatures).u64('negotiated', this._negotiated)
      .u8('generation', this._generation).bool('active', this._active);
    w.arr('queues', this.queues, (qw, q) => q.saveState(qw));
    const dev = this.device;
    if (dev.saveState) w.obj_('device', (dw) => dev.saveState!(dw));
  }

  /**
   * Back to the saved state: queues checked and loaded, the device activated
   * again if it was. Call kickQueues() once the whole VM is restored.
   */
  restoreState(r: StateReader): void {
    const status = r.u8('status'), drv = r.u64('driverFeatures'), neg = r.u64('negotiated');
    const generation = r.u8('generation'), active = r.bool('active');
    if (neg & ~this.offeredFeatures) r.fail('negotiated', `0x${neg.toString(16)} has features this device does not offer`);
    const qs = r.arr('queues', this.queues.length);
    if (qs.length !== this.queues.length) r.fail('queues', `${qs.length} queues, this device has ${this.queues.length}`);
    const states = qs.map((q) => Virtqueue.readState(q));
    if (active && (status & (VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_NEEDS_RESET)) !== VIRTIO_STATUS_DRIVER_OK) {
      r.fail('active', `an active device must have status DRIVER_OK without NEEDS_RESET, not 0x${status.toString(16)}`);
    }
    this.reset();
    states.forEach((st, i) => {
      try {
        this.queues[i]!.restoreState(st);
      } catch (e) {
        if (e instanceof VirtqueueError) throw new SnapshotError(`snapshot field ${qs[i]!.path}: ${e.message}`);
        throw e;
      }
    });
    this._status = status; this._driverFeatures = drv; this._negotiated = neg; this._generation = generation;
    if (!active) return;
    this.device.activate(this.queues, this.mem, this.interrupt, neg);
    this._active = true;
    if (this.device.restoreState) this.device.restoreState(r.obj('device'));
  }

  /** Notify every ready queue once: a notify still on its way when a snapshot was taken must not be lost. */
  kickQueues(): void {
    this.queues.forEach((q, i) => { if (q.ready) this.notifyQueue(i); });
  }

  /** Device config access, forwarded (bounds-checked here). */
  readConfig(offset: number, size: number): number {
    if (!validConfigAccess(offset, size, this.device.configSize)) return 0;
    return this.device.readConfig(offset, size);
  }

  writeConfig(offset: number, size: number, value: number): void {
    if (!validConfigAccess(offset, size, this.device.configSize)) {
      this.guestError(`config write at ${offset}/${size} outside ${this.device.configSize} bytes`);
      return;
    }
    this.device.writeConfig(offset, size, value);
  }
}

function validConfigAccess(offset: number, size: number, configSize: number): boolean {
  return (size === 1 || size === 2 || size === 4) && Number.isInteger(offset) && offset >= 0 && offset + size <= configSize;
}
