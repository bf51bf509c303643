/**
 * A frame backend over a stream socket whose frames are each preceded by
 * their length as a 4-byte big-endian integer, bare Ethernet with no
 * virtio_net_hdr (passt's `--fd` protocol, QEMU's `-netdev stream`). The
 * peer is another process and is not trusted: a length of 0 or over
 * VIRTIO_NET_MAX_FRAME ends the connection (reported once).
 *
 * Reads never take bytes past the current frame, so a frame the device
 * has not asked for stays in the socket, and the edge-triggered wait of
 * the I/O thread sees the next one arrive. A whole frame already waiting
 * (FIONREAD) is read straight into the guest's buffers; one that arrives
 * in pieces is gathered here and copied when complete. A write the socket
 * takes only in part keeps its rest, sent before the next frame (a frame
 * cannot be cut short on a stream); while that rest waits, new frames are
 * dropped, as a full NIC drops them.
 */
import { EAGAIN, errno, libc, viewAt } from '../../host/libc.js';
import type { IoVecs } from '../../memory/iovec.js';
import type { NetBackend } from './backend.js';
import { VIRTIO_NET_MAX_FRAME } from './device.js';

const FIONREAD = 0x541b;
const SHUT_RDWR = 2;
const EPIPE = 32, EPROTO = 71, EMSGSIZE = 90;
const LEN_BYTES = 4;
const TWO_32 = 0x1_0000_0000;
/** iovec entries beyond the length word a frame may use (the device's tx iovecs: one per descriptor) */
const MAX_IOV = 1024;

export class StreamFrameBackend implements NetBackend {
  readonly vnetHdr = false;
  /** why the connection was dropped; reads and writes then do nothing */
  broken: string | undefined;
  private readonly len = Buffer.alloc(LEN_BYTES);
  private lenGot = 0;
  /** the current frame's length, once its length word is in */
  private frameLen = 0;
  /** a frame that arrives in pieces */
  private readonly stage = Buffer.alloc(VIRTIO_NET_MAX_FRAME);
  private got = 0;
  private readonly avail = Buffer.alloc(4);
  /** struct iovec[] for readv (the guest's buffers cut to one frame) and writev (length word, then the frame) */
  private readonly iovBuf = Buffer.alloc(16 * (MAX_IOV + 1));
  private readonly iovW = new Uint32Array(this.iovBuf.buffer, this.iovBuf.byteOffset, 4 * (MAX_IOV + 1));
  private readonly txLen = Buffer.alloc(LEN_BYTES);
  /** the unsent rest of a frame the socket took only in part */
  private pending: Buffer | undefined;

  /**
   * `fd`: the non-blocking stream socket. `owned`: this copy closes it (the
   * main thread's); `onClose` runs then (stopping the peer process).
   */
  constructor(readonly fd: number, private readonly owned = false, private readonly onClose?: () => void) {}

  readv(iov: IoVecs): number {
    if (this.broken) return -EAGAIN;
    while (this.lenGot < LEN_BYTES) {
      const n = libc.read(this.fd, this.len.subarray(this.lenGot), LEN_BYTES - this.lenGot);
      if (n < 0) return -(errno() || EAGAIN);
      if (n === 0) return this.drop('the peer closed the connection', EPIPE);
      this.lenGot += n;
      if (this.lenGot === LEN_BYTES) {
        this.frameLen = this.len.readUInt32BE(0);
        if (this.frameLen === 0 || this.frameLen > VIRTIO_NET_MAX_FRAME) return this.drop(`frame length ${this.frameLen}`, EPROTO);
      }
    }
    const want = this.frameLen;
    if (this.got === 0 && iov.bytes >= want && this.waiting() >= want) {
      // the whole frame is there: straight into the guest's buffers
      const cnt = this.cutIov(iov, want);
      const n = cnt < 0 ? -1 : libc.readv(this.fd, this.iovBuf, cnt);
      if (n === want) return this.frameDone();
      if (n < 0) return -(errno() || EAGAIN);
      // (a short read from a socket that said it held more: keep what came)
      this.copyFromIov(iov, n);
      this.got = n;
    }
    const n = libc.read(this.fd, this.stage.subarray(this.got), want - this.got);
    if (n < 0) return -(errno() || EAGAIN);
    if (n === 0) return this.drop('the peer closed the connection', EPIPE);
    this.got += n;
    if (this.got < want) return -EAGAIN; // the socket is drained: the rest comes with the next edge
    this.copyToIov(iov, want);
    return this.frameDone();
  }

