/**
 * Shadow registers: read-only snapshots of device registers that vCPU
 * threads may answer locally, without a round trip to the device thread.
 * A device publishes a register's value only while reading it has no side
 * effects; it withdraws it otherwise. Each entry also names one port whose
 * writes never change the value (a UART's THR for its LSR), so a posted
 * write there need not be waited for before answering.
 *
 * Layout (Int32Array over a SharedArrayBuffer), SLOTS entries of 4 words:
 *   [port | 0 when free] [value] [valid 0/1] [transparent write port | -1]
 */
export const SHADOW_SLOTS = 8;
const W = 4;

export class ShadowRegisters {
  readonly words: Int32Array;
  constructor(sab = new SharedArrayBuffer(SHADOW_SLOTS * W * 4)) {
    this.words = new Int32Array(sab);
  }

  get buffer(): SharedArrayBuffer { return this.words.buffer as SharedArrayBuffer; }

  /** Claim a slot for `port`; returns a setter (value, or undefined to withdraw). */
  register(port: number, transparentWritePort = -1): (value: number | undefined) => void {
    const w = this.words;
    let slot = -1;
    for (let i = 0; i < SHADOW_SLOTS; i++) if (w[i * W] === 0) { slot = i; break; }
    if (slot < 0) return () => {}; // no room: reads take the normal path
    const o = slot * W;
    Atomics.store(w, o + 2, 0);
    Atomics.store(w, o + 3, transparentWritePort);
    Atomics.store(w, o, port);
    return (value) => {
      if (value === undefined) { Atomics.store(w, o + 2, 0); return; }
      Atomics.store(w, o + 1, value);
      Atomics.store(w, o + 2, 1);
    };
  }

  /**
   * The shadowed value of a 1-byte read of `port`, or undefined. With a
   * posted write still pending to `pendingWritePort`, only a value that
   * write cannot change is returned.
   */
  lookup(port: number, pendingWritePort: number): number | undefined {
    const w = this.words;
    for (let o = 0; o < SHADOW_SLOTS * W; o += W) {
      if (Atomics.load(w, o) !== port) continue;
      if (pendingWritePort >= 0 && Atomics.load(w, o + 3) !== pendingWritePort) return undefined;
      const v = Atomics.load(w, o + 1);
      // Re-check validity after reading the value: a withdrawal in between wins.
      return Atomics.load(w, o + 2) === 1 ? v : undefined;
    }
    return undefined;
  }
}
