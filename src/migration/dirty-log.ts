/**
 * Which pages of guest RAM changed since the last look, for live
 * migration's rounds: KVM's dirty log of every RAM slot (what vCPUs wrote;
 * KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG), joined with the map of pages
 * tshyve's own device threads wrote (GuestMemory's `dirty`: one byte per
 * page, set by every write through GuestMemory and by devices that write
 * through host addresses, cleared here with an atomic exchange so a write
 * racing the look is never lost).
 */
import type { Vm } from '../kvm/kvm.js';
import { MEM_LOG_DIRTY_PAGES } from '../kvm/abi.js';
import { PAGE } from './ram-pages.js';

/** One KVM memory slot of guest RAM and where it is in the RAM mapping. */
export interface RamSlot { slot: number; gpa: number; size: number; ramOffset: number; hostAddr: bigint }

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

export class DirtyLog {
  private readonly bitmaps: Buffer[];
  private readonly words: Int32Array;
  private on = false;

  /** `deviceMap`: the VM's one-byte-per-page map, over a SharedArrayBuffer of a whole number of 32-bit words. */
  constructor(private readonly vm: Vm, private readonly slots: readonly RamSlot[], deviceMap: Uint8Array) {
    this.bitmaps = slots.map((s) => Buffer.alloc(Math.ceil(s.size / PAGE / 64) * 8));
    this.words = new Int32Array(deviceMap.buffer, deviceMap.byteOffset, deviceMap.byteLength >> 2);
  }

  /** Turn KVM's logging on for every slot and forget what devices wrote so far. */
  start(): void {
    this.take(() => { /* forgotten */ });
    this.setLogging(true);
  }

  /** Turn logging off (a migration ended or failed). */
  stop(): void {
    if (this.on) this.setLogging(false);
  }

  /**
   * The pages written since start() or the last harvest, in order, and the
   * logs cleared. Pages are marked in a bitmap of 32-page words (the last
   * harvest runs while the guest is paused: a mostly clean log costs a pass
   * over words, not one over every page).
   */
  harvest(): Uint32Array {
    const marks = new Int32Array(Math.ceil(this.words.length * 4 / 32));
    this.take((p) => { marks[p >>> 5]! |= 1 << (p & 31); });
    this.slots.forEach((s, i) => {
      const bm = this.bitmaps[i]!;
      this.vm.getDirtyLog(s.slot, bm);
      const base = s.ramOffset / PAGE;
      for (let w = 0; w < bm.length; w += 4) {
        let bits = bm.readUInt32LE(w);
        if (bits === 0) continue;
        const first = base + w * 8;
        if ((first & 31) === 0) { marks[first >>> 5]! |= bits; continue; }
        while (bits !== 0) {
          const p = first + 31 - Math.clz32(bits & -bits);
          marks[p >>> 5]! |= 1 << (p & 31);
          bits &= bits - 1;
        }
      }
    });
    let n = 0;
    for (let w = 0; w < marks.length; w++) n += popcount(marks[w]!);
    const out = new Uint32Array(n);
    for (let w = 0, k = 0; k < n; w++) {
      for (let bits = marks[w]!; bits !== 0; bits &= bits - 1) out[k++] = w * 32 + 31 - Math.clz32(bits & -bits);
    }
    return out;
  }

  private take(f: (page: number) => void): void {
    const w = this.words;
    for (let i = 0; i < w.length; i++) {
      if (w[i] === 0) continue;
      const v = Atomics.exchange(w, i, 0);
      for (let b = 0; b < 4; b++) if ((v >>> (8 * b)) & 0xff) f(4 * i + b);
    }
  }

  private setLogging(on: boolean): void {
    for (const s of this.slots) this.vm.setUserMemoryRegion(s.slot, s.gpa, s.size, s.hostAddr, on ? MEM_LOG_DIRTY_PAGES : 0);
    this.on = on;
  }
}
