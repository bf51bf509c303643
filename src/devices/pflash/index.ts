/**
 * The firmware flash: a STUB that the pflash branch replaces (its CFI
 * flash device, with the variable store from VARFILE below the code).
 * Here only the code image is mapped, read-only, so that it ends at 4 GiB;
 * the variable store is not mapped.
 */
import { readFileSync } from 'node:fs';
import { createGuestRam } from '../../memory/ram.js';
import { FIRMWARE_WINDOW_END } from '../../x86/layout.js';
import type { PlatformContext, PlatformModel } from '../platform.js';

/**
 * Map the firmware: `romPath` (checked by the caller: a regular file, a
 * whole number of pages, fitting the window) ends at 4 GiB; `varsPath`, a
 * writable copy of the variable store, or undefined (variables in memory).
 */
export function createFirmwareFlash(ctx: PlatformContext, romPath: string, varsPath: string | undefined): PlatformModel {
  void varsPath;
  const rom = readFileSync(romPath);
  const mem = createGuestRam(rom.length, 'tshyve-bootrom', { hugePages: false });
  mem.bytes.set(rom);
  const base = FIRMWARE_WINDOW_END - rom.length;
  ctx.mapMemory(base, rom.length, mem.hostAddr, { readOnly: true });
  return {
    saveState: (w) => { w.u32('codeSize', rom.length); },
    restoreState: (r) => {
      const size = r.u32('codeSize');
      if (size !== rom.length) r.fail('codeSize', `the snapshot's firmware is ${size} bytes, ${romPath} is ${rom.length}`);
    },
  };
}
