/**
 * The data of one request as the qcow2 mapping code moves it: a byte range
 * [at, at+n) of the request goes to or from a host file range, a backing
 * image, a decompressed cluster or zeros. Three kinds: a Buffer (read/write),
 * a guest scatter list (readv/writev: each piece goes straight between guest
 * pages and the file with one preadv/pwritev, through a reused slice), and
 * zeros (write-zeroes of a partial cluster). Each image keeps one of each
 * and re-aims it per request: nothing is allocated per request.
 */
import * as fs from 'node:fs';
import { libc, viewAt } from '../../../host/libc.js';
import { IoVecs } from '../../../memory/iovec.js';
import { BlockIoError, type BlockBackend } from '../backend.js';
import type { FileBlockBackend } from '../file.js';

export interface Carrier {
  /** toFile() lengthens the file when it writes past its end (false: fallocate, which does not) */
  readonly extends: boolean;
  /** Fill [at, at+n) from the host file at `host`. */
  fromFile(file: FileBlockBackend, host: number, at: number, n: number): void;
  /** Write [at, at+n) to the host file at `host`. */
  toFile(file: FileBlockBackend, host: number, at: number, n: number): void;
  /** Fill [at, at+n) with zeros. */
  zero(at: number, n: number): void;
  /** Fill [at, at+n) from `src` at `from`. */
  fromBuffer(src: Uint8Array, from: number, at: number, n: number): void;
  /** Fill [at, at+n) from a backing image at guest offset `off`. */
  fromBacking(b: BlockBackend, off: number, at: number, n: number): void;
}

export class BufferCarrier implements Carrier {
  readonly extends = true;
  buf: Uint8Array = new Uint8Array(0);
  fromFile(file: FileBlockBackend, host: number, at: number, n: number): void { file.read(this.buf.subarray(at, at + n), host); }
  toFile(file: FileBlockBackend, host: number, at: number, n: number): void { file.write(this.buf.subarray(at, at + n), host); }
  zero(at: number, n: number): void { this.buf.fill(0, at, at + n); }
  fromBuffer(src: Uint8Array, from: number, at: number, n: number): void { this.buf.set(src.subarray(from, from + n), at); }
  fromBacking(b: BlockBackend, off: number, at: number, n: number): void { b.read(this.buf.subarray(at, at + n), off); }
}

let zeroFd = -1;
/** /dev/zero, opened once: preadv from it zero-fills guest pages in the kernel. */
function devZero(): number {
  if (zeroFd < 0) zeroFd = fs.openSync('/dev/zero', 'r');
  return zeroFd;
}

export class IovCarrier implements Carrier {
  readonly extends = true;
  iov: IoVecs = new IoVecs(1);
  private readonly part = new IoVecs(16);
  fromFile(file: FileBlockBackend, host: number, at: number, n: number): void {
    this.part.copyRange(this.iov, at, n);
    file.readv(this.part, host);
  }
  toFile(file: FileBlockBackend, host: number, at: number, n: number): void {
    this.part.copyRange(this.iov, at, n);
    file.writev(this.part, host);
  }
  zero(at: number, n: number): void {
    const p = this.part;
    p.copyRange(this.iov, at, n);
    const fd = devZero();
    for (let first = 0, done = 0; done < n && first < p.count;) {
      const r = libc.preadv(fd, first === 0 ? p.buf : p.buf.subarray(16 * first), Math.min(p.count - first, 1024), 0);
      if (r <= 0) throw new BlockIoError('read', 'EIO', 'zero fill failed');
      done += r;
      first = p.advance(first, r);
    }
  }
  fromBuffer(src: Uint8Array, from: number, at: number, n: number): void {
    const p = this.part;
    p.copyRange(this.iov, at, n);
    for (let i = 0, k = from; i < p.count; i++) {
      const l = p.len(i);
      new Uint8Array(viewAt(BigInt(p.base(i)), l)).set(src.subarray(k, k + l));
      k += l;
    }
  }
  fromBacking(b: BlockBackend, off: number, at: number, n: number): void {
    if (!b.readv) throw new BlockIoError('read', 'EIO', 'backing image without vectored reads');
    // the backing image slices again into its own carrier: hand it a copy of the range
    this.part.copyRange(this.iov, at, n);
    b.readv(this.part, off);
  }
}

/** Write-zeroes of part of a cluster: the "data" is zeros (fallocate on the host where it can). */
export class ZeroCarrier implements Carrier {
  readonly extends = false;
  fromFile(): void { /* never read into */ }
  toFile(file: FileBlockBackend, host: number, _at: number, n: number): void { file.writeZeroes(host, n, false); }
  zero(): void { /* nothing to fill */ }
  fromBuffer(): void { /* nothing to fill */ }
  fromBacking(): void { /* nothing to fill */ }
}
