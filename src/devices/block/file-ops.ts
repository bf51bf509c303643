/**
 * The few host calls the block backend needs that node:fs lacks:
 * fallocate (hole punching, zero ranges), ioctl on block devices (size,
 * sector sizes) and posix_fadvise, over the project's one FFI layer.
 */
import { libc, errno } from '../../host/libc.js';

const fallocateFn = libc.fallocate;
const ioctlPtr = libc.ioctlPtr;
const fadviseFn = libc.posixFadvise;

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** _IOR(0x12, 114, size_t) */
const BLKGETSIZE64 = 0x80081272;
/** _IO(0x12, 104): logical sector size (int) */
const BLKSSZGET = 0x1268;
/** _IO(0x12, 123): physical sector size (unsigned int) */
const BLKPBSZGET = 0x127b;

export const POSIX_FADV_DONTNEED = 4;

export const EINTR = 4;
export const EOPNOTSUPP = 95;
export const ENOSYS = 38;
export const EINVAL = 22;

/** fallocate(2); returns 0 or the errno (retries EINTR). */
export function fallocate(fd: number, mode: number, offset: number, len: number): number {
  for (;;) {
    if (fallocateFn(fd, mode, offset, len) === 0) return 0;
    const e = errno();
    if (e !== EINTR) return e || EINVAL;
  }
}

/** posix_fadvise(2); returns 0 or an errno (it reports errors by return value). */
export function fadvise(fd: number, offset: number, len: number, advice: number): number {
  return fadviseFn(fd, offset, len, advice);
}

/** Size in bytes of a block device, or undefined when the ioctl fails. */
export function blockDeviceSize(fd: number): number | undefined {
  const b = Buffer.alloc(8);
  if (ioctlPtr(fd, BLKGETSIZE64, b) !== 0) return undefined;
  const v = b.readBigUInt64LE(0);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(v);
}

/** Logical and physical sector sizes of a block device (undefined when unknown). */
export function blockDeviceSectorSizes(fd: number): { logical?: number; physical?: number } {
  const out: { logical?: number; physical?: number } = {};
  const b = Buffer.alloc(8);
  if (ioctlPtr(fd, BLKSSZGET, b) === 0) out.logical = b.readInt32LE(0);
  b.fill(0);
  if (ioctlPtr(fd, BLKPBSZGET, b) === 0) out.physical = b.readUInt32LE(0);
  return out;
}
