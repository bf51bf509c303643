/**
 * The block layer's one interface: what a disk device model (virtio-blk,
 * later NVMe and AHCI) needs from storage, whatever holds the image (a raw
 * file or block device today, an image format such as qcow2 later, each a
 * BlockBackend of its own). Offsets and lengths are bytes of the disk as
 * the guest sees it; a backend checks nothing the device must check (ranges
 * against the size are the device's job) but never lets a host failure
 * escape as anything other than a BlockIoError.
 */
import { TshyveError } from '../../errors.js';
import type { IoVecs } from '../../memory/iovec.js';

/** A host I/O failure: reported to the guest as IOERR, never fatal. */
export class BlockIoError extends TshyveError {
  constructor(readonly op: string, readonly errnoCode: string, detail?: string) {
    super('EBLKIO', `${op} failed: ${errnoCode}${detail ? ` (${detail})` : ''}`);
  }
}

/** Internal snapshots of an image format that keeps them (qcow2), by name. */
export interface BlockSnapshots {
  list(): string[];
  /** Throws BlockIoError (EEXIST) when the name is taken. */
  create(name: string): void;
  /** Make the image what it was when `name` was taken (ENOENT when there is none). */
  apply(name: string): void;
  delete(name: string): void;
}

/** A disk image as a device model uses it. Offsets and lengths are bytes. */
export interface BlockBackend {
  /** Size in bytes (fixed at open). */
  readonly size: number;
  readonly readonly: boolean;
  /** Sector sizes the host storage reports (block devices), if any. */
  readonly hostSectorSizes: { logical?: number; physical?: number };
  /** Fill `buf` from `offset` (all of it, or throw BlockIoError). */
  read(buf: Uint8Array, offset: number): void;
  /** Write all of `buf` at `offset` (or throw BlockIoError). */
  write(buf: Uint8Array, offset: number): void;
  /**
   * Optional: fill the pieces (host memory, e.g. guest pages), in order,
   * from `offset` in one vectored call (preadv); may change `iov`. Devices
   * use it when present and fall back to read() per piece otherwise.
   */
  readv?(iov: IoVecs, offset: number): void;
  /** Optional: write the pieces, in order, at `offset` in one vectored call (pwritev); may change `iov`. */
  writev?(iov: IoVecs, offset: number): void;
  /** Internal snapshots, when the format has them (qcow2); the image must be writable to change them. */
  readonly snapshots?: BlockSnapshots;
  /** Make written data durable (fdatasync). */
  flush(): void;
  /** Deallocate a range; returns false when the host cannot (a no-op then, which discard allows). */
  discard(offset: number, len: number): boolean;
  /** Make a range read as zeros, deallocating it when `unmap` and possible. */
  writeZeroes(offset: number, len: number, unmap: boolean): void;
  close(): void;
}