  writev(iov: IoVecs): number {
    if (this.broken) return -EAGAIN;
    if (this.pending && !this.flush()) return this.broken ? -EPIPE : -EAGAIN;
    const len = iov.bytes;
    if (len === 0 || len > VIRTIO_NET_MAX_FRAME || iov.count > MAX_IOV) return -EMSGSIZE;
    this.txLen.writeUInt32BE(len, 0);
    this.setIov(0, this.txLenAddr, LEN_BYTES);
    for (let i = 0; i < iov.count; i++) this.setIov(i + 1, iov.base(i), iov.len(i));
    const n = libc.writev(this.fd, this.iovBuf, iov.count + 1);
    if (n < 0) {
      const e = errno();
      return e === EAGAIN ? -EAGAIN : this.drop(`write failed: errno ${e}`, e);
    }
    if (n < LEN_BYTES + len) this.keepRest(iov, n);
    return len;
  }

  close(): void {
    if (!this.owned) return;
    libc.close(this.fd);
    this.onClose?.();
  }

  /** Bytes waiting in the socket. */
  private waiting(): number {
    return libc.ioctlPtr(this.fd, FIONREAD, this.avail) < 0 ? 0 : this.avail.readInt32LE(0);
  }

  private frameDone(): number {
    const n = this.frameLen;
    this.lenGot = 0; this.frameLen = 0; this.got = 0;
    return n;
  }

  /** End the connection (the peer sees it closed); the first report is the error returned, later calls are quiet. */
  private drop(why: string, err: number): number {
    this.broken = why;
    this.pending = undefined;
    libc.shutdown(this.fd, SHUT_RDWR);
    return -err;
  }

  private setIov(i: number, addr: number, len: number): void {
    const q = 4 * i, w = this.iovW;
    w[q] = addr >>> 0; w[q + 1] = Math.floor(addr / TWO_32); w[q + 2] = len; w[q + 3] = 0;
  }

  private readonly txLenAddr = Number(libc.bufferAddress(this.txLen));

  /** iovBuf := the first `n` bytes of `iov`; the entry count, or -1 when there are too many. */
  private cutIov(iov: IoVecs, n: number): number {
    let i = 0;
    for (let left = n; left > 0; i++) {
      if (i >= iov.count || i > MAX_IOV) return -1;
      const k = Math.min(left, iov.len(i));
      this.setIov(i, iov.base(i), k);
      left -= k;
    }
    return i;
  }

  /** stage[0, n) into the guest's buffers (as much as they hold). */
  private copyToIov(iov: IoVecs, n: number): void {
    for (let i = 0, off = 0; i < iov.count && off < n; i++) {
      const k = Math.min(iov.len(i), n - off);
      new Uint8Array(viewAt(BigInt(iov.base(i)), k)).set(this.stage.subarray(off, off + k));
      off += k;
    }
  }

  /** The guest's buffers' first `n` bytes into stage. */
  private copyFromIov(iov: IoVecs, n: number): void {
    for (let i = 0, off = 0; i < iov.count && off < n; i++) {
      const k = Math.min(iov.len(i), n - off);
      this.stage.set(new Uint8Array(viewAt(BigInt(iov.base(i)), k)), off);
      off += k;
    }
  }

  /** Keep what a short write left of (length word + frame), from byte `sent` on. */
  private keepRest(iov: IoVecs, sent: number): void {
    const all = Buffer.alloc(LEN_BYTES + iov.bytes);
    this.txLen.copy(all, 0);
    for (let i = 0, off = LEN_BYTES; i < iov.count; i++) {
      all.set(new Uint8Array(viewAt(BigInt(iov.base(i)), iov.len(i))), off);
      off += iov.len(i);
    }
    this.pending = all.subarray(sent);
  }

  /** Send the rest of a frame; true once it is all out. */
  private flush(): boolean {
    const p = this.pending!;
    const n = libc.write(this.fd, p, p.length);
    if (n < 0) {
      const e = errno();
      if (e !== EAGAIN) this.drop(`write failed: errno ${e}`, e);
      return false;
    }
    this.pending = n === p.length ? undefined : p.subarray(n);
    return this.pending === undefined;
  }
}
