/**
 * The firmware flash of `-l bootrom,ROMFILE[,VARFILE]`, laid out as QEMU's
 * pc machines give it to OVMF: the code image (ROMFILE) ends at 4 GiB and
 * the variable store sits right below it, each on a KVM memory slot of its
 * own so that the guest reads both at memory speed.
 *
 * - CODE is a read-only slot: the guest's writes exit as MMIO and are dropped.
 * - VARS is a CFI flash (cfi01.ts). In read-array mode it is a read-only slot
 *   over the store's host buffer and only writes exit; a command that leaves
 *   read-array mode removes the slot, so reads exit and return status, and
 *   going back to read-array mode maps it again. Its writes are not posted
 *   (Bus.register): the vCPU goes on only once the slot has changed.
 * - With VARFILE the store is that file (read at start, changes written back
 *   with pwrite and fdatasync when an erase completes and when the flash goes
 *   back to read-array mode); without it the store lives in memory for the
 *   run, initialised from the VARS template beside the ROM (OVMF_CODE*.fd ->
 *   OVMF_VARS*.fd) or, lacking one, erased (OVMF formats an erased store).
 *
 * OVMF builds its flash device as one power-of-two firmware volume (1, 2 or
 * 4 MiB), CODE its top part and VARS the rest: the VARS size a ROM needs is
 * the next power of two minus the ROM's size. A ROM whose size is a power of
 * two is a whole volume (OVMF.fd, with the variables inside): it takes no
 * VARFILE, and OVMF finds its store read-only and keeps variables in memory.
 */
