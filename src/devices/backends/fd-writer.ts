/**
 * Output queue for a file descriptor that must never block the event loop.
 * Node writes to pipes and TTYs synchronously on Linux (process.stdout), so
 * a stalled reader would freeze every vCPU; instead we issue one async
 * fs.write at a time (on the libuv pool), one chunk of whatever queued up
 * meanwhile. The queue (a ByteQueue) is bounded in real memory: bytes beyond
 * `cap` are dropped and counted.
 */
import { write as fsWrite } from 'node:fs';
import { ByteQueue } from './byte-queue.js';

const RETRY_MS = 10; // O_NONBLOCK descriptors answer EAGAIN when full

/** Default bound on output held for a descriptor that does not keep up. */
export const FD_QUEUE_CAP = 4 * 1024 * 1024;

export class FdWriter {
  private readonly queue: ByteQueue;
  private inFlight = false;
  private dead = false; // descriptor failed
  private closed = false; // no new output accepted
  private lost = 0; // bytes dropped because the descriptor failed or was closed
  private idleWaiters: Array<() => void> = [];
  /** a chunk waiting to be written again after EAGAIN (no write is on the descriptor meanwhile) */
  private retry: { timer: NodeJS.Timeout; buf: Buffer; off: number } | undefined;

  constructor(private readonly fd: number, cap = FD_QUEUE_CAP) {
    this.queue = new ByteQueue(cap);
  }

  /** Bytes dropped because the queue was full or the descriptor failed. */
  get dropped(): number { return this.queue.dropped + this.lost; }

  /** Memory held for output not written yet (for tests and stats). */
  get held(): number { return this.queue.held; }

  /** Queue a copy of `bytes`; returns how many were kept (the rest is dropped and counted). */
  write(bytes: Uint8Array): number {
    if (this.dead || this.closed) { this.lost += bytes.length; return 0; }
    const kept = this.queue.push(bytes);
    if (kept > 0) this.kick();
    return kept;
  }

  private kick(): void {
    if (this.inFlight || this.dead) return;
    const buf = this.queue.take();
    if (buf === undefined) return;
    this.inFlight = true;
    this.writeOut(buf, 0);
  }

  private writeOut(buf: Buffer, off: number): void {
    if (this.dead) { this.lost += buf.length - off; this.finish(buf); return; }
    fsWrite(this.fd, buf, off, buf.length - off, null, (err, n) => {
      if (this.dead) { this.lost += buf.length - off - (err ? 0 : n); this.finish(buf); return; } // abandoned meanwhile: no retry
      if (err) {
        if (err.code === 'EAGAIN') {
          const timer = setTimeout(() => { this.retry = undefined; this.writeOut(buf, off); }, RETRY_MS).unref();
          this.retry = { timer, buf, off };
          return;
        }
        // EPIPE, EBADF...: the reader is gone; drop from now on.
        this.dead = true;
        this.lost += buf.length - off;
        this.queue.clear();
        this.finish(buf);
        return;
      }
      if (off + n < buf.length) { this.writeOut(buf, off + n); return; }
      this.finish(buf);
    });
  }

  private finish(buf: Buffer): void {
    this.queue.release(buf);
    this.inFlight = false;
    this.kick();
    if (!this.inFlight) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** Resolves once everything queued is written, or after timeoutMs. */
  flush(timeoutMs = 1000): Promise<void> {
    if (!this.inFlight) return Promise.resolve();
    return new Promise((resolve) => {
      // Not unref'd: a close awaiting this must not find the loop empty and the process gone.
      const t = setTimeout(resolve, timeoutMs);
      this.idleWaiters.push(() => { clearTimeout(t); resolve(); });
    });
  }

  /** Stop accepting output (queued bytes still go out). */
  stop(): void {
    this.closed = true;
  }

  /**
   * Give up on what is still queued (counted as dropped) and write nothing
   * more; resolves once no write is on the descriptor, so the caller may
   * then change its flags or close it (a retry issued after the descriptor
   * went back to blocking would hold a pool thread, and process exit, forever).
   */
  abandon(): Promise<void> {
    this.closed = true;
    if (!this.dead) {
      this.dead = true;
      this.queue.clear(); // counted as dropped
    }
    const r = this.retry;
    if (r) {
      clearTimeout(r.timer);
      this.retry = undefined;
      this.lost += r.buf.length - r.off;
      this.finish(r.buf);
    }
    if (!this.inFlight) return Promise.resolve();
    return new Promise((resolve) => { this.idleWaiters.push(resolve); });
  }
}
