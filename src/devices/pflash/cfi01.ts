/**
 * A CFI flash with the Intel/Sharp basic command set, one byte wide: the
 * device QEMU's pc machines give OVMF for its variable store (QEMU's
 * pflash_cfi01 at width 1), and what OVMF's QemuFlashFvbServicesRuntimeDxe
 * drives: read array (0xFF), read status (0x70), clear status (0x50),
 * program (0x10/0x40 then the data), block erase (0x20 then 0xD0), read
 * identifier (0x90), CFI query (0x98). Block lock (0x60) is accepted and not
 * emulated; write-to-buffer (0xE8) is not offered (the CFI table says so).
 *
 * Programming and erasing complete at once (the status is always ready).
 * Anything else a guest writes, or a two-cycle command with the wrong second
 * cycle, puts the flash back in read-array mode with the command-sequence
 * error bits set. Only the state machine lives here; the storage, its
 * mapping into the guest and its file are the caller's (flash.ts).
 */
import type { BusDevice } from '../../bus/bus.js';

export const CMD = {
  READ_ARRAY: 0xff, PROGRAM: 0x10, PROGRAM_ALT: 0x40, ERASE: 0x20, CONFIRM: 0xd0, CLEAR_STATUS: 0x50,
  READ_STATUS: 0x70, READ_ID: 0x90, CFI_QUERY: 0x98, LOCK_SETUP: 0x60, AMD_RESET: 0xf0,
} as const;

/** Status register bits. */
export const SR = { READY: 0x80, ERASE_ERROR: 0x20, PROGRAM_ERROR: 0x10, SEQUENCE_ERROR: 0x30 } as const;

/** What reads return. */
export const enum Mode { ARRAY = 0, STATUS = 1, ID = 2, CFI = 3 }

/** The first cycle of a two-cycle command, waiting for its second write. */
export const enum Pending { NONE = 0, PROGRAM = 1, ERASE = 2, LOCK = 3 }

/** Intel's manufacturer code and a 28F-series x8 device code (read identifier mode). */
const MANUFACTURER_ID = 0x89, DEVICE_ID = 0x18;

export interface Cfi01Hooks {
  /** Reads switch between the array (plain memory for the guest) and the device. */
  arrayMode(on: boolean): void;
  /** Bytes [offset, offset + length) of the array changed. */
  changed(offset: number, length: number): void;
  /** An erase completed or the flash went back to read-array mode: a point to make changes durable. */
  settle(): void;
  /** A guest's misuse (the caller rate-limits it). */
  guestError(msg: string): void;
}

export interface Cfi01State { mode: Mode; pending: Pending; status: number }

export class Cfi01Flash implements BusDevice {
  private mode = Mode.ARRAY;
  private pending = Pending.NONE;
  private status: number = SR.READY;
  private readonly cfi: Uint8Array;

  constructor(readonly storage: Uint8Array, readonly blockSize: number, private readonly hooks: Cfi01Hooks) {
    if (blockSize <= 0 || storage.length % blockSize !== 0) throw new RangeError(`flash of ${storage.length} bytes is not a whole number of ${blockSize}-byte blocks`);
    this.cfi = cfiTable(storage.length, blockSize);
  }

  /** Reads are served from the array (the caller maps it as memory then). */
  get readsArray(): boolean { return this.mode === Mode.ARRAY && this.pending === Pending.NONE; }

  get state(): Cfi01State { return { mode: this.mode, pending: this.pending, status: this.status }; }

  /** Set a saved state (checked by the caller) and tell the hooks which way reads go. */
  setState(s: Cfi01State): void {
    this.mode = s.mode; this.pending = s.pending; this.status = s.status;
    this.hooks.arrayMode(this.readsArray);
  }

  read(offset: number, size: number): number {
    let v = 0;
    for (let i = 0; i < size && i < 4; i++) v |= this.readByte(offset + i) << (8 * i);
    return v >>> 0;
  }

  private readByte(off: number): number {
    // A command waiting for its second cycle reads status, as the parts do.
    const mode = this.pending === Pending.NONE ? this.mode : Mode.STATUS;
    switch (mode) {
      case Mode.ARRAY: return off < this.storage.length ? this.storage[off]! : 0xff;
      case Mode.STATUS: return this.status;
      // The identifier and the query table repeat every 256 bytes, as QEMU's do.
      case Mode.ID: return (off & 0xff) === 0 ? MANUFACTURER_ID : (off & 0xff) === 1 ? DEVICE_ID : 0;
      case Mode.CFI: return this.cfi[off & 0xff] ?? 0;
    }
  }

