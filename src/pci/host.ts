/**
 * PCI configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF data)
 * over a table of functions keyed by bus/slot/function. Absent functions
 * read as all-ones so the guest's scan moves on.
 */
import type { BusDevice } from '../bus/bus.js';
import type { PciFunction } from './device.js';
import type { PersistentDevice } from '../snapshot/persist.js';

export const PCI_CONFIG_ADDR = 0xcf8;
export const PCI_CONFIG_DATA = 0xcfc;

export class PciHost implements BusDevice {
  private addr = 0;
  private readonly fns = new Map<number, PciFunction>();

  /** The data window 0xCFC-0xCFF as its own bus device (offsets 0..3). */
  readonly dataPort: BusDevice = {
    read: (offset, size) => this.read(offset + 4, size),
    write: (offset, size, value) => this.write(offset + 4, size, value),
  };

  static key(bus: number, slot: number, func: number): number {
    return (bus << 8) | (slot << 3) | func;
  }

  add(bus: number, slot: number, func: number, fn: PciFunction): void {
    const k = PciHost.key(bus, slot, func);
    if (this.fns.has(k)) throw new Error(`PCI ${bus}:${slot}:${func} is taken`);
    this.fns.set(k, fn);
  }

  has(bus: number, slot: number, func: number): boolean { return this.fns.has(PciHost.key(bus, slot, func)); }

  get(bus: number, slot: number, func: number): PciFunction | undefined { return this.fns.get(PciHost.key(bus, slot, func)); }

  functions(): PciFunction[] { return [...this.fns.values()]; }

  /** The config address latch (0xCF8): part of a snapshot. */
  get address(): number { return this.addr >>> 0; }
  set address(v: number) { this.addr = (v & 0x80fffffc) >>> 0; }

  /** The latch under the device contract (a snapshot's first device). */
  readonly persistent: PersistentDevice = {
    id: 'pci', kind: 'pci-host',
    saveState: (w) => { w.u32('address', this.address); },
    restoreState: (r) => { this.address = r.u32('address'); },
  };

  private target(): { fn: PciFunction; reg: number } | undefined {
    if (!(this.addr & 0x80000000)) return undefined;
    const fn = this.fns.get((this.addr >>> 8) & 0xffff);
    return fn ? { fn, reg: this.addr & 0xfc } : undefined;
  }

  // offsets are relative to 0xCF8: 0..3 address, 4..7 data
  read(offset: number, size: number): number {
    if (offset < 4) {
      if (offset === 0 && size === 4) return this.addr >>> 0;
      return 0xffffffff >>> (32 - size * 8);
    }
    const t = this.target();
    const byte = offset - 4;
    if (!t || byte + size > 4) return 0xffffffff >>> (32 - size * 8);
    return t.fn.config.read(t.reg + byte, size);
  }

  write(offset: number, size: number, value: number): void {
    if (offset < 4) {
      if (offset === 0 && size === 4) this.addr = value >>> 0 & 0x80fffffc;
      return;
    }
    const t = this.target();
    const byte = offset - 4;
    if (!t || byte + size > 4) return;
    t.fn.config.write(t.reg + byte, size, value);
  }
}
