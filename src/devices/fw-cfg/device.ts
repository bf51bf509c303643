/**
 * QEMU's firmware configuration interface (docs/specs/fw_cfg.rst in QEMU),
 * as OVMF's QemuFwCfgLib uses it on x86: a 16-bit selector written at
 * 0x510, data read a byte at a time at 0x511 (any byte read of the pair
 * reads data, any 16-bit write selects, as QEMU's combined register), and
 * the DMA address register at 0x514 (big-endian; writing its low half
 * starts a transfer described by a FWCfgDmaAccess in guest RAM). Every item
 * is read-only: a DMA write sets the error bit. Items are built once, from
 * the VM's config (items.ts); the guest only moves the selector and offset.
 */
import type { BusDevice } from '../../bus/bus.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { StateReader, StateWriter } from '../../snapshot/state.js';

export const FW_CFG_PORT = 0x510;
export const FW_CFG_PORT_LEN = 2;
export const FW_CFG_DMA_PORT = 0x514;
export const FW_CFG_DMA_PORT_LEN = 8;

/** Selector keys (QEMU's include/standard-headers/linux/qemu_fw_cfg.h). */
export const KEY = {
  SIGNATURE: 0x00, ID: 0x01, UUID: 0x02, RAM_SIZE: 0x03, NB_CPUS: 0x05, KERNEL_SIZE: 0x08,
  INITRD_SIZE: 0x0b, BOOT_MENU: 0x0e, MAX_CPUS: 0x0f, KERNEL_DATA: 0x11, INITRD_DATA: 0x12,
  CMDLINE_SIZE: 0x14, CMDLINE_DATA: 0x15, SETUP_SIZE: 0x17, SETUP_DATA: 0x18, FILE_DIR: 0x19, FILE_FIRST: 0x20,
} as const;
/** Bit 14 of a selector asked for writes before QEMU 2.4; lookups ignore it. */
const WRITE_CHANNEL = 0x4000;
const ARCH_LOCAL = 0x8000;
export const INVALID_SELECTOR = 0xffff;

/** FW_CFG_ID: the traditional interface and DMA. */
export const ID_TRADITIONAL = 1;
export const ID_DMA = 2;

export const DMA_CTL = { ERROR: 0x01, READ: 0x02, SKIP: 0x04, SELECT: 0x08, WRITE: 0x10 } as const;
/** "QEMU CFG": what reading the DMA register returns, byte by byte. */
export const DMA_SIGNATURE = Buffer.from('QEMU CFG', 'latin1');
/** FWCfgDmaAccess: control (be32), length (be32), address (be64). */
const DMA_ACCESS_SIZE = 16;

/** A file directory entry's name field: 55 characters and a NUL. */
export const FILE_NAME_MAX = 55;
export const FILE_ENTRY_SIZE = 64;
/** File keys run from FILE_FIRST to below the write channel bit. */
const MAX_FILES = WRITE_CHANNEL - KEY.FILE_FIRST;

export interface FwCfgFile { readonly name: string; readonly data: Uint8Array }

/** The items a fw_cfg device serves: numbered ones (`key`) and named files. */
export interface FwCfgItems {
  readonly keyed: ReadonlyMap<number, Uint8Array>;
  readonly files: readonly FwCfgFile[];
}

/** The file directory (FWCfgFiles: a big-endian count, then 64-byte entries) of `files` numbered from FILE_FIRST. */
export function fileDirectory(files: readonly FwCfgFile[]): Uint8Array {
  const dir = Buffer.alloc(4 + FILE_ENTRY_SIZE * files.length);
  dir.writeUInt32BE(files.length, 0);
  files.forEach((f, i) => {
    const at = 4 + FILE_ENTRY_SIZE * i;
    dir.writeUInt32BE(f.data.length, at);
    dir.writeUInt16BE(KEY.FILE_FIRST + i, at + 4);
    dir.write(f.name, at + 8, FILE_NAME_MAX, 'latin1');
  });
  return dir;
}

export class FwCfg {
  private readonly items = new Map<number, Uint8Array>();
  private selector = 0;
  private offset = 0;
  /** the DMA register's high half, written first when the access structure lies above 4 GiB */
  private dmaHigh = 0;