  write(offset: number, size: number, value: number): void {
    const wasArray = this.readsArray;
    const settle = this.command(offset, Math.min(size, 4), value >>> 0);
    if (this.readsArray !== wasArray) this.hooks.arrayMode(this.readsArray);
    if (settle || (this.readsArray && !wasArray)) this.hooks.settle();
  }

  /** One write cycle; returns true when an erase completed. */
  private command(offset: number, size: number, value: number): boolean {
    const cmd = value & 0xff;
    const pending = this.pending;
    this.pending = Pending.NONE;
    switch (pending) {
      case Pending.PROGRAM: {
        // A wider write programs as many bytes (QEMU's width-1 flash does the same).
        const n = Math.max(0, Math.min(size, this.storage.length - offset));
        for (let i = 0; i < n; i++) this.storage[offset + i] = (value >>> (8 * i)) & 0xff;
        if (n > 0) this.hooks.changed(offset, n);
        this.status |= SR.READY;
        this.mode = Mode.STATUS;
        return false;
      }
      case Pending.ERASE:
        if (cmd === CMD.CONFIRM) {
          const start = offset - (offset % this.blockSize);
          this.storage.fill(0xff, start, start + this.blockSize);
          this.hooks.changed(start, this.blockSize);
          this.status |= SR.READY;
          this.mode = Mode.STATUS;
          return true;
        }
        return this.secondCycle(cmd, 'block erase', offset);
      case Pending.LOCK:
        // Lock, unlock, lock-down: accepted, nothing is ever locked.
        if (cmd === CMD.CONFIRM || cmd === 0x01 || cmd === 0x2f) { this.status |= SR.READY; this.mode = Mode.STATUS; return false; }
        return this.secondCycle(cmd, 'block lock', offset);
      case Pending.NONE: break;
    }
    switch (cmd) {
      case CMD.READ_ARRAY: case CMD.AMD_RESET: case 0x00: this.mode = Mode.ARRAY; break;
      case CMD.PROGRAM: case CMD.PROGRAM_ALT: this.pending = Pending.PROGRAM; break;
      case CMD.ERASE: this.pending = Pending.ERASE; break;
      case CMD.LOCK_SETUP: this.pending = Pending.LOCK; break;
      // OVMF's probe reads 0x00 after clear status then read status: QEMU's
      // flash clears the ready bit too, and OVMF's detection depends on it.
      case CMD.CLEAR_STATUS: this.status = 0; this.mode = Mode.ARRAY; break;
      case CMD.READ_STATUS: this.mode = Mode.STATUS; break;
      case CMD.READ_ID: this.mode = Mode.ID; break;
      case CMD.CFI_QUERY: this.mode = Mode.CFI; break;
      default: this.sequenceError(`unsupported command 0x${cmd.toString(16)} at offset 0x${offset.toString(16)}`);
    }
    return false;
  }

  /** A two-cycle command's second write that is not its confirmation. */
  private secondCycle(cmd: number, what: string, offset: number): boolean {
    if (cmd === CMD.READ_ARRAY) this.mode = Mode.ARRAY;
    else this.sequenceError(`${what} at offset 0x${offset.toString(16)} not confirmed (0x${cmd.toString(16)})`);
    return false;
  }

  private sequenceError(msg: string): void {
    this.status |= SR.SEQUENCE_ERROR | SR.READY;
    this.mode = Mode.ARRAY;
    this.hooks.guestError(msg);
  }
}

/**
 * The CFI query table (JEDEC JESD68): "QRY", the Intel command set, one
 * uniform erase region, no write buffer; offsets as byte addresses of an x8 part.
 */
function cfiTable(size: number, blockSize: number): Uint8Array {
  const t = new Uint8Array(0x40);
  const blocks = size / blockSize;
  t.set([0x51, 0x52, 0x59], 0x10); // "QRY"
  t.set([0x01, 0x00, 0x31, 0x00], 0x13); // Intel/Sharp command set, its extended table at 0x31
  t.set([0x45, 0x55, 0x00, 0x00], 0x1b); // Vcc 4.5-5.5 V, no Vpp
  t.set([0x04, 0x00, 0x0a, 0x00, 0x04, 0x00, 0x04, 0x00], 0x1f); // typical/max timeouts: byte program 16 us, block erase 1 s
  t[0x27] = Math.ceil(Math.log2(size)); // device size as a power of two (the next one up)
  t.set([0x00, 0x00, 0x00, 0x00], 0x28); // x8 interface, no multi-byte write buffer
  t[0x2c] = 1; // one erase block region
  t.set([(blocks - 1) & 0xff, (blocks - 1) >> 8, (blockSize >> 8) & 0xff, blockSize >> 16], 0x2d);
  t.set([0x50, 0x52, 0x49, 0x31, 0x30], 0x31); // "PRI" version 1.0
  return t;
}
