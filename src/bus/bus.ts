/**
 * Port-I/O and MMIO buses. The exit decoder hands every access here; it
 * never sees device types. Devices implement BusDevice and get offsets
 * relative to the range they registered. Accesses that hit no device read
 * as all-ones and writes are dropped, as on real hardware.
 */
export interface BusDevice {
  /** size is 1, 2 or 4; returns the value (zero-extended). */
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
}

interface Range { base: number; len: number; dev: BusDevice; name: string; posted: boolean }

export class Bus {
  private ranges: Range[] = [];
  /** Count of accesses that hit nothing (for stats). */
  unhandled = 0;

  constructor(readonly kind: 'pio' | 'mmio') {}

  /**
   * `posted: false`: a vCPU waits for each write to be served before it goes
   * on (a write there may change what the guest then reads from memory, as
   * a flash leaving read-array mode does); other writes are posted.
   */
  register(base: number, len: number, dev: BusDevice, name: string, opts: { posted?: boolean } = {}): void {
    if (len <= 0) throw new Error(`bad ${this.kind} range length for ${name}`);
    for (const r of this.ranges) {
      if (base < r.base + r.len && r.base < base + len) {
        throw new Error(`${this.kind} range 0x${base.toString(16)}+${len} of ${name} overlaps ${r.name}`);
      }
    }
    this.ranges.push({ base, len, dev, name, posted: opts.posted ?? true });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  unregister(dev: BusDevice): void {
    this.ranges = this.ranges.filter((r) => r.dev !== dev);
  }

  /** The ranges registered with `posted: false`, as flat [base, end) pairs (for the vCPU threads). */
  unpostedRanges(): number[] {
    return this.ranges.filter((r) => !r.posted).flatMap((r) => [r.base, r.base + r.len]);
  }

  private find(addr: number): Range | undefined {
    for (const r of this.ranges) if (addr >= r.base && addr < r.base + r.len) return r;
    return undefined;
  }

  read(addr: number, size: number): number {
    if (size === 8) return this.read(addr, 4); // upper half handled by caller via readWide
    const r = this.find(addr);
    if (!r) { this.unhandled++; return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1; }
    return r.dev.read(addr - r.base, size) >>> 0;
  }

  write(addr: number, size: number, value: number): void {
    const r = this.find(addr);
    if (!r) { this.unhandled++; return; }
    r.dev.write(addr - r.base, size, value >>> 0);
  }

  /** Access of any size 1..8 through a byte buffer (for KVM exits); 8-byte ones split in two. */
  readInto(addr: number, data: Uint8Array): void {
    const dv = new DataView(data.buffer, data.byteOffset, data.length);
    switch (data.length) {
      case 1: dv.setUint8(0, this.read(addr, 1)); break;
      case 2: dv.setUint16(0, this.read(addr, 2), true); break;
      case 4: dv.setUint32(0, this.read(addr, 4), true); break;
      case 8: dv.setUint32(0, this.read(addr, 4), true); dv.setUint32(4, this.read(addr + 4, 4), true); break;
      default: data.fill(0xff);
    }
  }

  writeFrom(addr: number, data: Uint8Array): void {
    const dv = new DataView(data.buffer, data.byteOffset, data.length);
    switch (data.length) {
      case 1: this.write(addr, 1, dv.getUint8(0)); break;
      case 2: this.write(addr, 2, dv.getUint16(0, true)); break;
      case 4: this.write(addr, 4, dv.getUint32(0, true)); break;
      case 8: this.write(addr, 4, dv.getUint32(0, true)); this.write(addr + 4, 4, dv.getUint32(4, true)); break;
      default: break;
    }
  }
}

/**
 * A device of byte-wide registers: a 2- or 4-byte access acts as ISA byte
 * cycles at consecutive ports, least significant byte first.
 */
export abstract class ByteRegisterDevice implements BusDevice {
  protected abstract readByte(offset: number): number;
  protected abstract writeByte(offset: number, value: number): void;

  read(offset: number, size: number): number {
    let v = 0;
    for (let i = 0; i < size && i < 4; i++) v |= this.readByte(offset + i) << (8 * i);
    return v >>> 0;
  }

  write(offset: number, size: number, value: number): void {
    for (let i = 0; i < size && i < 4; i++) this.writeByte(offset + i, (value >>> (8 * i)) & 0xff);
  }
}

/** An interrupt line into the guest (an IOAPIC/PIC pin). */
export interface IrqLine {
  set(level: boolean): void;
}
