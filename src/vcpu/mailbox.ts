/**
 * Shared-memory protocol between a vCPU thread and the device thread.
 *
 * A vCPU thread runs KVM_RUN; on a PIO/MMIO exit it writes the access into
 * its mailbox, rings the shared doorbell and waits; the main thread, where
 * the device models live, serves the access and flips the state back.
 * postMessage is not used on this path: it costs an event-loop turn more.
 *
 * Writes are posted, as on PCI: the vCPU queues them in a ring and goes
 * back into the guest at once; the device thread serves them in order.
 * A read (or a full ring) first waits for the ring to drain, so each
 * vCPU's accesses still reach devices in program order. Across vCPUs,
 * every posted write takes a sequence number under a lock shared by all
 * vCPUs, and the device thread serves all rings merged by that number,
 * before any read: a guest that serializes a device's registers with a
 * lock sees them change in the order it wrote them.
 *
 * Mailbox (Int32Array over a SharedArrayBuffer):
 *   [STATE] 0 idle | 1 request | 2 reply     (Atomics.wait/notify on it)
 *   [KIND]  1 PIO | 2 MMIO      [DIR] 0 read | 1 write     [SIZE] 1,2,4,8
 *   [ADDR_LO] [ADDR_HI]         [DATA..DATA+1] 8 data bytes (LE)
 *   [CTL_REQ] 0 run | 1 pause | 2 stop | 3 capture (parked) | 4 rehearse (between exits)  (main -> vCPU)
 *   [CTL_STATE] 0 running | 1 paused | 2 stopped (vCPU -> main)
 *   [TID] the vCPU thread's kernel tid, for kicks
 *   [HEAD] posted writes queued (vCPU)   [TAIL] posted writes served (main)
 *   [RING..] RING_ENTRIES entries of RING_WORDS: [kind<<8|size] [addr lo] [addr hi] [data lo] [data hi] [seq]
 *
 * Doorbell (Int32Array shared by all vCPUs and the device thread):
 *   [RING] bumped and notified on every request   [LOCK] posting lock   [SEQ] next posted-write number
 */
export const enum DB { RING = 0, LOCK = 1, SEQ = 2, WORDS = 3 }
export const RING_SEQ = 5;
export const enum MB {
  STATE = 0, KIND = 1, DIR = 2, SIZE = 3, ADDR_LO = 4, ADDR_HI = 5, DATA = 6,
  CTL_REQ = 8, CTL_STATE = 9, TID = 10, HEAD = 12, TAIL = 13, RING = 16,
}
export const RING_ENTRIES = 64;
export const RING_WORDS = 8;
const WORDS = MB.RING + RING_ENTRIES * RING_WORDS;
export const enum MbState { IDLE = 0, REQUEST = 1, REPLY = 2 }
export const enum MbKind { PIO = 1, MMIO = 2 }
/**
 * CAPTURE: a parked vCPU reads its KVM state on its own thread, posts it
 * ('state') and stays parked; REHEARSE: the same between two exits of a
 * running vCPU, which then runs on (a migration's warm-up).
 */
export const enum CtlReq { RUN = 0, PAUSE = 1, STOP = 2, CAPTURE = 3, REHEARSE = 4 }
export const enum CtlState { RUNNING = 0, PAUSED = 1, STOPPED = 2 }

export interface Mailbox {
  words: Int32Array;
  /** the 8 data bytes, aliasing words[DATA..DATA+1] */
  data: Uint8Array;
}

export function newMailbox(sab = new SharedArrayBuffer(WORDS * 4)): Mailbox {
  return { words: new Int32Array(sab), data: new Uint8Array(sab, MB.DATA * 4, 8) };
}

/** Messages a vCPU thread posts to the main thread (rare events only). */
export type VcpuEvent =
  /** ready: when the thread ran its first line (its modules loaded), on the process's performance clock */
  | { type: 'started'; index: number; tid: number; ready: number }
  | { type: 'shutdown'; index: number }                 // triple fault
  | { type: 'system-event'; index: number; event: number }
  | { type: 'error'; index: number; message: string }
  | { type: 'stopped'; index: number }
  /** the vCPU's KVM state (saveVcpu's fields), read on its thread at CAPTURE or REHEARSE */
  | { type: 'state'; index: number; seq: number; state?: Record<string, unknown>; error?: string };

/** What the main thread sends a vCPU thread before CAPTURE or REHEARSE: the MSRs to read; `seq` comes back with the state. */
export interface CaptureRequest { seq: number; msrs: number[] }

/** What a vCPU thread is started with. */
export interface VcpuWorkerData {
  index: number;
  vcpuFd: number;
  runSize: number;
  mailbox: SharedArrayBuffer;
  doorbell: SharedArrayBuffer;
  shadow: SharedArrayBuffer;
  /** post writes instead of waiting for them (default true) */
  postWrites: boolean;
  /** MMIO [base, end) pairs, flat, whose writes are never posted (Bus.unpostedRanges) */
  unpostedMmio: readonly number[];
  /** x86.irqchip=user: every vCPU's local APIC page (lapic-page.ts) and vCPU fd */
  apic?: { pages: SharedArrayBuffer[]; vcpuFds: number[] };
}
