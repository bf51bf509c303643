/**
 * The raw backend: a disk image that is a host file or block device, byte
 * for byte (bhyve's block_if, minus the worker threads): synchronous
 * pread/pwrite and preadv/pwritev at byte offsets, flush, discard and
 * write-zeroes.
 *
 * Opening errors (missing path, permission, not a file or block device)
 * are UserErrors naming the path. I/O errors (EIO, ENOSPC, a file that
 * shrank underneath us) are BlockIoErrors, which the device turns into
 * an I/O error status for the guest (VIRTIO_BLK_S_IOERR for virtio-blk).
 * Error lines start with the owning device's label (FileBackendOptions.label).
 *
 * bhyve's options: `ro` opens O_RDONLY; `direct` (and its alias `sync`)
 * opens O_SYNC as bhyve does; `nocache` is O_DIRECT in bhyve, but guest
 * buffers need not be sector aligned, so here it becomes
 * posix_fadvise(DONTNEED) over each range after I/O (page cache dropped).
 */
import * as fs from 'node:fs';
import { UserError } from '../../errors.js';
import { libc, errno } from '../../host/libc.js';
import type { IoVecs } from '../../memory/iovec.js';
import { BlockIoError, type BlockBackend } from './backend.js';
import {
  EOPNOTSUPP, ENOSYS, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, POSIX_FADV_DONTNEED,
  blockDeviceSectorSizes, blockDeviceSize, fadvise, fallocate,
} from './file-ops.js';

export interface FileBackendOptions {
  path: string;
  readonly?: boolean;
  /** bhyve `direct`/`sync`: O_SYNC. */
  direct?: boolean;
  /** bhyve `nocache`: drop the page cache for each range after I/O. */
  nocache?: boolean;
  /** The device that opens it, first on every error line (default 'disk'). */
  label?: string;
}

/** Largest single read/write syscall we issue. */
const IO_CHUNK = 1 << 30;
/** Zero buffer size for the write-zeroes fallback. */
const ZERO_CHUNK = 1 << 20;
/** Pieces per preadv/pwritev call (Linux's IOV_MAX is 1024). */
const IOV_BATCH = 1024;

function errCode(e: unknown): string {
  if (e && typeof e === 'object' && 'code' in e && typeof (e as { code: unknown }).code === 'string') {
    return (e as { code: string }).code;
  }
  return e instanceof Error ? e.message : String(e);
}

function errnoName(n: number): string {
  const known: Record<number, string> = {
    1: 'EPERM', 5: 'EIO', 9: 'EBADF', 13: 'EACCES', 22: 'EINVAL', 27: 'EFBIG', 28: 'ENOSPC',
    30: 'EROFS', 38: 'ENOSYS', 95: 'EOPNOTSUPP', 122: 'EDQUOT',
  };
  return known[n] ?? `errno ${n}`;
}

function openError(label: string, path: string, e: unknown, ro: boolean): UserError {
  const code = errCode(e);
  const why: Record<string, string> = {
    ENOENT: 'no such file or directory',
    EACCES: `permission denied${ro ? '' : ' (use ro for a read-only disk?)'}`,
    EPERM: 'operation not permitted',
    EROFS: 'read-only file system (use ro)',
    EISDIR: 'is a directory, not a file or block device',
    ENOTDIR: 'a path component is not a directory',
    ELOOP: 'too many symbolic links',
    EBUSY: 'device or resource busy',
    ENXIO: 'no such device',
    ETXTBSY: 'text file busy',
  };
  return new UserError(`${label}: cannot open '${path}': ${why[code] ?? code}`, 'EBLKOPEN');
}

export class FileBlockBackend implements BlockBackend {
  private fd: number;
  private discardWorks = true;
  private zeroRangeWorks = true;

  private constructor(
    fd: number,
    readonly path: string,
    readonly size: number,
    readonly readonly: boolean,
    readonly isBlockDevice: boolean,
    readonly hostSectorSizes: { logical?: number; physical?: number },
    private readonly nocache: boolean,
  ) {
    this.fd = fd;
  }

