/**
 * A SerialBackend usable at once whose real backend opens asynchronously
 * (PciDeviceEmulation.create is synchronous; UnixSerialBackend.open is not).
 * Until the real one is ready: writes are held (latest 64 KiB kept), the
 * data callback and pause state are remembered and applied when it opens.
 * If opening fails, `onError` is told and the backend discards everything.
 */
import { ByteQueue } from '../backends/byte-queue.js';
import type { SerialBackend } from '../backends/types.js';

const HOLD_MAX = 64 * 1024;
const HOLD_CHUNK = 16 * 1024;

export class LazySerialBackend implements SerialBackend {
  private real: SerialBackend | undefined;
  private failed = false;
  private closed = false;
  private readonly hold = new ByteQueue(HOLD_MAX + 2 * HOLD_CHUNK, HOLD_CHUNK);
  private cb: ((b: Uint8Array) => void) | undefined;
  private paused = false;
  /** Resolves once opening finished (successfully or not). */
  readonly ready: Promise<void>;

  constructor(open: () => Promise<SerialBackend>, onError: (e: unknown) => void = () => {}) {
    this.ready = open().then(async (b) => {
      if (this.closed) { await b.close(); return; }
      this.real = b;
      if (this.cb) b.onData(this.cb);
      if (this.paused) b.pause();
      for (let held = this.hold.take(); held; held = this.hold.take()) {
        b.write(held); // copied by the backend
        this.hold.release(held);
      }
    }, (e: unknown) => {
      this.failed = true;
      this.hold.clear();
      onError(e);
    });
  }

  /** The opened backend, once there is one. */
  get backend(): SerialBackend | undefined { return this.real; }

  write(bytes: Uint8Array): void {
    if (this.real) { this.real.write(bytes); return; }
    if (this.failed || this.closed || bytes.length === 0) return;
    this.hold.pushLatest(bytes, HOLD_MAX);
  }

  onData(cb: (bytes: Uint8Array) => void): void {
    this.cb = cb;
    this.real?.onData(cb);
  }

  pause(): void { this.paused = true; this.real?.pause(); }
  resume(): void { this.paused = false; this.real?.resume(); }

  async close(): Promise<void> {
    this.closed = true;
    await this.ready;
    await this.real?.close();
  }
}
