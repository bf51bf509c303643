/**
 * Serves vCPU I/O exits on the main thread, where the device models live.
 * It sleeps on the shared doorbell with Atomics.waitAsync (so the event
 * loop stays free for sockets and timers), and after serving a burst it
 * polls for a short while: exits come in bursts (a console line, a PCI
 * scan) and a thread wake-up costs far more than a few microseconds' poll.
 */
import type { Bus } from '../bus/bus.js';
import { MB, DB, MbState, MbKind, RING_ENTRIES, RING_WORDS, RING_SEQ, type Mailbox } from './mailbox.js';
import { performance } from 'node:perf_hooks';

/** longest stretch the device thread serves exits without yielding to its event loop */
const BURST_MAX_MS = 2;

export interface ExitStats { pio: number; mmio: number; errors: number }

export class ExitServer {
  private seen = 0;
  private running = false;
  readonly stats: ExitStats = { pio: 0, mmio: 0, errors: 0 };
  /** per-address exit counts, kept only when asked for (debug.stats) */
  byAddress: Map<string, number> | undefined;

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
    const r = Atomics.waitAsync(this.doorbell, DB.RING, this.seen);
    if (r.async) r.value.then(() => this.serveBurst());
    else setImmediate(() => this.serveBurst());
  }

  /** Serve every pending request once; true if any was served. */
  serveOnce(): boolean {
    // Every vCPU's posted writes first, in guest order: a request is only
    // made once its own vCPU's writes are served, and must also see the
    // writes other vCPUs made before it.
    let any = this.servePosted();
    for (const mb of this.boxes) {
      if (Atomics.load(mb.words, MB.STATE) !== MbState.REQUEST) continue;
      this.serve(mb);
      any = true;
    }
    return any;
  }

  private serveBurst(): void {
    if (!this.running) return;
    const start = performance.now();
    let last = start;
    const pollMs = this.pollUs / 1000;
    for (;;) {
      this.seen = Atomics.load(this.doorbell, DB.RING);
      const now = performance.now();
      if (this.serveOnce()) {
        last = now;
        // A guest that keeps the device thread busy must not starve the
        // event loop (backend writes, sockets, timers): yield now and then.
        if (now - start > BURST_MAX_MS) { setImmediate(() => this.serveBurst()); return; }
        continue;
      }
      if (now - last > pollMs || !this.running) break;
    }
    this.arm();
  }

  private readonly wbuf = new Uint8Array(8);
  private readonly wview = new DataView(this.wbuf.buffer);

  private readonly heads: number[] = [];
  private readonly tails: number[] = [];

  /**
   * Serve the queued writes of every vCPU, merged by their sequence numbers
   * (taken under the vCPUs' shared lock, so what is published is a prefix
   * of that order); true if there were any.
   */
  private servePosted(): boolean {
    const n = this.boxes.length;
    let pending = false;
    for (let i = 0; i < n; i++) {
      const w = this.boxes[i]!.words;
      this.heads[i] = Atomics.load(w, MB.HEAD);
      this.tails[i] = Atomics.load(w, MB.TAIL);
      if (this.heads[i] !== this.tails[i]) pending = true;
    }
    if (!pending) return false;
    for (;;) {
      let best = -1, bestSeq = 0;
      for (let i = 0; i < n; i++) {
        if (this.tails[i] === this.heads[i]) continue;
        const seq = this.boxes[i]!.words[MB.RING + (this.tails[i]! % RING_ENTRIES) * RING_WORDS + RING_SEQ]!;
        if (best < 0 || ((seq - bestSeq) | 0) < 0) { best = i; bestSeq = seq; }
      }
      if (best < 0) break;
      const w = this.boxes[best]!.words;
      const o = MB.RING + (this.tails[best]! % RING_ENTRIES) * RING_WORDS;
      const kind = w[o]! >> 8, size = w[o]! & 0xff;
      const addr = (w[o + 1]! >>> 0) + (w[o + 2]! >>> 0) * 0x100000000;
      this.wview.setInt32(0, w[o + 3]!, true);
      this.wview.setInt32(4, w[o + 4]!, true);
      this.dispatch(kind, 1, addr, this.wbuf.subarray(0, Math.min(size, 8)));
      this.tails[best]!++;
    }
    for (let i = 0; i < n; i++) {
      const w = this.boxes[i]!.words;
      if (Atomics.load(w, MB.TAIL) === this.tails[i]) continue;
      Atomics.store(w, MB.TAIL, this.tails[i]!);
      Atomics.notify(w, MB.TAIL);
    }
    return true;
  }

  private dispatch(kind: number, dir: number, addr: number, data: Uint8Array): void {
    const bus = kind === MbKind.PIO ? this.pio : this.mmio;
    try {
      if (dir === 0) bus.readInto(addr, data);
      else bus.writeFrom(addr, data);
    } catch (e) {
      // A device model bug or a hostile guest must not take the monitor down.
      this.stats.errors++;
      if (dir === 0) data.fill(0xff);
      this.onGuestError(`${kind === MbKind.PIO ? 'port' : 'mmio'} 0x${addr.toString(16)}: ${(e as Error).message}`);
    }
    if (kind === MbKind.PIO) this.stats.pio++; else this.stats.mmio++;
    if (this.byAddress) {
      const k = `${kind === MbKind.PIO ? 'pio' : 'mmio'}:0x${addr.toString(16)}:${dir ? 'w' : 'r'}`;
      this.byAddress.set(k, (this.byAddress.get(k) ?? 0) + 1);
    }
  }

  private serve(mb: Mailbox): void {
    const w = mb.words;
    const size = w[MB.SIZE]!;
    const addr = (w[MB.ADDR_LO]! >>> 0) + (w[MB.ADDR_HI]! >>> 0) * 0x100000000;
    this.dispatch(w[MB.KIND]!, w[MB.DIR]!, addr, mb.data.subarray(0, size));
    Atomics.store(w, MB.STATE, MbState.REPLY);
    Atomics.notify(w, MB.STATE);
  }
}