  /** Open `path`; throws UserError naming the path when it cannot be used. */
  static open(opts: FileBackendOptions): FileBlockBackend {
    const { path } = opts;
    const ro = opts.readonly ?? false;
    const label = opts.label ?? 'disk';
    if (typeof path !== 'string' || path === '') throw new UserError(`${label}: no backing path given`, 'EBLKOPEN');
    if (path.includes('\0')) throw new UserError(`${label}: invalid path '${path.replace(/\0/g, '\\0')}'`, 'EBLKOPEN');
    const c = fs.constants;
    const flags = (ro ? c.O_RDONLY : c.O_RDWR) | (opts.direct ? c.O_SYNC : 0); // libuv adds O_CLOEXEC
    let fd: number;
    try {
      fd = fs.openSync(path, flags);
    } catch (e) {
      throw openError(label, path, e, ro);
    }
    try {
      const st = fs.fstatSync(fd);
      let size: number;
      let sectors: { logical?: number; physical?: number } = {};
      if (st.isFile()) {
        size = st.size;
      } else if (st.isBlockDevice()) {
        const s = blockDeviceSize(fd) ?? sysfsBlockSize(st.rdev);
        if (s === undefined) throw new UserError(`${label}: cannot get the size of block device '${path}'`, 'EBLKOPEN');
        size = s;
        sectors = blockDeviceSectorSizes(fd);
      } else {
        throw new UserError(`${label}: '${path}' is not a regular file or block device`, 'EBLKOPEN');
      }
      return new FileBlockBackend(fd, path, size, ro, st.isBlockDevice(), sectors, opts.nocache ?? false);
    } catch (e) {
      fs.closeSync(fd);
      if (e instanceof UserError) throw e;
      throw new UserError(`${label}: cannot use '${path}': ${errCode(e)}`, 'EBLKOPEN');
    }
  }

  private checkOpen(op: string): void {
    if (this.fd < 0) throw new BlockIoError(op, 'EBADF', 'backend closed');
  }

  private dropCache(offset: number, len: number): void {
    if (this.nocache) fadvise(this.fd, offset, len, POSIX_FADV_DONTNEED);
  }

  read(buf: Uint8Array, offset: number): void {
    this.checkOpen('read');
    this.transfer('read', fs.readSync, buf, offset, 'unexpected end of file');
  }

  write(buf: Uint8Array, offset: number): void {
    this.checkOpen('write');
    if (this.readonly) throw new BlockIoError('write', 'EROFS');
    this.transfer('write', fs.writeSync, buf, offset, 'no progress');
  }

  /** The whole of buf at offset, in chunks, retrying EINTR/EAGAIN and short transfers. */
  private transfer(op: 'read' | 'write', io: (fd: number, b: Uint8Array, off: number, len: number, pos: number) => number,
    buf: Uint8Array, offset: number, stalled: string): void {
    let done = 0;
    while (done < buf.length) {
      const k = Math.min(buf.length - done, IO_CHUNK);
      let n: number;
      try {
        n = io(this.fd, buf, done, k, offset + done);
      } catch (e) {
        if (errCode(e) === 'EINTR' || errCode(e) === 'EAGAIN') continue;
        throw new BlockIoError(op, errCode(e), `offset ${offset + done}`);
      }
      if (n === 0) throw new BlockIoError(op, 'EIO', `${stalled} at ${offset + done}`);
      done += n;
    }
    this.dropCache(offset, buf.length);
  }

  readv(iov: IoVecs, offset: number): void {
    this.checkOpen('read');
    this.vectored('read', libc.preadv, iov, offset, 'unexpected end of file');
  }

  writev(iov: IoVecs, offset: number): void {
    this.checkOpen('write');
    if (this.readonly) throw new BlockIoError('write', 'EROFS');
    this.vectored('write', libc.pwritev, iov, offset, 'no progress');
  }

