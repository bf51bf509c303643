/**
 * A POSIX timer that signals the calling thread (SIGEV_THREAD_ID), on
 * CLOCK_MONOTONIC: a vCPU thread's user-space APIC timer, which must make
 * KVM_RUN return at its deadline. Raw syscalls: glibc's timer_create
 * wants a helper thread for SIGEV_THREAD, which this does not use.
 */
import { libc, errno } from './libc.js';

const SYS_TIMER_CREATE = 222, SYS_TIMER_SETTIME = 223, SYS_TIMER_DELETE = 226;
const CLOCK_MONOTONIC = 1;
const SIGEV_THREAD_ID = 4;

export class ThreadTimer {
  private readonly id: number;
  private readonly spec = Buffer.alloc(32); // struct itimerspec: interval, value

  /** A timer that sends `signal` to this thread (tid `tid`). */
  constructor(tid: number, signal: number) {
    const sev = Buffer.alloc(64); // struct sigevent
    sev.writeInt32LE(signal, 8);
    sev.writeInt32LE(SIGEV_THREAD_ID, 12);
    sev.writeInt32LE(tid, 16);
    const out = Buffer.alloc(4);
    if (libc.syscall(SYS_TIMER_CREATE, CLOCK_MONOTONIC, libc.bufferAddress(sev), libc.bufferAddress(out)) < 0) {
      throw new Error(`timer_create failed: errno ${errno()}`);
    }
    this.id = out.readInt32LE(0);
  }

  /**
   * Fire in `ns` nanoseconds (0 disarms), then every `repeatNs`: the
   * repeats cover a signal that landed while the thread was not yet in
   * KVM_RUN, until the thread sets the timer again.
   */
  set(ns: number, repeatNs: number): void {
    const put = (o: number, v: number) => {
      const t = Math.max(0, Math.round(v));
      this.spec.writeBigInt64LE(BigInt(Math.floor(t / 1e9)), o);
      this.spec.writeBigInt64LE(BigInt(t % 1e9), o + 8);
    };
    put(0, ns > 0 ? repeatNs : 0);
    put(16, ns);
    libc.syscall(SYS_TIMER_SETTIME, this.id, 0, libc.bufferAddress(this.spec), 0);
  }

  delete(): void { libc.syscall(SYS_TIMER_DELETE, this.id); }
}
