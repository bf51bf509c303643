/**
 * A type-0 PCI configuration space: 256 bytes with a per-byte write mask,
 * the standard header fields set at construction, and BAR sizing. Devices
 * add capabilities and BARs; the host bridge decoder only calls read/write.
 */
import type { PciConfigSpace } from './device.js';
import type { StateReader, StateWriter } from '../snapshot/state.js';

export interface PciIdentity {
  vendor: number; device: number;
  classCode: number; subclass: number; progIf?: number; revision?: number;
  subsysVendor?: number; subsys?: number;
  headerType?: number;
  /** INTx pin 1..4 (A..D), 0 for none */
  intPin?: number;
}

export const enum PciReg {
  VENDOR = 0x00, DEVICE = 0x02, COMMAND = 0x04, STATUS = 0x06, REVISION = 0x08, PROG_IF = 0x09,
  SUBCLASS = 0x0a, CLASS = 0x0b, HEADER_TYPE = 0x0e, BAR0 = 0x10, SUBSYS_VENDOR = 0x2c, SUBSYS = 0x2e,
  CAP_PTR = 0x34, INT_LINE = 0x3c, INT_PIN = 0x3d,
}

export interface Bar {
  index: number;
  size: number; // power of two
  kind: 'io' | 'mem32' | 'mem64';
  /** called when the guest moves or enables/disables the BAR (addr undefined = unmapped) */
  onMap?(addr: number | undefined): void;
}

export class PciConfig implements PciConfigSpace {
  readonly bytes = new Uint8Array(256);
  private readonly wmask = new Uint8Array(256);
  private readonly bars: (Bar | undefined)[] = [];
  private nextCap = 0x40;
  private lastCap = 0;
  /** capability registers with side effects: called after a write that touches [offset, end) */
  private readonly hooks: { offset: number; end: number; onWrite: (offset: number, size: number, value: number) => void }[] = [];

  constructor(id: PciIdentity) {
    const dv = this.dv();
    dv.setUint16(PciReg.VENDOR, id.vendor, true);
    dv.setUint16(PciReg.DEVICE, id.device, true);
    this.bytes[PciReg.REVISION] = id.revision ?? 0;
    this.bytes[PciReg.PROG_IF] = id.progIf ?? 0;
    this.bytes[PciReg.SUBCLASS] = id.subclass;
    this.bytes[PciReg.CLASS] = id.classCode;
    this.bytes[PciReg.HEADER_TYPE] = id.headerType ?? 0;
    dv.setUint16(PciReg.SUBSYS_VENDOR, id.subsysVendor ?? 0, true);
    dv.setUint16(PciReg.SUBSYS, id.subsys ?? 0, true);
    this.bytes[PciReg.INT_PIN] = id.intPin ?? 0;
    // command: I/O, memory, bus master, INTx disable are guest-writable
    this.wmask[PciReg.COMMAND] = 0x07;
    this.wmask[PciReg.COMMAND + 1] = 0x04;
    this.wmask[PciReg.INT_LINE] = 0xff;
  }

  private dv(): DataView { return new DataView(this.bytes.buffer); }

  get command(): number { return this.dv().getUint16(PciReg.COMMAND, true); }

  /** Declare a BAR. Its low bits encode the kind; the size mask makes it sizable. */
  addBar(bar: Bar): void {
    const o = PciReg.BAR0 + bar.index * 4;
    const typeBits = bar.kind === 'io' ? 1 : bar.kind === 'mem64' ? 4 : 0;
    this.dv().setUint32(o, typeBits, true);
    const mask = ~(bar.size - 1) & (bar.kind === 'io' ? 0xfffffffc : 0xfffffff0);
    for (let i = 0; i < 4; i++) this.wmask[o + i] = (mask >>> (i * 8)) & 0xff;
    if (bar.kind === 'mem64') for (let i = 0; i < 4; i++) this.wmask[o + 4 + i] = 0xff;
    this.bars[bar.index] = bar;
  }

