/**
 * Test scaffolding for virtio-net: a frame backend over one end of a unix
 * SOCK_SEQPACKET socketpair (one message per frame, as a tap has), the
 * other end for the test to play the network; and a device over memfd
 * guest RAM (host addresses, so frames move by readv/writev as in a VM)
 * with a driver for each queue.
 */
import { readSync, writeSync } from 'node:fs';
import { EAGAIN, errno, libc } from '../../host/libc.js';
import type { IoVecs } from '../../memory/iovec.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
import { featureBit } from '../../virtio/constants.js';
import type { VirtioInterrupt } from '../../virtio/device.js';
import { MockSplitQueue } from '../../virtio/testing/mock-driver.js';
import type { NetBackend } from './backend.js';
import { VirtioNet } from './device.js';

const AF_UNIX = 1;
const SOCK_SEQPACKET = 5;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const MSG_PEEK = 2;
const MSG_TRUNC = 0x20;
const MSG_DONTWAIT = 0x40;

/** The device's end of a socketpair; `peer` is the network's end (blocking reads, for the test). */
export class SocketBackend implements NetBackend {
  readonly fd: number;
  readonly peer: number;
  offloads = -1;
  constructor(readonly vnetHdr: boolean) {
    const sv = Buffer.alloc(8);
    if (libc.socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) throw new Error(`socketpair: errno ${errno()}`);
    this.fd = sv.readInt32LE(0);
    this.peer = sv.readInt32LE(4);
  }

  writev(iov: IoVecs): number {
    const n = libc.writev(this.fd, iov.buf, iov.count);
    return n < 0 ? -errno() : n;
  }

  readv(iov: IoVecs): number {
    const full = libc.recv(this.fd, null, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
    if (full < 0) return -(errno() || EAGAIN);
    const n = libc.readv(this.fd, iov.buf, iov.count);
    if (n < 0) return -errno();
    return Math.max(n, full);
  }

  setOffloads(flags: number): void { this.offloads = flags; }

  /** The network sends a frame to the guest; false when the socket is full (the frame is not sent). */
  send(frame: Uint8Array): boolean {
    try {
      writeSync(this.peer, frame);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return false;
      throw e;
    }
  }

  /** The next frame the guest sent, or undefined when none waits. */
  receive(): Buffer | undefined {
    if (libc.recv(this.peer, null, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT) < 0) return undefined;
    const b = Buffer.alloc(70_000);
    return b.subarray(0, readSync(this.peer, b));
  }

  close(): void {
    libc.close(this.fd);
    libc.close(this.peer);
  }
}

export interface NetSetup {
  mem: GuestMemory;
  bytes: Uint8Array;
  dev: VirtioNet;
  backend: SocketBackend;
  rx: MockSplitQueue;
  tx: MockSplitQueue;
  resets: string[];
  signalled: number[];
  close(): void;
}

export const RAM_SIZE = 4 << 20;

/** A VirtioNet over a SocketBackend, activated with `features` (device feature bit numbers), queues of `size`: rx's rings and buffers in the lower half of RAM, tx's in the upper. */
export function netSetup(features: number[], opts: { vnetHdr?: boolean; size?: number; eventIdx?: boolean; ramSize?: number; mtu?: number } = {}): NetSetup {
  const ramSize = opts.ramSize ?? RAM_SIZE;
  const ram = createGuestRam(ramSize);
  const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
  const backend = new SocketBackend(opts.vnetHdr ?? true);
  const dev = new VirtioNet({ mac: Uint8Array.of(2, 0, 0, 0, 0, 1), ...(opts.mtu !== undefined && { mtu: opts.mtu }), backend });
  const size = opts.size ?? 256;
  const half = ramSize / 2;
  const rx = new MockSplitQueue(mem, size, { base: 0, dataEnd: half });
  const tx = new MockSplitQueue(mem, size, { base: half, dataEnd: ramSize });
  const resets: string[] = [];
  const signalled: number[] = [];
  const rxq = rx.makeQueue({ eventIdx: opts.eventIdx ?? false });
  const txq = tx.makeQueue({ eventIdx: opts.eventIdx ?? false });
  const interrupt: VirtioInterrupt = {
    signalUsed: (q) => { signalled.push(q); return true; },
    signalConfig: () => {},
    needsReset: (r) => resets.push(r instanceof Error ? r.message : String(r)),
  };
  const negotiated = features.reduce((f, b) => f | featureBit(b), 0n) & dev.features;
  dev.activate([rxq, txq], mem, interrupt, negotiated);
  return {
    mem, bytes: ram.bytes, dev, backend, rx, tx, resets, signalled,
    close: () => { dev.destroy(); ram.close(); },
  };
}