  constructor(private readonly mem: GuestMemory, items: FwCfgItems) {
    for (const [k, data] of items.keyed) {
      if (k >= KEY.FILE_FIRST && (k & ~ARCH_LOCAL) === k) throw new Error(`fw_cfg key 0x${k.toString(16)} is a file key`);
      this.items.set(k, data);
    }
    if (items.files.length > MAX_FILES) throw new Error('too many fw_cfg files');
    const names = new Set<string>();
    items.files.forEach((f, i) => {
      if (f.name.length === 0 || f.name.length > FILE_NAME_MAX || !/^[\x20-\x7e]+$/.test(f.name)) throw new Error(`bad fw_cfg file name '${f.name}'`);
      if (names.has(f.name)) throw new Error(`fw_cfg file ${f.name} given twice`);
      names.add(f.name);
      this.items.set(KEY.FILE_FIRST + i, f.data);
    });
    this.items.set(KEY.FILE_DIR, fileDirectory(items.files));
  }

  /** The item a selector names: bit 15 picks the architecture's keys, bit 14 is ignored. */
  private item(selector: number): Uint8Array | undefined {
    return this.items.get(selector & ~WRITE_CHANNEL);
  }

  select(selector: number): void {
    this.selector = selector & 0xffff;
    this.offset = 0;
  }

  /** The next data byte of the selected item; 0 past its end (or with no item). */
  readByte(): number {
    const d = this.item(this.selector);
    if (!d || this.offset >= d.length) return 0;
    return d[this.offset++]!;
  }

  /** 0x510-0x511: byte reads read data, 16-bit writes select; data writes are ignored (QEMU 2.4 and later). */
  readonly port: BusDevice = {
    read: (_offset, size) => (size === 1 ? this.readByte() : 0),
    write: (_offset, size, value) => { if (size === 2) this.select(value); },
  };

  /** 0x514-0x51b: the DMA address register, big-endian: 32-bit writes of the high half at 0, the low half at 4 (which starts the transfer). */
  readonly dmaPort: BusDevice = {
    read: (offset, size) => {
      let v = 0;
      for (let i = size - 1; i >= 0; i--) v = v * 256 + (DMA_SIGNATURE[offset + i] ?? 0);
      return v;
    },
    write: (offset, size, value) => {
      if (size !== 4) return;
      const be = swap32(value);
      if (offset === 0) this.dmaHigh = be;
      else if (offset === 4) {
        const high = this.dmaHigh;
        this.dmaHigh = 0;
        this.dma(high * 2 ** 32 + be);
      }
    },
  };

  /** One DMA operation (QEMU's fw_cfg_dma_transfer): its result goes to the control field. */
  dma(access: number): void {
    if (!this.mem.contains(access, DMA_ACCESS_SIZE)) return; // nowhere to report to
    const raw = Buffer.from(this.mem.read(access, DMA_ACCESS_SIZE));
    let control = raw.readUInt32BE(0);
    let length = raw.readUInt32BE(4);
    let address = Number(raw.readBigUInt64BE(8));
    if (control & DMA_CTL.SELECT) this.select(control >>> 16);
    const read = (control & DMA_CTL.READ) !== 0;
    const write = !read && (control & DMA_CTL.WRITE) !== 0;
    if (!read && !write && !(control & DMA_CTL.SKIP)) length = 0;
    control = 0;
    const item = this.item(this.selector);
    while (length > 0 && !(control & DMA_CTL.ERROR)) {
      let len: number;
      if (!item || this.offset >= item.length) {
        len = length;
        if (read && !this.fill(address, len)) control |= DMA_CTL.ERROR;
        if (write) control |= DMA_CTL.ERROR;
      } else {
        len = Math.min(length, item.length - this.offset);
        if (read && !this.copy(address, item.subarray(this.offset, this.offset + len))) control |= DMA_CTL.ERROR;
        if (write) control |= DMA_CTL.ERROR; // every item is read-only
        this.offset += len;
      }
      address += len;
      length -= len;
    }
    const status = Buffer.alloc(4);
    status.writeUInt32BE(control >>> 0);
    this.copy(access, status);
  }

  private copy(gpa: number, data: Uint8Array): boolean {
    if (!this.mem.contains(gpa, data.length)) return false;
    this.mem.write(gpa, data);
    return true;
  }

  private fill(gpa: number, len: number): boolean {
    if (!this.mem.contains(gpa, len)) return false;
    this.mem.fill(gpa, len, 0);
    return true;
  }

  saveState(w: StateWriter): void {
    w.u16('selector', this.selector).u32('offset', this.offset).u32('dmaHigh', this.dmaHigh);
  }

  restoreState(r: StateReader): void {
    const selector = r.u16('selector');
    const item = this.item(selector);
    const offset = r.u32('offset', item?.length ?? 0);
    const dmaHigh = r.u32('dmaHigh');
    this.selector = selector; this.offset = offset; this.dmaHigh = dmaHigh;
  }
}

function swap32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}