  barAddress(index: number): number {
    const bar = this.bars[index];
    if (!bar) return 0;
    const dv = this.dv();
    const lo = dv.getUint32(PciReg.BAR0 + index * 4, true);
    // >>> 0: the masks make signed 32-bit values, and BARs live above 2 GiB.
    if (bar.kind === 'io') return (lo & ~3) >>> 0;
    let a = (lo & ~0xf) >>> 0;
    if (bar.kind === 'mem64') a += dv.getUint32(PciReg.BAR0 + index * 4 + 4, true) * 0x100000000;
    return a;
  }

  /**
   * Append a capability; returns its offset. body excludes the id/next bytes.
   * onWrite is called after each write that touches the capability.
   */
  addCapability(id: number, body: Uint8Array, writable?: Uint8Array, onWrite?: (offset: number, size: number, value: number) => void): number {
    const off = this.nextCap;
    const len = 2 + body.length;
    if (off + len > 256) throw new Error('PCI capability space full');
    this.bytes[off] = id;
    this.bytes[off + 1] = 0;
    this.bytes.set(body, off + 2);
    if (writable) this.wmask.set(writable, off + 2);
    if (onWrite) this.hooks.push({ offset: off, end: off + len, onWrite });
    if (this.lastCap) this.bytes[this.lastCap + 1] = off; else this.bytes[PciReg.CAP_PTR] = off;
    this.bytes[PciReg.STATUS]! |= 0x10; // capabilities list
    this.lastCap = off;
    this.nextCap = (off + len + 3) & ~3;
    return off;
  }

  /**
   * A device-specific register at `offset` (outside the standard header and
   * capabilities): `writable` masks its bytes; onWrite is called after each
   * write that touches it.
   */
  addRegister(offset: number, writable: Uint8Array, onWrite: () => void): void {
    if (offset < 0x40 || offset + writable.length > 256) throw new Error('PCI register outside the device-specific space');
    this.wmask.set(writable, offset);
    this.hooks.push({ offset, end: offset + writable.length, onWrite });
  }

  read(offset: number, size: number): number {
    if (offset < 0 || offset + size > 256) return 0xffffffff;
    const dv = this.dv();
    return size === 1 ? dv.getUint8(offset) : size === 2 ? dv.getUint16(offset, true) : dv.getUint32(offset, true);
  }

  write(offset: number, size: number, value: number): void {
    if (offset < 0 || offset + size > 256) return;
    const before = this.mappings();
    for (let i = 0; i < size; i++) {
      const o = offset + i;
      const m = this.wmask[o]!;
      this.bytes[o] = (this.bytes[o]! & ~m) | (((value >>> (i * 8)) & 0xff) & m);
    }
    for (const h of this.hooks) if (offset < h.end && offset + size > h.offset) h.onWrite(offset, size, value);
    const after = this.mappings();
    this.bars.forEach((bar, i) => {
      if (bar && before[i] !== after[i]) bar.onMap?.(after[i]);
    });
  }

  saveState(w: StateWriter): void { w.b64('bytes', this.bytes); }

  /**
   * The guest-writable bytes come from the snapshot; the read-only ones
   * (identity, capabilities, BAR types) must already match, or the snapshot
   * is of another device. BARs that moved are mapped again.
   */
  restoreState(r: StateReader): void {
    const b = r.b64('bytes', 256);
    for (let i = 0; i < 256; i++) {
      if ((b[i]! & ~this.wmask[i]!) !== (this.bytes[i]! & ~this.wmask[i]!)) {
        r.fail('bytes', `read-only config byte 0x${i.toString(16)} is 0x${b[i]!.toString(16)}, this device has 0x${this.bytes[i]!.toString(16)} (another device or option)`);
      }
    }
    const before = this.mappings();
    this.bytes.set(b);
    const after = this.mappings();
    this.bars.forEach((bar, i) => { if (bar && before[i] !== after[i]) bar.onMap?.(after[i]); });
  }

  /** Current decoded address of each BAR, undefined when decoding is off or unassigned. */
  private mappings(): (number | undefined)[] {
    const cmd = this.command;
    return this.bars.map((bar, i) => {
      if (!bar) return undefined;
      const on = bar.kind === 'io' ? cmd & 1 : cmd & 2;
      const a = this.barAddress(i);
      return on && a !== 0 ? a : undefined;
    });
  }
}
