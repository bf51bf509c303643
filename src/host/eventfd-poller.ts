/**
 * Calls a handler on the device thread whenever one of a set of eventfds is
 * signalled (KVM ioeventfds: a guest notify that never left the kernel).
 * A small worker blocks in epoll_wait; the main thread sleeps on a shared
 * doorbell with Atomics.waitAsync, so its event loop stays free.
 */
import { Worker } from 'node:worker_threads';
import { createEventfd } from './eventfd.js';
import { libc, errno } from './libc.js';

const { epollCreate1, epollCtl } = libc;
const EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2, EPOLLIN = 1, EPOLL_CLOEXEC = 0o2000000;
const MAX_FDS = 1024;

export interface PolledEventfd { fd: number; close(): void }

export class EventfdPoller {
  private readonly epfd: number;
  private readonly shared = new SharedArrayBuffer(4 * (2 + MAX_FDS / 32));
  private readonly w = new Int32Array(this.shared);
  private readonly handlers: ((() => void) | undefined)[] = [];
  private worker: Worker | undefined;
  private seen = 0;
  private running = false;
  /** the epoll fd is closed (stopped): an eventfd closed after that is only closed */
  private closed = false;

  constructor() {
    this.epfd = epollCreate1(EPOLL_CLOEXEC);
    if (this.epfd < 0) throw new Error(`epoll_create1 failed: errno ${errno()}`);
  }

  /** A new eventfd whose signals call `handler` on this thread. */
  add(handler: () => void): PolledEventfd {
    let idx = this.handlers.indexOf(undefined);
    if (idx < 0) idx = this.handlers.length;
    if (idx >= MAX_FDS) throw new Error('too many eventfds');
    const fd = createEventfd();
    const ev = Buffer.alloc(12);
    ev.writeUInt32LE(EPOLLIN, 0);
    ev.writeUInt32LE(idx, 4);
    ev.writeUInt32LE(fd, 8);
    if (epollCtl(this.epfd, EPOLL_CTL_ADD, fd, ev) < 0) { libc.close(fd); throw new Error(`epoll_ctl failed: errno ${errno()}`); }
    this.handlers[idx] = handler;
    this.start();
    return {
      fd,
      close: () => {
        if (!this.closed) epollCtl(this.epfd, EPOLL_CTL_DEL, fd, null);
        libc.close(fd);
        this.handlers[idx] = undefined;
      },
    };
  }

  private start(): void {
    if (this.running) return;
    this.running = true;
    this.worker = new Worker(new URL('./eventfd-worker.js', import.meta.url), { workerData: { epfd: this.epfd, shared: this.shared } });
    this.worker.unref();
    this.arm();
  }

  private arm(): void {
    if (!this.running) return;
    const r = Atomics.waitAsync(this.w, 0, this.seen);
    if (r.async) r.value.then(() => this.dispatch()); else setImmediate(() => this.dispatch());
  }

  private dispatch(): void {
    if (!this.running) return;
    this.seen = Atomics.load(this.w, 0);
    for (let word = 0; word < MAX_FDS / 32; word++) {
      let bits = Atomics.exchange(this.w, 2 + word, 0);
      while (bits) {
        const b = 31 - Math.clz32(bits);
        bits &= ~(1 << b);
        this.handlers[word * 32 + b]?.();
      }
    }
    this.arm();
  }

  /** The thread notices within its 1 s epoll timeout; nothing waits for it. The epoll fd is closed once it is gone. */
  stop(): void {
    this.running = false;
    Atomics.store(this.w, 1, 1);
    if (this.worker) this.worker.once('exit', () => this.closeEpoll()); else this.closeEpoll();
  }

  private closeEpoll(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.epfd);
  }
}