import { closeSync, fdatasyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import type { Bus, BusDevice } from '../../bus/bus.js';
import { createGuestRam, type RamMapping } from '../../memory/ram.js';
import { libc } from '../../host/libc.js';
import { UserError } from '../../errors.js';
import { log } from '../../log.js';
import { FIRMWARE_WINDOW_END, FIRMWARE_WINDOW_SIZE } from '../../x86/layout.js';
import type { PlatformContext, PlatformModel } from '../platform.js';
import type { StateReader, StateWriter } from '../../snapshot/state.js';
import { SnapshotError } from '../../snapshot/state.js';
import { Cfi01Flash, Mode, Pending } from './cfi01.js';

/** OVMF's erase block (PcdOvmfFirmwareBlockSize), QEMU's sector length. */
export const FLASH_BLOCK_SIZE = 0x1000;

/** Where the flash gets its memory slots: the VM's (PlatformContext.mapMemory). */
export type MapMemory = PlatformContext['mapMemory'];

/**
 * The files were checked before (devices/firmware.ts: regular, whole pages,
 * within the firmware window; VARFILE writable and of the size checkVarsSize asks).
 */
export interface FirmwareFlashOptions {
  romPath: string;
  varsPath?: string | undefined;
  /** The VM's memory slots: CODE takes one, VARS one while in read-array mode. */
  map: MapMemory;
  /** The MMIO bus. */
  bus: Bus;
  /** A guest's misuse of the flash (rate-limited by the caller); default: a warning. */
  guestError?: (dev: string, msg: string) => void;
}

/** The flash of a VM: the platform device `bootrom` (devices/firmware.ts) under the device contract. */
export interface FirmwareFlash extends PlatformModel {
  readonly codeBase: number;
  readonly codeSize: number;
  readonly varsBase: number;
  /** 0: the ROM is a whole firmware volume and there is no VARS flash. */
  readonly varsSize: number;
  /** The variable store (read-array contents). */
  readonly vars: Uint8Array;
  /** Make the variable store's changes durable in VARFILE (nothing without one). */
  flush(): void;
  /** Flush, remove the slots and bus ranges, free the buffers (at the VM's end). */
  destroy(): void;
}

/** The VARS size a ROM of `romSize` bytes needs (see the top of this file). */
export function varsSizeFor(romSize: number): number {
  return 2 ** Math.ceil(Math.log2(romSize)) - romSize;
}

/**
 * The flash's size rule for VARFILE beside a ROM of `romSize` bytes (the
 * ROM itself within the firmware window): throws UserError with one line.
 */
export function checkVarsSize(romPath: string, romSize: number, varsPath: string, varsSize: number): void {
  const need = varsSizeFor(romSize);
  if (need === 0) throw new UserError(`bootrom ${romPath} holds its own variable store (its size, ${romSize} bytes, is a power of two): it takes no VARFILE`);
  if (varsSize !== need) throw new UserError(`VARFILE ${varsPath} is ${varsSize} bytes, bootrom ${romPath} needs a ${need}-byte variable store (the VARS image built with that ROM)`);
}

export async function createFirmwareFlash(opts: FirmwareFlashOptions): Promise<FirmwareFlash> {
  let rom: Buffer;
  try { rom = await readFile(opts.romPath); } catch (e) { throw new UserError(`cannot read bootrom ${opts.romPath}: ${(e as Error).message}`); }
  // Checked files may still change before they are read: the layout must hold anyway.
  const size = varsSizeFor(rom.length);
  if (rom.length === 0 || rom.length % FLASH_BLOCK_SIZE !== 0 || rom.length + size > FIRMWARE_WINDOW_SIZE) throw new UserError(`bootrom ${opts.romPath} changed while it was read`);
  return new Flash(opts, rom, openStore(opts, size));
}

interface Store { bytes: Buffer; fd: number | undefined; path: string | undefined }

/** VARFILE opened for writing and read, or the in-memory store. */
function openStore(opts: FirmwareFlashOptions, size: number): Store {
  const path = opts.varsPath;
  if (path !== undefined) {
    let fd: number | undefined;
    try {
      fd = openSync(path, 'r+');
      const bytes = readFileSync(fd);
      if (bytes.length !== size) throw new Error('it changed size');
      return { bytes, fd, path };
    } catch (e) {
      if (fd !== undefined) closeSync(fd);
      throw new UserError(`cannot read VARFILE ${path}: ${(e as Error).message}`);
    }
  }
  const bytes = Buffer.alloc(size, 0xff);
  const template = varsTemplate(opts.romPath, size);
  if (template) bytes.set(template);
  return { bytes, fd: undefined, path: undefined };
}

/** The VARS image beside the ROM (OVMF_CODE_4M.fd -> OVMF_VARS_4M.fd) when it has the size the ROM needs. */
function varsTemplate(romPath: string, size: number): Buffer | undefined {
  const name = basename(romPath);
  if (size === 0 || !name.includes('CODE')) return undefined;
  const candidates = [name.replace('CODE', 'VARS'), name.replace(/CODE(_[0-9]+M)?.*$/, 'VARS$1.fd')];
  for (const c of candidates) {
    const p = join(dirname(romPath), c);
    try {
      const b = readFileSync(p);
      if (b.length === size) return b;
    } catch { /* absent or unreadable: try the next, or start erased */ }
  }
  return undefined;
}

/** A host buffer KVM can map, holding `data`. */
function hostBuffer(data: Uint8Array): RamMapping {
  const m = createGuestRam(data.length, { hugePages: false });
  m.bytes.set(data);
  return m;
}

/** The CODE image's bus device: its slot serves reads; writes exit here and are dropped. */
class RomWrites implements BusDevice {
  private warned = false;
  constructor(private readonly bytes: Uint8Array, private readonly report: (msg: string) => void) {}
  read(offset: number, size: number): number {
    let v = 0;
    for (let i = 0; i < size && i < 4; i++) v |= (this.bytes[offset + i] ?? 0xff) << (8 * i);
    return v >>> 0;
  }
  write(offset: number): void {
    if (this.warned) return;
    this.warned = true;
    this.report(`write to the read-only firmware code at offset 0x${offset.toString(16)} ignored (reported once)`);
  }
}

class Flash implements FirmwareFlash {
  readonly codeBase: number;
  readonly codeSize: number;
  readonly varsBase: number;
  readonly varsSize: number;
  private readonly code: RamMapping;
  private readonly varsMem: RamMapping | undefined;
  private readonly romDigest: string;
  private readonly cfi: Cfi01Flash | undefined;
  private readonly romDev: RomWrites;
  private codeSlot: { unmap(): void } | undefined;
  /** VARS's slot, while in read-array mode */
  private varsSlot: { unmap(): void } | undefined;
  /** bytes of the store changed and not yet in VARFILE: [lo, hi) */
  private dirtyLo = Infinity;
  private dirtyHi = 0;
  private closed = false;

  constructor(private readonly opts: FirmwareFlashOptions, rom: Buffer, private readonly store: Store) {
    const report = (msg: string) => (opts.guestError ?? ((d, m) => log('warn', `${d}: ${m}`)))('pflash', msg);
    this.codeSize = rom.length;
    this.codeBase = FIRMWARE_WINDOW_END - rom.length;
    this.varsSize = store.bytes.length;
    this.varsBase = this.codeBase - this.varsSize;
    this.romDigest = createHash('sha256').update(rom).digest('hex');
    this.code = hostBuffer(rom);
    this.romDev = new RomWrites(this.code.bytes, report);
    try {
      this.codeSlot = opts.map(this.codeBase, this.codeSize, this.code.hostAddr, { readOnly: true });
      opts.bus.register(this.codeBase, this.codeSize, this.romDev, 'pflash-code');
      if (this.varsSize > 0) {
        this.varsMem = hostBuffer(store.bytes);
        this.cfi = new Cfi01Flash(this.varsMem.bytes, FLASH_BLOCK_SIZE, {
          arrayMode: (on) => this.mapVars(on),
          changed: (off, len) => { this.dirtyLo = Math.min(this.dirtyLo, off); this.dirtyHi = Math.max(this.dirtyHi, off + len); },
          settle: () => this.flush(),
          guestError: report,
        });
        opts.bus.register(this.varsBase, this.varsSize, this.cfi, 'pflash-vars', { posted: false });
        this.mapVars(true);
      }
    } catch (e) {
      this.destroy();
      throw e;
    }
  }

  get vars(): Uint8Array { return this.varsMem?.bytes ?? new Uint8Array(0); }

  /** Map the store as read-only memory (read-array mode) or take it away (reads exit to the device). */
  private mapVars(on: boolean): void {
    if (on === (this.varsSlot !== undefined) || !this.varsMem) return;
    if (on) this.varsSlot = this.opts.map(this.varsBase, this.varsSize, this.varsMem.hostAddr, { readOnly: true });
    else { this.varsSlot!.unmap(); this.varsSlot = undefined; }
  }

  flush(): void {
    const fd = this.store.fd;
    if (this.dirtyHi <= this.dirtyLo) return;
    const lo = this.dirtyLo, hi = this.dirtyHi;
    this.dirtyLo = Infinity; this.dirtyHi = 0;
    if (fd === undefined || !this.varsMem) return;
    try {
      for (let off = lo; off < hi;) off += writeSync(fd, this.varsMem.bytes, off, hi - off, off);
      fdatasyncSync(fd);
    } catch (e) {
      log('warn', `pflash: cannot write the variable store to ${this.store.path}: ${(e as Error).message}`);
    }
  }

  saveState(w: StateWriter): void {
    this.flush();
    const s = this.cfi?.state ?? { mode: Mode.ARRAY, pending: Pending.NONE, status: 0x80 };
    w.str('romSha256', this.romDigest).u32('varsSize', this.varsSize)
      .u8('mode', s.mode).u8('pending', s.pending).u8('status', s.status);
    // The store travels with the snapshot even when it is a file, as QEMU's
    // migration does: the guest's view of its variables must match its RAM.
    if (this.varsMem) w.b64('vars', this.varsMem.bytes);
  }

  restoreState(r: StateReader): void {
    const digest = r.str('romSha256', 64);
    if (digest !== this.romDigest) throw new SnapshotError(`the snapshot was taken with another firmware image than ${this.opts.romPath}`, 'EMISMATCH');
    const size = r.u32('varsSize');
    if (size !== this.varsSize) r.fail('varsSize', `${size} bytes, this VM's variable store has ${this.varsSize}`);
    const mode = r.u8('mode', Mode.CFI) as Mode, pending = r.u8('pending', Pending.LOCK) as Pending, status = r.u8('status');
    if (!this.cfi || !this.varsMem) return;
    const vars = r.b64('vars', this.varsSize);
    this.varsMem.bytes.set(vars);
    this.dirtyLo = 0; this.dirtyHi = this.varsSize;
    this.flush();
    this.cfi.setState({ mode, pending, status });
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.flush();
    this.opts.bus.unregister(this.romDev);
    if (this.cfi) this.opts.bus.unregister(this.cfi);
    for (const slot of [this.codeSlot, this.varsSlot]) {
      try { slot?.unmap(); } catch { /* the VM is going away */ }
    }
    this.codeSlot = this.varsSlot = undefined;
    for (const m of [this.code, this.varsMem]) {
      if (!m) continue;
      m.close();
      libc.munmap(m.host, m.size);
    }
    if (this.store.fd !== undefined) closeSync(this.store.fd);
  }
}
