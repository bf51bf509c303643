/**
 * ACPI fixed hardware (what the FADT in src/x86/acpi advertises): the PM1a
 * event and control blocks, the PM timer, the PIIX reset register at 0xCF9,
 * and the 8042 "pulse reset line" command on port 0x64, the last reboot
 * method Linux tries.
 */
import type { Bus, BusDevice, IrqLine } from '../bus/bus.js';
import type { Snapshottable, StateWriter, StateReader } from '../snapshot/state.js';
import {
  DEFAULT_PM_PORTS, KBD_STATUS_PORT, PM1_CNT_LEN, PM1_EVT_LEN, PM_TIMER_32BIT, PM_TIMER_HZ, PM_TMR_LEN,
  SCI_IRQ, SLP_TYP_S5, pmPortsFor, type PmPorts,
} from '../x86/acpi/pm-ports.js';
import { registerPlatformDevice } from './platform.js';
import { PIIX4_PM_BDF, piix4PmFunction } from './piix4-pm.js';

export interface AcpiPmCallbacks {
  onPowerOff(): void;
  onReset(): void;
}

export interface AcpiPmOptions {
  ports?: PmPorts;
  /** the SCI (ISA IRQ 9); without it status bits are still kept */
  sci?: IrqLine;
  /** monotonic nanoseconds, for tests */
  now?: () => bigint;
  /** also claim port 0x64 for the 8042 reset command (default true) */
  keyboardReset?: boolean;
  /** SLP_TYP values that power off besides our \_S5's */
  softOffTypes?: readonly number[];
}

// PM1 status/enable bits
export const TMR_STS = 1 << 0;
export const GBL_STS = 1 << 5;
export const PWRBTN_STS = 1 << 8;
export const SLPBTN_STS = 1 << 9;
export const RTC_STS = 1 << 10;
export const WAK_STS = 1 << 15;
const STS_MASK = 0xc731; // TMR, BM, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE, WAK
const EN_MASK = 0x4721; // TMR, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE_DIS

// PM1 control bits
export const SCI_EN = 1 << 0;
export const SLP_EN = 1 << 13;
const CNT_MASK = 0x1c07; // SCI_EN, BM_RLD, GBL_RLS, SLP_TYP

export const RESET_CPU = 1 << 2;
export const KBD_CMD_RESET = 0xfe;

function sizeMask(size: number): number {
  return size >= 4 ? 0xffffffff : (1 << (size * 8)) - 1;
}

/** Merge a `size`-byte write at byte `offset` into a register value. */
function merge(old: number, offset: number, size: number, value: number): number {
  const m = (sizeMask(size) << (offset * 8)) >>> 0;
  return ((old & ~m) | ((value << (offset * 8)) & m)) >>> 0;
}

function extract(reg: number, offset: number, size: number): number {
  return (reg >>> (offset * 8)) & sizeMask(size);
}

export class AcpiPm implements Snapshottable {
  /** PM1 status and enable */
  sts = 0;
  en = 0;
  /** PM1 control, without SLP_EN */
  cnt = SCI_EN;
  resetReg = 0;
  readonly ports: PmPorts;
  private readonly timerMask: bigint;
  private readonly start: bigint;
  private readonly now: () => bigint;

  constructor(private readonly cb: AcpiPmCallbacks, private readonly opts: AcpiPmOptions = {}) {
    this.ports = opts.ports ?? DEFAULT_PM_PORTS;
    this.timerMask = (this.ports.timer32 ?? PM_TIMER_32BIT) ? 0xffffffffn : 0xffffffn;
    this.now = opts.now ?? (() => process.hrtime.bigint());
    this.start = this.now();
  }

  /** Latch the power button: with PWRBTN_EN set, Linux sees it and shuts down. */
  pressPowerButton(): void {
    this.sts |= PWRBTN_STS;
    this.updateSci();
  }

  saveState(w: StateWriter): void {
    w.u16('sts', this.sts).u16('en', this.en).u16('cnt', this.cnt).u8('reset', this.resetReg);
  }

  restoreState(r: StateReader): void {
    const sts = r.u16('sts'), en = r.u16('en'), cnt = r.u16('cnt'), reset = r.u8('reset');
    this.sts = sts & STS_MASK; this.en = en & EN_MASK; this.cnt = (cnt & CNT_MASK) | SCI_EN; this.resetReg = reset;
    this.updateSci();
  }

  get sciLevel(): boolean {
    return (this.sts & this.en) !== 0 && (this.cnt & SCI_EN) !== 0;
  }

  private updateSci(): void {
    this.opts.sci?.set(this.sciLevel);
  }

