/**
 * MSI-X for any PCI function (PCI 3.0, 6.8.2): the capability, the vector
 * table and the PBA in a BAR region (this object is its BusDevice), per-vector
 * and function masking, pending bits, and delivery.
 *
 * Vectors are KVM irqfds where the host has them (ctx.msiVector): a vector's
 * route follows its table entry, set when the vector is unmasked (or the
 * function unmasked, or MSI-X enabled) after the entry changed, so an
 * interrupt is one eventfd write and no routing ioctl. Without irqfds an
 * interrupt is ctx.msi (KVM_SIGNAL_MSI). directFd() says which irqfd a
 * device on a worker thread may write itself.
 *
 * Table entry (16 bytes): address low, address high, data, vector control
 * (bit 0: masked). Only aligned 32-bit accesses reach the table; the PBA is
 * read-only.
 */
import type { BusDevice } from '../bus/bus.js';
import type { DeviceContext } from './device.js';
import type { PciConfig } from './config-space.js';
import type { MsiVector } from './msi.js';
import type { StateReader, StateWriter } from '../snapshot/state.js';

const CAP_MSIX = 0x11;
const ENABLE = 0x8000, FUNCTION_MASK = 0x4000;
/** 32-bit words per table entry, and the vector control word's index in it */
const ENTRY = 4, CTRL = 3;

export interface MsixLayout {
  /** table entries, 1-2048 */
  vectors: number;
  /** the BAR (0-5) holding the table and the PBA */
  bar: number;
  /** byte offsets of the table and the PBA in that BAR: 8-byte aligned, not overlapping */
  table: number;
  pba: number;
}

export class Msix implements BusDevice {
  readonly vectors: number;
  private readonly table: Uint32Array;
  /** one bit per vector, in 32-bit words (the size snapshots have) */
  private readonly pba: Uint32Array;
  private readonly capOff: number;
  /** per vector: its irqfd, or undefined (ctx.msi) */
  private readonly irqfds: (MsiVector | undefined)[];
  /** per vector: the table entry changed since its route was set */
  private readonly routeStale: boolean[];

  /**
   * Adds the capability to `config` (table entries start masked). `onChange`
   * runs after anything that can change which vectors deliver: enable,
   * function mask, a table write, a restore.
   */
  constructor(private readonly config: PciConfig, private readonly ctx: Pick<DeviceContext, 'msi' | 'msiVector'>,
    private readonly layout: MsixLayout, private readonly onChange?: () => void) {
    const n = layout.vectors;
    if (!Number.isInteger(n) || n < 1 || n > 2048) throw new RangeError(`MSI-X: ${n} vectors (1-2048)`);
    if (!Number.isInteger(layout.bar) || layout.bar < 0 || layout.bar > 5) throw new RangeError(`MSI-X: BAR ${layout.bar}`);
    const tableEnd = layout.table + n * ENTRY * 4, pbaEnd = layout.pba + Math.ceil(n / 64) * 8;
    if (layout.table % 8 || layout.pba % 8 || layout.table < 0 || layout.pba < 0 || (layout.table < pbaEnd && layout.pba < tableEnd)) {
      throw new RangeError(`MSI-X: table at 0x${layout.table.toString(16)} and PBA at 0x${layout.pba.toString(16)} misplaced`);
    }
    this.vectors = n;
    this.table = new Uint32Array(n * ENTRY);
    for (let v = 0; v < n; v++) this.table[v * ENTRY + CTRL] = 1;
    this.pba = new Uint32Array(Math.ceil(n / 32));
    this.irqfds = Array.from({ length: n }, () => ctx.msiVector?.());
    this.routeStale = new Array<boolean>(n).fill(true);
    const body = new Uint8Array(10);
    const dv = new DataView(body.buffer);
    dv.setUint16(0, n - 1, true); // table size - 1; enable and function mask are writable
    dv.setUint32(2, layout.table | layout.bar, true);
    dv.setUint32(6, layout.pba | layout.bar, true);
    const writable = new Uint8Array(10); writable[1] = 0xc0;
    this.capOff = config.addCapability(CAP_MSIX, body, writable, (off, size) => {
      if (off < this.capOff + 4 && off + size > this.capOff + 2) this.changed();
    });
  }

  private get control(): number { return this.config.read(this.capOff + 2, 2); }
  get enabled(): boolean { return (this.control & ENABLE) !== 0; }
  /** enabled and the function not masked */
  private get open(): boolean { return (this.control & (ENABLE | FUNCTION_MASK)) === ENABLE; }
  private masked(v: number): boolean { return (this.table[v * ENTRY + CTRL]! & 1) !== 0; }
  private valid(v: number): boolean { return Number.isInteger(v) && v >= 0 && v < this.vectors; }

