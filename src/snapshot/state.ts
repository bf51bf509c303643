/**
 * The typed-key JSON that snapshot state is written in (after bhyve's JSON
 * save format): every scalar key carries its type, `name$u32`, `name$u64`
 * (a hex string: JSON numbers stop at 2^53), `name$b64` (binary), and
 * `name$int` (a signed integer JS numbers hold exactly), and
 * reading checks the type and the range of every field, since a snapshot
 * is untrusted input. Objects and arrays nest without a suffix.
 *
 *   { "ier$u8": 5, "tsc$u64": "15063e03a9f0", "lapic$b64": "AAAA...", "queues": [ {...} ] }
 */
import { TshyveError } from '../errors.js';

/**
 * A snapshot that cannot be used: malformed, out of range, or not matching
 * this VM. The message is one line even when it quotes the snapshot.
 */
export class SnapshotError extends TshyveError {
  constructor(message: string, code = 'ESNAPSHOT') {
    super(code, message.replace(/[\0-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
  }
}

/** At most `n` characters of a string taken from a snapshot, for a message. */
export function clip(s: string, n = 64): string { return s.length > n ? `${s.slice(0, n)}...` : s; }
/** A snapshot value for a message: its JSON, clipped. */
const show = (v: unknown): string => clip(typeof v === 'string' ? JSON.stringify(clip(v)) : JSON.stringify(v) ?? String(v));

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const UINT = { u8: 0xff, u16: 0xffff, u32: 0xffffffff } as const;

/** Builds one state object. */
export class StateWriter {
  constructor(readonly obj: Record<string, Json> = {}) {}

  /** A state object another thread built with a StateWriter (a vCPU's, read on its own thread). */
  static of(obj: Record<string, unknown>): StateWriter { return new StateWriter(obj as Record<string, Json>); }

  private put(key: string, v: Json): this {
    if (key in this.obj) throw new Error(`state key ${key} written twice`);
    this.obj[key] = v;
    return this;
  }

  u8(name: string, v: number): this { return this.uint(name, 'u8', v); }
  u16(name: string, v: number): this { return this.uint(name, 'u16', v); }
  u32(name: string, v: number): this { return this.uint(name, 'u32', v); }
  private uint(name: string, t: keyof typeof UINT, v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > UINT[t]) throw new RangeError(`state ${name}: ${v} is not a ${t}`);
    return this.put(`${name}$${t}`, v);
  }
  u64(name: string, v: bigint | number): this {
    const b = BigInt(v);
    if (b < 0n || b >= 1n << 64n) throw new RangeError(`state ${name}: ${b} is not a u64`);
    return this.put(`${name}$u64`, b.toString(16));
  }
  int(name: string, v: number): this {
    if (!Number.isSafeInteger(v)) throw new RangeError(`state ${name}: ${v} is not a safe integer`);
    return this.put(`${name}$int`, v);
  }
  bool(name: string, v: boolean): this { return this.put(`${name}$bool`, v); }
  str(name: string, v: string): this { return this.put(`${name}$str`, v); }
  b64(name: string, v: Uint8Array): this { return this.put(`${name}$b64`, Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64')); }
  /** A nested object filled by `fill`. */
  obj_(name: string, fill: (w: StateWriter) => void): this {
    const w = new StateWriter();
    fill(w);
    return this.put(name, w.obj);
  }
  /** An array of objects, one per item. */
  arr<T>(name: string, items: readonly T[], fill: (w: StateWriter, item: T, i: number) => void): this {
    return this.put(name, items.map((it, i) => { const w = new StateWriter(); fill(w, it, i); return w.obj; }));
  }
  /** A nested object built elsewhere. */
  raw(name: string, v: Record<string, Json>): this { return this.put(name, v); }
}

/** Reads one state object; every accessor throws SnapshotError naming the field's path. */
export class StateReader {
  constructor(private readonly o: unknown, readonly path: string) {
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new SnapshotError(`${path}: not an object`);
  }

  private get rec(): Record<string, unknown> { return this.o as Record<string, unknown>; }

  fail(field: string, why: string): never {
    throw new SnapshotError(`snapshot field ${this.path}.${clip(field)}: ${why}`);
  }

  private take(key: string, field: string): unknown {
    if (!Object.prototype.hasOwnProperty.call(this.o, key)) this.fail(field, 'missing');
    return this.rec[key];
  }

  has(name: string): boolean { return Object.keys(this.rec).some((k) => k === name || k.startsWith(`${name}$`)); }

  u8(name: string, max = 0xff): number { return this.uint(name, 'u8', max); }
  u16(name: string, max = 0xffff): number { return this.uint(name, 'u16', max); }
  u32(name: string, max = 0xffffffff): number { return this.uint(name, 'u32', max); }
  private uint(name: string, t: keyof typeof UINT, max: number): number {
    const v = this.take(`${name}$${t}`, name);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > Math.min(max, UINT[t])) {
      this.fail(name, `${show(v)} is not an integer in [0, ${Math.min(max, UINT[t])}]`);
    }
    return v;
  }
  u64(name: string, max?: bigint): bigint {
    const v = this.take(`${name}$u64`, name);
    if (typeof v !== 'string' || !/^[0-9a-f]{1,16}$/.test(v)) this.fail(name, `${show(v)} is not a 64-bit hex number`);
    const b = BigInt(`0x${v}`);
    if (max !== undefined && b > max) this.fail(name, `0x${v} is above 0x${max.toString(16)}`);
    return b;
  }
  /** A u64 that must fit a JS number (sizes, offsets). */
  safe(name: string, max = Number.MAX_SAFE_INTEGER): number { return Number(this.u64(name, BigInt(max))); }
  /** A signed integer in [min, max] (at most the safe-integer range). */
  int(name: string, min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER): number {
    const v = this.take(`${name}$int`, name);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) this.fail(name, `${show(v)} is not an integer in [${min}, ${max}]`);
    return v;
  }
  bool(name: string): boolean {
    const v = this.take(`${name}$bool`, name);
    if (typeof v !== 'boolean') this.fail(name, 'not a boolean');
    return v;
  }
  str(name: string, maxLen = 4096): string {
    const v = this.take(`${name}$str`, name);
    if (typeof v !== 'string' || v.length > maxLen) this.fail(name, `not a string of at most ${maxLen} characters`);
    return v;
  }
  /** Binary field; `len` exact length, or [min, max]. */
  b64(name: string, len: number | [number, number]): Buffer {
    const v = this.take(`${name}$b64`, name);
    if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0) this.fail(name, 'not base64');
    const b = Buffer.from(v, 'base64');
    const [lo, hi] = typeof len === 'number' ? [len, len] : len;
    if (b.length < lo || b.length > hi) this.fail(name, `${b.length} bytes, expected ${lo === hi ? lo : `${lo}-${hi}`}`);
    return b;
  }
  obj(name: string): StateReader { return new StateReader(this.take(name, name), `${this.path}.${name}`); }
  arr(name: string, maxLen: number): StateReader[] {
    const v = this.take(name, name);
    if (!Array.isArray(v)) this.fail(name, 'not an array');
    if (v.length > maxLen) this.fail(name, `${v.length} entries, at most ${maxLen} allowed`);
    return v.map((x, i) => new StateReader(x, `${this.path}.${name}[${i}]`));
  }
  /** The raw JSON value (for parts validated by their own code). */
  raw(name: string): unknown { return this.take(name, name); }
}

/** A device or platform part that can be saved and restored. */
export interface Snapshottable {
  saveState(w: StateWriter): void;
  /** Throws SnapshotError on anything malformed or out of range (the VM is then not started). */
  restoreState(r: StateReader): void;
}
