/**
 * The eventfd thread: blocks in epoll_wait on the VM's ioeventfds (guest
 * queue notifications that KVM turns into eventfd signals without leaving
 * the kernel), and hands each one to the device thread through a pending
 * bitmap and a doorbell. Stops within a second of `stop` being set.
 *
 * Shared words: [0] doorbell counter, [1] stop flag, [2..] pending bitmap.
 */
import { workerData } from 'node:worker_threads';
import { libc } from './libc.js';

const { epollWait, read } = libc;

const { epfd, shared } = workerData as { epfd: number; shared: SharedArrayBuffer };
const w = new Int32Array(shared);
const MAX = 64;
const EVENT_SIZE = 12; // struct epoll_event is packed on x86-64: u32 events, u64 data
const events = Buffer.alloc(MAX * EVENT_SIZE);
const scratch = Buffer.alloc(8);

while (Atomics.load(w, 1) === 0) {
  const n = epollWait(epfd, events, MAX, 1000);
  if (n <= 0) continue; // timeout or EINTR: check the stop flag
  for (let i = 0; i < n; i++) {
    const idx = events.readUInt32LE(i * EVENT_SIZE + 4);
    const fd = events.readUInt32LE(i * EVENT_SIZE + 8);
    read(fd, scratch, 8); // reset the counter (the fd is non-blocking)
    Atomics.or(w, 2 + (idx >> 5), 1 << (idx & 31));
  }
  Atomics.add(w, 0, 1);
  Atomics.notify(w, 0);
}
