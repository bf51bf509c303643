/** eventfd(2): the wake-up and interrupt primitive shared by KVM (ioeventfd, irqfd) and device threads. */
import { libc, errno, EFD_CLOEXEC, EFD_NONBLOCK } from './libc.js';
import { HostError } from '../errors.js';

export function createEventfd(): number {
  const fd = libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) throw new HostError(`eventfd failed: errno ${errno()}`);
  return fd;
}

const one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
/** Add 1 to an eventfd's counter (an irqfd: inject its interrupt). Any thread. */
export function signalEventfd(fd: number): boolean {
  return libc.write(fd, one, 8) === 8;
}
