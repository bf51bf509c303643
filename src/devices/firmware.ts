/**
 * `-l bootrom,ROMFILE[,VARFILE]` (bhyve's lpc.bootrom and lpc.bootvars):
 * the firmware image, checked here as bhyve's bootrom.c does (a regular
 * file of whole pages that fits the window; the variable store a writable
 * file of the size the flash needs), then the flash device (devices/pflash)
 * that maps it so that it ends at 4 GiB, with the variable store below.
 */
import { openSync, closeSync } from 'node:fs';
import { UserError } from '../errors.js';
import { statUserFile } from '../config/user-file.js';
import { FIRMWARE_WINDOW_SIZE, PAGE_SIZE } from '../x86/layout.js';
import { registerPlatformDevice } from './platform.js';
import { checkVarsSize, createFirmwareFlash } from './pflash/flash.js';

const MiB = 1024 * 1024;

function wholePages(path: string, what: string): number {
  const size = statUserFile(path, what).size;
  if (size === 0 || size % PAGE_SIZE !== 0) throw new UserError(`${what} ${path} is ${size} bytes, not a whole number of 4 KiB pages: not a firmware image`);
  return size;
}

/** The ROM and variable files as bhyve accepts them, sized as the flash needs; throws UserError with one line. */
export function checkFirmwareFiles(rom: string, vars: string | undefined): void {
  const romSize = wholePages(rom, 'bootrom');
  if (romSize > FIRMWARE_WINDOW_SIZE) throw new UserError(`bootrom ${rom} is ${romSize} bytes, more than the ${FIRMWARE_WINDOW_SIZE / MiB} MiB firmware window`);
  if (vars === undefined) return;
  const varsSize = statUserFile(vars, 'bootrom variable file').size;
  try {
    closeSync(openSync(vars, 'r+'));
  } catch (e) {
    throw new UserError(`bootrom variable file ${vars} is not writable (${(e as NodeJS.ErrnoException).code ?? String(e)}): give a copy of the firmware's variable store of your own`);
  }
  // The flash's rule: ROM + VARS is a power of two, so it fits the window too.
  checkVarsSize(rom, romSize, vars, varsSize);
}

registerPlatformDevice({
  name: 'bootrom', kind: 'bootrom', node: 'lpc',
  hostPathKeys: ['bootrom', 'bootvars'],
  lpcConfig: (node, conf) => {
    const [rom, vars, ...rest] = (conf ?? '').split(',');
    if (!rom) throw new UserError('needs a firmware file (bootrom,ROMFILE[,VARFILE])');
    if (rest.length > 0 || vars === '') throw new UserError('takes ROMFILE[,VARFILE] only');
    node.set('bootrom', rom);
    if (vars !== undefined) node.set('bootvars', vars);
  },
  create: (ctx, node) => {
    const rom = node.get('bootrom');
    if (rom === undefined) return undefined;
    const vars = node.get('bootvars');
    checkFirmwareFiles(rom, vars);
    return createFirmwareFlash({ romPath: rom, varsPath: vars, map: ctx.mapMemory, bus: ctx.mmio, guestError: ctx.guestError });
  },
});