  /**
   * Raise `vector`: sent when it and the function are unmasked, else its
   * pending bit is set. A vector past the table is dropped. Returns false
   * when MSI-X is disabled (the function uses INTx then).
   */
  signal(vector: number): boolean {
    if (!this.enabled) return false;
    if (!this.valid(vector)) return true;
    if (!this.open || this.masked(vector)) this.pba[vector >> 5]! |= 1 << (vector & 31);
    else this.send(vector);
    return true;
  }

  /**
   * The irqfd a worker thread may write for `vector` itself (MSI-X enabled,
   * function and vector unmasked, route made current now), else -1: then it
   * asks this thread, which does masking and the PBA.
   */
  directFd(vector: number): number {
    const irqfd = this.open && this.valid(vector) && !this.masked(vector) ? this.irqfds[vector] : undefined;
    if (!irqfd) return -1;
    this.syncRoute(vector);
    return irqfd.fd;
  }

  private address(v: number): bigint {
    return (BigInt(this.table[v * ENTRY + 1]!) << 32n) | BigInt(this.table[v * ENTRY]!);
  }

  /** Set vector's irqfd route to its table entry if the entry changed since. */
  private syncRoute(v: number): void {
    const irqfd = this.irqfds[v];
    if (!irqfd || !this.routeStale[v]) return;
    irqfd.route(this.address(v), this.table[v * ENTRY + 2]!);
    this.routeStale[v] = false;
  }

  private send(v: number): void {
    const irqfd = this.irqfds[v];
    if (irqfd) {
      this.syncRoute(v);
      irqfd.signal();
      return;
    }
    this.ctx.msi(this.address(v), this.table[v * ENTRY + 2]!);
  }

  /** Enable, a mask or an entry changed: routes of unmasked vectors follow, pending ones go out. */
  private changed(): void {
    if (this.open) for (let v = 0; v < this.vectors; v++) if (!this.masked(v)) this.syncRoute(v);
    this.deliverPending();
    this.onChange?.();
  }

  /** Send the pending interrupts of vectors that are unmasked now. */
  deliverPending(): void {
    if (!this.open) return;
    for (let v = 0; v < this.vectors; v++) {
      const bit = 1 << (v & 31);
      if ((this.pba[v >> 5]! & bit) && !this.masked(v)) {
        this.pba[v >> 5]! &= ~bit;
        this.send(v);
      }
    }
  }

  // ---- the BAR region: `off` from the BAR's start ----

  read(off: number, size: number): number {
    if (size !== 4 || off & 3) return 0;
    const t = off - this.layout.table, p = off - this.layout.pba;
    if (t >= 0 && t < this.table.byteLength) return this.table[t >> 2]!;
    if (p >= 0 && p < this.pba.byteLength) return this.pba[p >> 2]!;
    return 0;
  }

  write(off: number, size: number, value: number): void {
    const t = off - this.layout.table;
    if (size !== 4 || off & 3 || !(t >= 0 && t < this.table.byteLength)) return; // the PBA is read-only
    const i = t >> 2;
    if ((i & 3) === CTRL) {
      this.table[i] = value & 1;
    } else {
      if (this.table[i] === value >>> 0) return;
      this.table[i] = value >>> 0;
      this.routeStale[i >> 2] = true;
    }
    this.changed();
  }

  // ---- save / restore: fields `msix` (the table) and `pba` ----

  saveState(w: StateWriter): void {
    w.b64('msix', new Uint8Array(this.table.buffer)).b64('pba', new Uint8Array(this.pba.buffer));
  }

  /**
   * Read and check the table and PBA; the returned function installs them
   * (so a caller can check all its fields before changing anything). Routes
   * and onChange follow; pending vectors that are unmasked are sent.
   */
  readState(r: StateReader): () => void {
    const table = r.b64('msix', this.table.byteLength), pba = r.b64('pba', this.pba.byteLength);
    return () => {
      this.table.set(new Uint32Array(table.buffer.slice(table.byteOffset, table.byteOffset + table.length)));
      for (let v = 0; v < this.vectors; v++) this.table[v * ENTRY + CTRL]! &= 1;
      this.pba.set(new Uint32Array(pba.buffer.slice(pba.byteOffset, pba.byteOffset + pba.length)));
      this.routeStale.fill(true);
      this.changed();
    };
  }

  /** Close every vector's irqfd (teardown, after anything that may write them has stopped). */
  close(): void {
    for (const v of this.irqfds) v?.close();
  }
}