  /** All of `iov` at offset with preadv/pwritev, resuming after short transfers and EINTR/EAGAIN. */
  private vectored(op: 'read' | 'write', call: (fd: number, iov: Buffer, n: number, off: number) => number,
    iov: IoVecs, offset: number, stalled: string): void {
    const total = iov.bytes;
    let first = 0, done = 0;
    while (done < total && first < iov.count) {
      const n = Math.min(iov.count - first, IOV_BATCH);
      const r = call(this.fd, first === 0 ? iov.buf : iov.buf.subarray(16 * first), n, offset + done);
      if (r < 0) {
        const e = errno();
        if (e === 4 || e === 11) continue; // EINTR, EAGAIN
        throw new BlockIoError(op, errnoName(e), `offset ${offset + done}`);
      }
      if (r === 0) throw new BlockIoError(op, 'EIO', `${stalled} at ${offset + done}`);
      done += r;
      first = iov.advance(first, r);
    }
    this.dropCache(offset, total);
  }

  flush(): void {
    this.checkOpen('flush');
    try {
      fs.fdatasyncSync(this.fd);
    } catch (e) {
      throw new BlockIoError('flush', errCode(e));
    }
  }

  discard(offset: number, len: number): boolean {
    this.checkOpen('discard');
    if (this.readonly) throw new BlockIoError('discard', 'EROFS');
    if (len === 0) return true;
    if (!this.discardWorks) return false;
    const r = fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (r === 0) return true;
    if (r === EOPNOTSUPP || r === ENOSYS) {
      this.discardWorks = false;
      return false;
    }
    throw new BlockIoError('discard', errnoName(r), `offset ${offset} length ${len}`);
  }

  writeZeroes(offset: number, len: number, unmap: boolean): void {
    this.checkOpen('write-zeroes');
    if (this.readonly) throw new BlockIoError('write-zeroes', 'EROFS');
    if (len === 0) return;
    // A punched hole reads as zeros on files and block devices alike.
    if (unmap && this.discardWorks) {
      const r = fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
      if (r === 0) return;
      if (r === EOPNOTSUPP || r === ENOSYS) this.discardWorks = false;
      else throw new BlockIoError('write-zeroes', errnoName(r), `offset ${offset} length ${len}`);
    }
    if (this.zeroRangeWorks) {
      const r = fallocate(this.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, len);
      if (r === 0) return;
      if (r === EOPNOTSUPP || r === ENOSYS) this.zeroRangeWorks = false;
      else throw new BlockIoError('write-zeroes', errnoName(r), `offset ${offset} length ${len}`);
    }
    const zeros = new Uint8Array(Math.min(len, ZERO_CHUNK));
    for (let done = 0; done < len; done += zeros.length) {
      const k = Math.min(zeros.length, len - done);
      this.write(k === zeros.length ? zeros : zeros.subarray(0, k), offset + done);
    }
  }

  /** Set the file's length (image formats growing or trimming their file). */
  truncate(len: number): void {
    this.checkOpen('truncate');
    if (this.readonly) throw new BlockIoError('truncate', 'EROFS');
    if (libc.ftruncate(this.fd, len) !== 0) throw new BlockIoError('truncate', errnoName(errno()), `length ${len}`);
  }

  close(): void {
    if (this.fd < 0) return;
    try {
      fs.closeSync(this.fd);
    } finally {
      this.fd = -1;
    }
  }
}

/** Block device size from /sys/dev/block/MAJ:MIN/size (512-byte units). */
function sysfsBlockSize(rdev: number): number | undefined {
  // Linux dev_t encoding (glibc): major bits 8..19 and 32..43, minor bits 0..7 and 20..31.
  const major = ((rdev >>> 8) & 0xfff);
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  try {
    const s = fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim();
    if (!/^[0-9]+$/.test(s)) return undefined;
    const v = Number(s) * 512;
    return Number.isSafeInteger(v) ? v : undefined;
  } catch {
    return undefined;
  }
}
