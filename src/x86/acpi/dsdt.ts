/**
 * The DSDT's AML: the \_S5 sleep package (so Linux can power off through
 * PM1a_CNT) and the PCI root bridge with its resource windows.
 */
import {
  type Aml, device, dwordMemory, eisaId, endTag, integer, ioPort, name, pkg, qwordMemory, scope,
  buffer, wordBusNumber, wordIo,
} from './aml.js';
import { PCI_MMIO32_BASE, PCI_MMIO32_END } from '../layout.js';
import { SLP_TYP_S5 } from './pm-ports.js';

/** One legacy INTx route: device `slot`, pin 0..3 (INTA..INTD) -> IOAPIC input `gsi`. */
export interface PciIrqRoute { slot: number; pin: number; gsi: number }

export interface PciRootOptions {
  /** 64-bit prefetchable/large-BAR window above RAM */
  mmio64?: { base: number; size: number };
  /** _PRT entries; without them Linux falls back to the Interrupt Line register */
  prt?: PciIrqRoute[];
}

export interface DsdtOptions {
  /** the PCI0 host bridge; `false` leaves it out */
  pci?: PciRootOptions | false;
}

/** Name(_S5, Package(){5, 5, 0, 0}): SLP_TYPa, SLP_TYPb, reserved. */
export function s5Aml(): Aml {
  return name('_S5', pkg([integer(SLP_TYP_S5), integer(SLP_TYP_S5), integer(0), integer(0)]));
}

export function pciRootAml(opts: PciRootOptions = {}): Aml {
  const crs: Aml = [
    ...wordBusNumber(0x00, 0xff),
    ...ioPort(0x0cf8, 0x0cf8, 1, 8),
    ...wordIo(0x0000, 0x0cf7),
    ...wordIo(0x0d00, 0xffff),
    ...dwordMemory(PCI_MMIO32_BASE, PCI_MMIO32_END - 1),
  ];
  if (opts.mmio64 && opts.mmio64.size > 0) crs.push(...qwordMemory(opts.mmio64.base, opts.mmio64.base + opts.mmio64.size - 1));
  crs.push(...endTag);

  const terms: Aml[] = [
    name('_HID', eisaId('PNP0A03')),
    name('_UID', integer(0)),
    name('_SEG', integer(0)),
    name('_BBN', integer(0)),
    name('_CRS', buffer(crs)),
  ];
  if (opts.prt && opts.prt.length > 0) {
    terms.push(name('_PRT', pkg(opts.prt.map((r) => {
      if (r.slot < 0 || r.slot > 31 || r.pin < 0 || r.pin > 3) throw new Error(`bad PCI IRQ route ${r.slot}/${r.pin}`);
      // Source 0 means "GSI given directly by the source index".
      return pkg([integer(r.slot * 0x10000 + 0xffff), integer(r.pin), integer(0), integer(r.gsi)]);
    }))));
  }
  return scope('\\_SB', [device('PCI0', terms)]);
}

/** The DSDT body (AML after the 36-byte table header). */
export function buildDsdtAml(opts: DsdtOptions = {}): Uint8Array {
  const body: Aml = [...s5Aml()];
  if (opts.pci !== false) body.push(...pciRootAml(opts.pci ?? {}));
  return Uint8Array.from(body);
}
