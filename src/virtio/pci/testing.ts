/**
 * A guest driver for fuzzing a virtio-pci function (tests only). Each
 * episode brings the device up as a driver does, through the modern
 * registers or the legacy I/O block: reset, ACKNOWLEDGE, DRIVER, features,
 * FEATURES_OK (modern), MSI-X table and vectors (or INTx), queues laid out
 * by the mock driver in fake guest memory, DRIVER_OK. Then it mixes valid
 * requests (whose completions the workload checks) with hostile register
 * writes, hostile chains, MSI-X reprogramming and masking, BAR moves, and
 * guest memory scribbles, and starts a new episode whenever the device
 * leaves DRIVER_OK or asks for a reset.
 *
 * Every interrupt is checked against what the driver programmed: an MSI
 * (ctx.msi, or an irqfd signal with the route it was given) must carry the
 * current table entry of an unmasked vector the driver assigned to a queue
 * or the config change, with MSI-X on and the function unmasked; INTx only
 * while MSI-X is off.
 */
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Bus } from '../../bus/bus.js';
import { mmioAllocator, type DeviceContext } from '../../pci/device.js';
import type { MsiVector } from '../../pci/msi.js';
import { VirtioPci } from './transport.js';
import type { VirtioDevice } from '../device.js';
import { MockSplitQueue } from '../testing/mock-driver.js';
import type { ChainSpec, UsedElem } from '../driver-queue.js';
import {
  VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_STATUS_DRIVER_OK, VIRTIO_STATUS_FAILED,
  VIRTIO_STATUS_FEATURES_OK, VIRTIO_STATUS_NEEDS_RESET, featureBit, hasFeature,
} from '../constants.js';

export type Rng = () => number;

/** xorshift32: deterministic. */
export function rng(seed: number): Rng {
  let x = seed >>> 0 || 1;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
}

/** Valid requests for one device type, and the check of each completion. */
export interface Workload {
  request(r: Rng): { spec: ChainSpec; check(used: UsedElem, written: (len: number) => Uint8Array): string | undefined };
}

/** virtio-rnd: writable buffers, filled to their whole length. */
export const rndWork: Workload = {
  request(r) {
    const writable = Array.from({ length: 1 + r() % 3 }, () => 1 + r() % 1500);
    const total = writable.reduce((a, b) => a + b, 0);
    return { spec: { writable }, check: (u) => u.len === total ? undefined : `used length ${u.len}, posted ${total}` };
  },
};

export interface FuzzOptions {
  seed: number;
  steps: number;
  /** drive the legacy (0.9.5) interface of a transitional device */
  legacy?: boolean;
  /** MSI-X vectors as irqfds (a fake ctx.msiVector), else ctx.msi */
  irqfd?: boolean;
}

export interface FuzzResult {
  /** device activations (DRIVER_OK accepted) */
  activations: number;
  /** notifications that reached the device model */
  notifies: number;
  /** valid requests completed and checked */
  completed: number;
  /** MSIs and irqfd signals, all checked */
  msis: number;
  /** INTx assertions */
  intx: number;
  hostileChains: number;
  guestErrors: number;
  /** broken rules: interrupts the driver did not program, bad completions, refused bring-ups */
  violations: string[];
}

const MEM = 1 << 20, QUEUE_BASE = 0x10000, QUEUE_REGION = 0x40000;
const NO_VECTOR = 0xffff;
const ENABLE = 0x8000, FUNCTION_MASK = 0x4000;

