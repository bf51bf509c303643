/**
 * The fixed-hardware ACPI register blocks (PIIX4-like I/O ports). The FADT
 * advertises them and src/devices/acpi-pm.ts implements them; both take
 * their places from here (pmPortsFor) so they cannot disagree.
 */
export const PM1A_EVT = 0x400; // 4 bytes: PM1_STS (2) + PM1_EN (2)
export const PM1A_CNT = 0x404; // 2 bytes
export const PM_TMR = 0x408; // 4 bytes
export const RESET_PORT = 0xcf9; // PIIX reset control register
export const RESET_VALUE = 0x06; // SYS_RST | RST_CPU
export const KBD_STATUS_PORT = 0x64;

export const PM1_EVT_LEN = 4;
export const PM1_CNT_LEN = 2;
export const PM_TMR_LEN = 4;

/** ACPI PM timer frequency in Hz. */
export const PM_TIMER_HZ = 3579545;
/** We implement the 32-bit timer (FADT TMR_VAL_EXT). */
export const PM_TIMER_32BIT = true;

/** SCI on ISA IRQ 9, as on PIIX4. */
export const SCI_IRQ = 9;

/** SLP_TYP value for S5 in our \_S5 package. */
export const SLP_TYP_S5 = 5;

export interface PmPorts {
  pm1aEvt: number;
  pm1aCnt: number;
  pmTmr: number;
  reset: number;
  /** 32-bit PM timer (default PM_TIMER_32BIT) */
  timer32?: boolean;
}

export const DEFAULT_PM_PORTS: PmPorts = {
  pm1aEvt: PM1A_EVT, pm1aCnt: PM1A_CNT, pmTmr: PM_TMR, reset: RESET_PORT, timer32: PM_TIMER_32BIT,
};

/**
 * With firmware, the PM blocks sit where the PIIX4 PM function's PMBA puts
 * them (PIIX4 layout: PM1 status/enable at +0, control at +4, timer at
 * +8); OVMF and SeaBIOS both program 0xB000, which the FADT then says.
 */
export const PIIX4_PM_BASE = 0xb000;
export function pmPortsAt(base: number): PmPorts {
  return { ...DEFAULT_PM_PORTS, pm1aEvt: base, pm1aCnt: base + 4, pmTmr: base + 8 };
}

/**
 * Where a VM's PM blocks are, for the FADT (direct boot's tables, or
 * firmware's through fw_cfg) and the PM device alike: with firmware
 * (`-l bootrom`), at the PIIX4 PM function's PMBA as the firmware programs
 * it; else at the fixed ports.
 */
export function pmPortsFor(firmware: boolean): PmPorts {
  return firmware ? pmPortsAt(PIIX4_PM_BASE) : DEFAULT_PM_PORTS;
}