  timerValue(): number {
    const ticks = ((this.now() - this.start) * BigInt(PM_TIMER_HZ)) / 1_000_000_000n;
    return Number(ticks & this.timerMask);
  }

  readonly evt: BusDevice = {
    read: (offset, size) => extract((this.sts | (this.en << 16)) >>> 0, offset, size),
    write: (offset, size, value) => {
      const v = merge(0, offset, size, value);
      const m = merge(0, offset, size, 0xffffffff);
      this.sts &= ~(v & 0xffff & STS_MASK); // write 1 to clear
      if (m >>> 16) this.en = ((this.en & ~(m >>> 16)) | (v >>> 16)) & EN_MASK;
      this.updateSci();
    },
  };

  readonly control: BusDevice = {
    read: (offset, size) => extract(this.cnt | SCI_EN, offset, size),
    write: (offset, size, value) => {
      const v = merge(this.cnt, offset, size, value) & 0xffff;
      this.cnt = (v & CNT_MASK) | SCI_EN;
      const type = (v >>> 10) & 7;
      if ((v & SLP_EN) && (type === SLP_TYP_S5 || this.opts.softOffTypes?.includes(type))) this.cb.onPowerOff();
    },
  };

  readonly timer: BusDevice = {
    read: (offset, size) => extract(this.timerValue(), offset, size),
    write: () => {}, // read-only
  };

  readonly reset: BusDevice = {
    read: () => this.resetReg,
    write: (_offset, _size, value) => {
      this.resetReg = value & 0x0e;
      if (value & RESET_CPU) this.cb.onReset();
    },
  };

  /** Only the 8042 reset pulse; status reads 0 (no data, input buffer empty). */
  readonly keyboard: BusDevice = {
    read: () => 0,
    write: (_offset, _size, value) => {
      if ((value & 0xff) === KBD_CMD_RESET) this.cb.onReset();
    },
  };
}

/**
 * Claim the PM1 event, control and timer blocks at `p` (or release them,
 * undefined). False, with nothing claimed, when `p` overlaps ports another
 * device has (a guest can program any base).
 */
export function mapPmBlocks(pio: Bus, pm: AcpiPm, p: PmPorts | undefined): boolean {
  const blocks = [pm.evt, pm.control, pm.timer];
  for (const d of blocks) pio.unregister(d);
  if (!p) return true;
  try {
    pio.register(p.pm1aEvt, PM1_EVT_LEN, pm.evt, 'acpi-pm1a-evt');
    pio.register(p.pm1aCnt, PM1_CNT_LEN, pm.control, 'acpi-pm1a-cnt');
    pio.register(p.pmTmr, PM_TMR_LEN, pm.timer, 'acpi-pm-tmr');
  } catch {
    for (const d of blocks) pio.unregister(d);
    return false;
  }
  return true;
}

/**
 * The PM device with its blocks at opts.ports (the default ports), the
 * reset register and the 8042 reset; `floating`: the blocks are left
 * unmapped, for the PIIX4 PM function to place (firmware boot).
 */
export function attachAcpiPm(pio: Bus, callbacks: AcpiPmCallbacks, opts: AcpiPmOptions = {}, floating = false): AcpiPm {
  const pm = new AcpiPm(callbacks, opts);
  const p = pm.ports;
  if (!floating) mapPmBlocks(pio, pm, p);
  // One byte only, so the PCI config-address register at 0xCF8 stays separate.
  pio.register(p.reset, 1, pm.reset, 'acpi-reset');
  if (opts.keyboardReset ?? true) pio.register(KBD_STATUS_PORT, 1, pm.keyboard, 'kbd-reset');
  return pm;
}

registerPlatformDevice({
  name: 'pm', kind: 'acpi-pm', node: 'pm',
  create: (ctx) => {
    // With firmware, the blocks are where it programs the PIIX4 PM function's PMBA (pmPortsFor, as the FADT says),
    // and SLP_TYP 0 is soft off as on QEMU's PIIX4 (OVMF's ResetShutdown writes it).
    const firmware = ctx.config.get('lpc.bootrom') !== undefined;
    const cb = { onPowerOff: () => ctx.powerOff(), onReset: () => ctx.reset() };
    const opts = { sci: ctx.irq(SCI_IRQ), ports: pmPortsFor(firmware), ...(firmware && { softOffTypes: [0] }) };
    const pm = attachAcpiPm(ctx.pio, cb, opts, firmware);
    if (firmware) ctx.addPciFunction(PIIX4_PM_BDF, 'piix4-pm', piix4PmFunction(ctx.pio, pm));
    return pm;
  },
});
