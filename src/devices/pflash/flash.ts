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
import { closeSync, fdatasyncSync, fstatSync, openSync, readFileSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import type { Bus, BusDevice } from '../../bus/bus.js';
import { MEM_READONLY } from '../../kvm/abi.js';
import { createGuestRam, type RamMapping } from '../../memory/ram.js';
import { libc } from '../../host/libc.js';
import { UserError } from '../../errors.js';
import { log } from '../../log.js';
import type { PersistentDevice } from '../../snapshot/persist.js';
import type { StateReader, StateWriter } from '../../snapshot/state.js';
import { SnapshotError } from '../../snapshot/state.js';
import { Cfi01Flash, Mode, Pending } from './cfi01.js';

/** The flash ends at 4 GiB; like QEMU's pc machines, it may take at most the 8 MiB below. */
export const FLASH_END = 0x1_0000_0000;
export const FLASH_MAX_BYTES = 8 * 1024 * 1024;
/** OVMF's erase block (PcdOvmfFirmwareBlockSize), QEMU's sector length. */
export const FLASH_BLOCK_SIZE = 0x1000;

/** The KVM memory-slot call of the VM (kvm/kvm.ts's Vm): size 0 deletes a slot. */
export interface FlashSlotApi {
  setUserMemoryRegion(slot: number, gpa: number, size: number, hostAddr: bigint, flags?: number): void;
}

export interface FirmwareFlashOptions {
  romPath: string;
  varsPath?: string;
  /** The VM's memory slots: the flash takes `firstSlot` (CODE) and `firstSlot + 1` (VARS), past guest RAM's. */
  mem: { vm: FlashSlotApi; firstSlot: number };
  /** The MMIO bus. */
  bus: Bus;
  /** A guest's misuse of the flash (rate-limited by the caller); default: a warning. */
  guestError?: (dev: string, msg: string) => void;
}

/** The flash of a VM: under the device contract (id `pflash`) for snapshots. */
export interface FirmwareFlash extends PersistentDevice {
  readonly codeBase: number;
  readonly codeSize: number;
  readonly varsBase: number;
  /** 0: the ROM is a whole firmware volume and there is no VARS flash. */
  readonly varsSize: number;
  /** The variable store (read-array contents). */
  readonly vars: Uint8Array;
  /** Make the variable store's changes durable in VARFILE (nothing without one). */
  flush(): void;
  /** Flush, remove the slots and bus ranges, free the buffers. */
  close(): void;
}

/** The VARS size a ROM of `romSize` bytes needs (see the top of this file). */
export function varsSizeFor(romSize: number): number {
  return 2 ** Math.ceil(Math.log2(romSize)) - romSize;
}

export async function createFirmwareFlash(opts: FirmwareFlashOptions): Promise<FirmwareFlash> {
  const rom = readRom(opts.romPath);
  // At most 8 MiB, so the power of two it belongs to (CODE and VARS) fits the window too.
  const store = openStore(opts, rom.length, varsSizeFor(rom.length));
  return new Flash(opts, rom, store);
}

function readRom(path: string): Buffer {
  let rom: Buffer;
  try {
    const fd = openSync(path, 'r');
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new UserError(`bootrom ${path} is not a regular file`);
      if (st.size === 0 || st.size > FLASH_MAX_BYTES) throw new UserError(`bootrom ${path} is ${st.size} bytes: a firmware image is 4 KiB to ${FLASH_MAX_BYTES / 2 ** 20} MiB`);
      rom = readFileSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`cannot read bootrom ${path}: ${(e as Error).message}`);
  }
  if (rom.length % FLASH_BLOCK_SIZE !== 0) throw new UserError(`bootrom ${path} is ${rom.length} bytes, not a whole number of 4 KiB blocks: not a firmware image`);
  return rom;
}

interface Store { bytes: Buffer; fd: number | undefined; path: string | undefined }

