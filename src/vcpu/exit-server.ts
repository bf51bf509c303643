/**
 * Serves vCPU I/O exits on the main thread, where the device models live.
 * It sleeps on the shared doorbell with Atomics.waitAsync (so the event
 * loop stays free for sockets and timers), and after serving a burst it
 * polls for a short while: exits come in bursts (a console line, a PCI
 * scan) and a thread wake-up costs far more than a few microseconds' poll.
 */
import type { Bus } from '../bus/bus.js';
import { MB, MbState, MbKind, type Mailbox } from './mailbox.js';
import { performance } from 'node:perf_hooks';

export interface ExitStats { pio: number; mmio: number; errors: number }

export class ExitServer {
  private seen = 0;
  private running = false;
  readonly stats: ExitStats = { pio: 0, mmio: 0, errors: 0 };

  constructor(
    private readonly doorbell: Int32Array,
    private readonly boxes: Mailbox[],
    private readonly pio: Bus,
    private readonly mmio: Bus,
    private readonly onGuestError: (msg: string) => void,
    /** how long to keep polling after the last exit, in microseconds */
    private readonly pollUs = 150,
  ) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    this.arm();
  }

  stop(): void { this.running = false; }

  private arm(): void {
    if (!this.running) return;
    const r = Atomics.waitAsync(this.doorbell, 0, this.seen);
    if (r.async) r.value.then(() => this.serveBurst());
    else setImmediate(() => this.serveBurst());
  }

  /** Serve every pending request once; true if any was served. */
  serveOnce(): boolean {
    let any = false;
    for (const mb of this.boxes) {
      if (Atomics.load(mb.words, MB.STATE) !== MbState.REQUEST) continue;
      this.serve(mb);
      any = true;
    }
    return any;
  }

  private serveBurst(): void {
    if (!this.running) return;
    let last = performance.now();
    const pollMs = this.pollUs / 1000;
    for (;;) {
      this.seen = Atomics.load(this.doorbell, 0);
      if (this.serveOnce()) { last = performance.now(); continue; }
      if (performance.now() - last > pollMs || !this.running) break;
    }
    this.arm();
  }

  private serve(mb: Mailbox): void {
    const w = mb.words;
    const kind = w[MB.KIND]!;
    const size = w[MB.SIZE]!;
    const addr = (w[MB.ADDR_LO]! >>> 0) + (w[MB.ADDR_HI]! >>> 0) * 0x100000000;
    const bus = kind === MbKind.PIO ? this.pio : this.mmio;
    const data = mb.data.subarray(0, size);
    try {
      if (w[MB.DIR] === 0) bus.readInto(addr, data);
      else bus.writeFrom(addr, data);
    } catch (e) {
      // A device model bug or a hostile guest must not take the monitor down.
      this.stats.errors++;
      if (w[MB.DIR] === 0) data.fill(0xff);
      this.onGuestError(`${kind === MbKind.PIO ? 'port' : 'mmio'} 0x${addr.toString(16)}: ${(e as Error).message}`);
    }
    if (kind === MbKind.PIO) this.stats.pio++; else this.stats.mmio++;
    Atomics.store(w, MB.STATE, MbState.REPLY);
    Atomics.notify(w, MB.STATE);
  }
}
