/**
 * The BARs a PCI function serves. Each is placed in the VM's PCI window when
 * the device is built, as firmware would leave it, and its BusDevice is
 * registered on the I/O or memory bus wherever the guest decodes the BAR:
 * moved, unmapped and mapped again with it. A guest that moves one BAR onto
 * another misconfigures its own bus: a guest error, and that BAR stays
 * unmapped.
 */
import type { Bus, BusDevice } from '../bus/bus.js';
import type { DeviceContext } from './device.js';
import { PciReg, type Bar, type PciConfig } from './config-space.js';

export interface ServedBar extends Omit<Bar, 'onMap'> {
  /** serves the BAR's bytes, at offsets from its start */
  dev: BusDevice;
  /** names the mapping (`NAME-what` on the bus) and its guest errors */
  what: string;
  /** called after the BAR is mapped at `addr`, or unmapped (undefined) */
  onMap?(addr: number | undefined): void;
}

type BarContext = Pick<DeviceContext, 'pio' | 'mmio' | 'allocMmio' | 'allocPio' | 'guestError'>;

export class PciBars {
  private decode = 0;

  constructor(private readonly ctx: BarContext, private readonly config: PciConfig, private readonly name: string) {}

  /** Declare a BAR and place it (not decoded until enable()). */
  add(bar: ServedBar): void {
    const io = bar.kind === 'io';
    if (io && !this.ctx.allocPio) throw new Error(`${this.name}: BAR ${bar.index} needs I/O port space`);
    const bus = io ? this.ctx.pio : this.ctx.mmio;
    this.config.addBar({
      index: bar.index, size: bar.size, kind: bar.kind,
      onMap: (addr) => { this.map(bus, bar, addr); bar.onMap?.(addr); },
    });
    this.config.write(PciReg.BAR0 + bar.index * 4, 4, io ? this.ctx.allocPio!(bar.size) : this.ctx.allocMmio(bar.size));
    this.decode |= io ? 1 : 2;
  }

  /** Turn on I/O and memory decoding for the BARs added, as firmware does: they are mapped now. */
  enable(): void {
    this.config.write(PciReg.COMMAND, 2, this.config.command | this.decode);
  }

  private map(bus: Bus, bar: ServedBar, addr: number | undefined): void {
    bus.unregister(bar.dev);
    if (addr === undefined) return;
    try {
      bus.register(addr, bar.size, bar.dev, `${this.name}-${bar.what}`);
    } catch (e) {
      this.ctx.guestError(this.name, `${bar.what} at 0x${addr.toString(16)}: ${(e as Error).message}`);
    }
  }
}