/** VARFILE opened for writing and read, or the in-memory store. */
function openStore(opts: FirmwareFlashOptions, romSize: number, size: number): Store {
  const path = opts.varsPath;
  if (path !== undefined) {
    if (size === 0) throw new UserError(`bootrom ${opts.romPath} holds its own variable store (its size, ${romSize} bytes, is a power of two): it takes no VARFILE`);
    let fd: number;
    try {
      fd = openSync(path, 'r+');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EACCES' || code === 'EROFS' || code === 'EPERM') throw new UserError(`VARFILE ${path} is not writable: give the VM a writable copy of the firmware's VARS image`);
      throw new UserError(`cannot open VARFILE ${path}: ${(e as Error).message}`);
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new UserError(`VARFILE ${path} is not a regular file`);
      if (st.size !== size) throw new UserError(`VARFILE ${path} is ${st.size} bytes, bootrom ${opts.romPath} needs a ${size}-byte variable store (the VARS image built with that ROM)`);
      return { bytes: readFileSync(fd), fd, path };
    } catch (e) {
      closeSync(fd);
      if (e instanceof UserError) throw e;
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
function hostBuffer(data: Uint8Array, name: string): RamMapping {
  const m = createGuestRam(data.length, name, { hugePages: false });
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
  readonly id = 'pflash';
  readonly kind = 'pflash-cfi01';
  readonly codeBase: number;
  readonly codeSize: number;
  readonly varsBase: number;
  readonly varsSize: number;
  private readonly code: RamMapping;
  private readonly varsMem: RamMapping | undefined;
  private readonly romDigest: string;
  private readonly cfi: Cfi01Flash | undefined;
  private readonly romDev: RomWrites;
  private readonly vm: FlashSlotApi;
  private readonly codeSlot: number;
  private readonly varsSlot: number;
  private varsMapped = false;
  /** bytes of the store changed and not yet in VARFILE: [lo, hi) */
  private dirtyLo = Infinity;
  private dirtyHi = 0;
  private closed = false;

  constructor(private readonly opts: FirmwareFlashOptions, rom: Buffer, private readonly store: Store) {
    const report = (msg: string) => (opts.guestError ?? ((d, m) => log('warn', `${d}: ${m}`)))('pflash', msg);
    this.vm = opts.mem.vm;
    this.codeSlot = opts.mem.firstSlot;
    this.varsSlot = opts.mem.firstSlot + 1;
    this.codeSize = rom.length;
    this.codeBase = FLASH_END - rom.length;
    this.varsSize = store.bytes.length;
    this.varsBase = this.codeBase - this.varsSize;
    this.romDigest = createHash('sha256').update(rom).digest('hex');
    this.code = hostBuffer(rom, 'tshyve-pflash-code');
    this.romDev = new RomWrites(this.code.bytes, report);
    try {
      this.vm.setUserMemoryRegion(this.codeSlot, this.codeBase, this.codeSize, this.code.hostAddr, MEM_READONLY);
      opts.bus.register(this.codeBase, this.codeSize, this.romDev, 'pflash-code');
      if (this.varsSize > 0) {
        this.varsMem = hostBuffer(store.bytes, 'tshyve-pflash-vars');
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
      this.close();
      throw e;
    }
  }

  get vars(): Uint8Array { return this.varsMem?.bytes ?? new Uint8Array(0); }

  /** Map the store as read-only memory (read-array mode) or take it away (reads exit to the device). */
  private mapVars(on: boolean): void {
    if (on === this.varsMapped || !this.varsMem) return;
    this.vm.setUserMemoryRegion(this.varsSlot, this.varsBase, on ? this.varsSize : 0, this.varsMem.hostAddr, MEM_READONLY);
    this.varsMapped = on;
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

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.flush();
    this.opts.bus.unregister(this.romDev);
    if (this.cfi) this.opts.bus.unregister(this.cfi);
    for (const [slot, gpa, m, mapped] of [[this.codeSlot, this.codeBase, this.code, true], [this.varsSlot, this.varsBase, this.varsMem, this.varsMapped]] as const) {
      if (!m) continue;
      if (mapped) {
        try { this.vm.setUserMemoryRegion(slot, gpa, 0, m.hostAddr, MEM_READONLY); } catch { /* the VM is going away */ }
      }
      libc.munmap(m.host, m.size);
      libc.close(m.memfd);
    }
    if (this.store.fd !== undefined) closeSync(this.store.fd);
  }
}