export function fuzzVirtioPci(dev: VirtioDevice, work: Workload, opts: FuzzOptions): FuzzResult {
  const r = rng(opts.seed);
  const legacy = opts.legacy === true;
  const res: FuzzResult = { activations: 0, notifies: 0, completed: 0, msis: 0, intx: 0, hostileChains: 0, guestErrors: 0, violations: [] };
  const violation = (m: string) => { if (res.violations.length < 20) res.violations.push(m); };
  const nq = dev.numQueues, nvec = nq + 1;
  if (QUEUE_BASE + nq * QUEUE_REGION > MEM) throw new Error('fuzz driver: too many queues for its memory');

  // What the driver programmed: the MSI-X control word, the table, the vectors it assigned.
  let control = 0;
  const table = new Uint32Array(nvec * 4);
  for (let v = 0; v < nvec; v++) table[v * 4 + 3] = 1;
  const assigned = new Set<number>();
  const programmed = (v: number, address: bigint, data: number) => v >= 0 && v < nvec && assigned.has(v) && !(table[v * 4 + 3]! & 1) &&
    ((BigInt(table[v * 4 + 1]!) << 32n) | BigInt(table[v * 4]!)) === address && table[v * 4 + 2] === data;
  const delivered = (how: string, v: number | undefined, address: bigint, data: number) => {
    res.msis++;
    const ok = (control & (ENABLE | FUNCTION_MASK)) === ENABLE &&
      (v === undefined ? Array.from({ length: nvec }, (_, i) => i).some((i) => programmed(i, address, data)) : programmed(v, address, data));
    if (!ok) violation(`${how} 0x${address.toString(16)}/0x${data.toString(16)} (vector ${v}, control 0x${control.toString(16)}): not an unmasked vector the driver programmed`);
  };

  const routes = new Map<number, [bigint, number]>();
  let nextGsi = 24;
  const mem = GuestMemory.ofSize(MEM);
  const mmio = new Bus('mmio'), pio = new Bus('pio');
  const ctx: DeviceContext = {
    mem, pio, mmio,
    irq: () => ({
      set: (on) => {
        if (!on) return;
        res.intx++;
        if (control & ENABLE) violation('INTx raised while MSI-X is enabled');
      },
    }),
    msi: (a, d) => delivered('msi', undefined, a, d),
    msiVector: opts.irqfd ? (): MsiVector => {
      const gsi = nextGsi++;
      return {
        gsi, fd: -1,
        route: (a, d) => { routes.set(gsi, [a, d]); },
        signal: () => {
          const rt = routes.get(gsi);
          if (rt) delivered('irqfd', gsi - 24, rt[0], rt[1]);
          else violation(`irqfd ${gsi} signalled before it had a route`);
        },
        close: () => {},
      };
    } : undefined,
    guestError: () => { res.guestErrors++; },
    allocMmio: mmioAllocator(0xc0000000, 0xfec00000),
    allocPio: mmioAllocator(0x6000, 0x10000),
  };
  const activate = dev.activate.bind(dev), queueNotify = dev.queueNotify.bind(dev);
  dev.activate = (...a) => { res.activations++; activate(...a); };
  dev.queueNotify = (q) => { res.notifies++; queueNotify(q); };
  const fn = new VirtioPci(ctx, dev, { slot: 4 }, 'fuzz', { transitional: legacy });

  let cap = 0;
  for (let p = fn.config.read(0x34, 1); p; p = fn.config.read(p + 1, 1)) if (fn.config.read(p, 1) === 0x11) cap = p;
  const barAddr = (i: number) => (fn.config.read(0x10 + i * 4, 4) & ~0xf) >>> 0;
  const MODERN = barAddr(legacy ? 4 : 0), MSIX = barAddr(1), IO = (fn.config.read(0x10, 4) & ~3) >>> 0;

  // ---- register access, with the model kept in step (before the write: it may deliver) ----

  const setControl = (v: number) => { control = v & (ENABLE | FUNCTION_MASK); fn.config.write(cap + 2, 2, v); };
  const msixWrite = (off: number, size: number, value: number) => {
    if (size === 4 && !(off & 3) && off >= 0 && off < table.byteLength) table[off >> 2] = (off >> 2 & 3) === 3 ? value & 1 : value >>> 0;
    mmio.write(MSIX + off, size, value);
  };
  const assign = (w16: number) => { if (w16 < nvec) assigned.add(w16); };
  const regWrite = (off: number, size: number, value: number) => {
    if (legacy) {
      if ((off === 0x14 || off === 0x16) && size === 2 && control & ENABLE) assign(value & 0xffff);
      pio.write(IO + off, size, value);
    } else {
      if (off === 0x10 || off === 0x1a) assign(value & 0xffff);
      mmio.write(MODERN + off, size, value);
    }
  };
  const regRead = (off: number, size: number) => legacy ? pio.read(IO + off, size) : mmio.read(MODERN + off, size);
  const status = () => regRead(legacy ? 0x12 : 0x14, 1);
  const writeStatus = (v: number) => regWrite(legacy ? 0x12 : 0x14, 1, v);
  const notify = (q: number) => legacy ? pio.write(IO + 0x10, 2, q) : mmio.write(MODERN + 0x3000 + q * 4, 2, q);

  let entrySeq = 0;
  /** Reprogram vector v as Linux does: mask, write a fresh message, unmask. */
  const program = (v: number) => {
    entrySeq++;
    msixWrite(v * 16 + 12, 4, 1);
    msixWrite(v * 16, 4, 0xfee00000 | ((entrySeq & 0xff) << 12));
    msixWrite(v * 16 + 4, 4, 0);
    msixWrite(v * 16 + 8, 4, 0x4000 | (entrySeq & 0x3fff));
    msixWrite(v * 16 + 12, 4, 0);
  };

  // ---- one episode: bring-up, then traffic until the device needs a reset ----

  let drivers: MockSplitQueue[] = [];
  let indirect = false, eventIdx = false;
  /** hostile writes went into the rings: the mock's bookkeeping no longer holds */
  let tainted = false;

  const bringUp = () => {
    writeStatus(0);
    // A reset leaves MSI-X alone: what is pending from before may still go out.
    const pending = mmio.read(MSIX + 0x800, 4);
    assigned.clear();
    for (let v = 0; v < nvec; v++) if (pending & (1 << v)) assigned.add(v);
    tainted = false;
    writeStatus(1); writeStatus(3);
    const useMsix = r() % 6 !== 0;
    let features: bigint;
    if (legacy) {
      const host = regRead(0x00, 4);
      features = BigInt(host & r());
      regWrite(0x04, 4, Number(features));
    } else {
      regWrite(0x00, 4, 0); const lo = regRead(0x04, 4);
      regWrite(0x00, 4, 1); const hi = regRead(0x04, 4);
      features = ((BigInt(hi) << 32n) | BigInt(lo)) & ((BigInt(r()) << 32n | BigInt(r())) | featureBit(VIRTIO_F_VERSION_1));
      regWrite(0x08, 4, 0); regWrite(0x0c, 4, Number(features & 0xffffffffn));
      regWrite(0x08, 4, 1); regWrite(0x0c, 4, Number(features >> 32n));
      writeStatus(0x0b);
      if (!(status() & VIRTIO_STATUS_FEATURES_OK)) violation(`FEATURES_OK refused for 0x${features.toString(16)}`);
    }
    indirect = hasFeature(features, VIRTIO_RING_F_INDIRECT_DESC);
    eventIdx = hasFeature(features, VIRTIO_RING_F_EVENT_IDX);
    setControl(useMsix ? ENABLE : 0);
    if (useMsix) for (let v = 0; v < nvec; v++) program(v);
    drivers = [];
    for (let q = 0; q < nq; q++) {
      const base = QUEUE_BASE + q * QUEUE_REGION;
      const vector = useMsix ? [q + 1, 0, NO_VECTOR][r() % 8] ?? q + 1 : NO_VECTOR;
      if (legacy) {
        regWrite(0x0e, 2, q);
        const drv = new MockSplitQueue(mem, regRead(0x0c, 2), { base, dataEnd: base + QUEUE_REGION, legacy: true });
        regWrite(0x08, 4, drv.pfn);
        if (useMsix) regWrite(0x16, 2, vector);
        drivers.push(drv);
      } else {
        regWrite(0x16, 2, q);
        const max = regRead(0x18, 2);
        const size = Math.max(2, max >> (r() % 4));
        regWrite(0x18, 2, size);
        const drv = new MockSplitQueue(mem, size, { base, dataEnd: base + QUEUE_REGION });
        for (const [off, a] of [[0x20, drv.desc], [0x28, drv.avail], [0x30, drv.used]] as const) { regWrite(off, 4, a); regWrite(off + 4, 4, 0); }
        regWrite(0x1a, 2, vector);
        regWrite(0x1c, 2, 1);
        drivers.push(drv);
      }
    }
    if (useMsix) regWrite(legacy ? 0x14 : 0x10, 2, 0);
    writeStatus(legacy ? 0x07 : 0x0f);
    const st = status();
    if (!(st & VIRTIO_STATUS_DRIVER_OK) || st & VIRTIO_STATUS_NEEDS_RESET) violation(`bring-up ended in status 0x${st.toString(16)}`);
  };

  /** One valid request on a random queue, notified and checked. */
  const request = () => {
    const q = r() % nq;
    const drv = drivers[q]!;
    drv.drainUsed();
    const { spec, check } = work.request(r);
    const n = (spec.readable?.length ?? 0) + (spec.writable?.length ?? 0);
    const useIndirect = indirect && r() % 3 === 0;
    if (drv.freeDescriptors < (useIndirect ? 1 : n)) return;
    const head = drv.addChain(spec, { indirect: useIndirect });
    if (eventIdx) drv.setUsedEvent(drv.usedIdx); // interrupt me at the next used entry
    notify(q);
    for (const u of drv.drainUsed()) {
      if (u.id !== head) continue;
      const bad = check(u, (len) => drv.written(head, len));
      if (bad) violation(`queue ${q} request: ${bad}`);
      else res.completed++;
    }
  };

  /** Descriptors, ring indices or guest memory a hostile driver could write. */
  const hostileChain = () => {
    const q = r() % nq;
    const drv = drivers[q]!;
    tainted = true;
    res.hostileChains++;
    const addr = () => [r() % MEM, r() * 0x1000 + r(), MEM - 4, 0][r() % 4]!;
    switch (r() % 5) {
      case 0: // random descriptors
        for (let k = 0; k < 1 + r() % 4; k++) drv.setDesc(r() % drv.size, { addr: addr(), len: r() % 0x3000, flags: r() & 7, next: r() % (drv.size + 2) });
        drv.publish(r() % drv.size);
        break;
      case 1: { // a loop
        const i = r() % drv.size;
        drv.setDesc(i, { addr: QUEUE_BASE, len: 16, flags: 1, next: i });
        drv.publish(i);
        break;
      }
      case 2: // an indirect table anywhere
        drv.setDesc(0, { addr: addr(), len: 16 * (1 + r() % 64), flags: 4, next: 0 });
        drv.publish(0);
        break;
      case 3: drv.setAvailIdx(r()); break;
      default: mem.writeU32(QUEUE_BASE + r() % (nq * QUEUE_REGION - 4), r()); break;
    }
    notify(q);
  };

  const registerNoise = () => {
    const size = [1, 2, 4][r() % 3]!;
    const value = r() % 4 === 0 ? r() : r() % 4;
    if (legacy) {
      const off = r() % 0x40;
      if (r() % 2) regWrite(off, size, value); else regRead(off, size);
      return;
    }
    const off = [r() % 0x38, r() % 0x38, 0x1000, 0x2000 + r() % 0x40, 0x3000 + r() % 0x10, r() % 0x4000][r() % 6]!;
    if (r() % 2) regWrite(off, size, value); else regRead(off, size);
  };

  const msixNoise = () => {
    const v = r() % nvec;
    switch (r() % 6) {
      case 0: program(v); break;
      case 1: msixWrite(v * 16 + 12, 4, r() & 1); break;
      case 2: setControl(control & ENABLE ? control ^ FUNCTION_MASK : control); break;
      case 3: msixWrite(r() % 0x1000, [1, 2, 4, 4][r() % 4]!, r()); break;
      case 4: mmio.read(MSIX + 0x800, 4); break;
      default: if (r() % 8 === 0) setControl(control ^ ENABLE); break;
    }
  };

  /** Moves a BAR onto another or turns decoding off, then puts it back as firmware left it. */
  const configNoise = () => {
    const saved = [0x04, 0x10, 0x14, 0x20].map((o) => fn.config.read(o, 4));
    const restore = () => [0x04, 0x10, 0x14, 0x20].forEach((o, i) => fn.config.write(o, o === 0x04 ? 2 : 4, saved[i]!));
    switch (r() % 3) {
      case 0: fn.config.write(0x14, 4, MODERN); break; // MSI-X BAR onto the modern one
      case 1: fn.config.write(0x04, 2, 0); break;
      default: { // anything read-only or harmless: not the BARs, the command or the MSI-X control
        const off = 0x40 + r() % 0xc0;
        if (off + 4 <= cap || off >= cap + 12) fn.config.write(off, [1, 2, 4][r() % 3]!, r());
      }
    }
    notify(r() % nq); // lands nowhere while moved
    restore();
  };

  bringUp();
  for (let i = 0; i < opts.steps; i++) {
    const op = r() % 100;
    if (op < 55) {
      if (!tainted) request();
      else if (r() % 8 === 0) bringUp(); // the driver gives up on a queue it broke
      else registerNoise();
    } else if (op < 60) hostileChain();
    else if (op < 78) registerNoise();
    else if (op < 90) msixNoise();
    else if (op < 93) configNoise();
    else if (op < 97) fn.core.signalConfig();
    else notify(r() % (nq + 2));
    const st = status();
    if (!(st & VIRTIO_STATUS_DRIVER_OK) || st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) bringUp();
  }
  fn.destroy();
  return res;
}

/** Minimum counts of a run on the modern interface and on the legacy one (measured at about twice these; the seeds are fixed): a change that stops the traffic fails. */
export const MODERN_MIN = { activations: 500, notifies: 10_000, completed: 8000, msis: 4000, guestErrors: 500 };
export const LEGACY_MIN = { activations: 300, notifies: 5000, completed: 4000, msis: 2000, guestErrors: 500 };

/** The run did what it is for: no broken rule, and enough of everything that the checks had something to check. */
export function assertExercised(res: FuzzResult, min: { activations: number; notifies: number; completed: number; msis: number; guestErrors: number }): void {
  assert.deepEqual(res.violations, []);
  for (const k of ['activations', 'notifies', 'completed', 'msis', 'guestErrors'] as const) assert.ok(res[k] >= min[k], `${k}: ${res[k]}, want ${min[k]}`);
  assert.ok(res.intx > 0, 'some episodes ran on INTx');
  assert.ok(res.hostileChains > 0, 'hostile chains were posted');
}
