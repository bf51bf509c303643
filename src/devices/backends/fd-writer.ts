/**
 * Output queue for a file descriptor that must never block the event loop.
 * Node writes to pipes and TTYs synchronously on Linux (process.stdout), so
 * a stalled reader would freeze every vCPU; instead we issue one async
 * fs.write at a time (on the libuv pool), coalescing whatever queued up
 * meanwhile. The queue is bounded: bytes beyond `cap` are dropped and counted.
 */
import { write as fsWrite } from 'node:fs';

const RETRY_MS = 10; // O_NONBLOCK descriptors answer EAGAIN when full

export class FdWriter {
  private queue: Buffer[] = [];
  private queued = 0; // bytes in queue (not counting the one in flight)
  private inFlight = false;
  private dead = false; // descriptor failed
  private closed = false; // no new output accepted
  private idleWaiters: Array<() => void> = [];
  /** Bytes dropped because the queue was full or the descriptor failed. */
  dropped = 0;

  constructor(private readonly fd: number, private readonly cap = 4 * 1024 * 1024) {}

  write(bytes: Uint8Array): void {
    if (this.dead || this.closed || bytes.length === 0) { this.dropped += bytes.length; return; }
    const room = this.cap - this.queued;
    if (room <= 0) { this.dropped += bytes.length; return; }
    const take = Math.min(room, bytes.length);
    this.dropped += bytes.length - take;
    this.queue.push(Buffer.from(bytes.subarray(0, take))); // copy
    this.queued += take;
    this.kick();
  }

  private kick(): void {
    if (this.inFlight || this.queued === 0 || this.dead) return;
    const buf = this.queue.length === 1 ? this.queue[0]! : Buffer.concat(this.queue, this.queued);
    this.queue = [];
    this.queued = 0;
    this.inFlight = true;
    this.writeOut(buf);
  }

  private writeOut(buf: Buffer): void {
    fsWrite(this.fd, buf, 0, buf.length, null, (err, n) => {
      if (err) {
        if (err.code === 'EAGAIN') { setTimeout(() => this.writeOut(buf), RETRY_MS).unref(); return; }
        // EPIPE, EBADF...: the reader is gone; drop from now on.
        this.dead = true;
        this.dropped += buf.length + this.queued;
        this.queue = [];
        this.queued = 0;
        this.finish();
        return;
      }
      if (n < buf.length) { this.writeOut(buf.subarray(n)); return; }
      this.finish();
    });
  }

  private finish(): void {
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
      const t = setTimeout(resolve, timeoutMs);
      t.unref();
      this.idleWaiters.push(() => { clearTimeout(t); resolve(); });
    });
  }

  /** Stop accepting output (queued bytes still go out). */
  stop(): void {
    this.closed = true;
  }
}
