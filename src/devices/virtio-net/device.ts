/**
 * virtio-net (virtio 1.2, 5.1) over a frame backend (backend.ts):
 * transport-independent (VirtioDevice), modern only, so the header is
 * always the 12-byte virtio_net_hdr_v1.
 *
 * Queues: 0 receive, 1 transmit (no control queue, no multiqueue).
 *
 *   tx chain:  readable  hdr (12) | frame (<= 65550 bytes), split anyhow
 *   rx chain:  writable  hdr (12) | frame; with MRG_RXBUF a frame may go on
 *              over the next chains, and num_buffers in the first header says
 *              over how many
 *
 * Frames move with one readv/writev straight between guest buffers and the
 * backend: the I/O thread allocates nothing per packet. With merged rx
 * buffers, rx gathers about as much room as the last frames took (Linux
 * posts 1.5-4 KiB buffers: gathering room for a 64 KiB TSO frame before
 * each small one cost 44 chains popped and given back per ACK), and the
 * read goes on into a spill buffer of the device's own up to the largest
 * frame; a frame that spilled is copied into the chains popped after it.
 * When the guest has posted too little room for a frame already read, the
 * frame waits in the device (copied out whole) until the guest's rx notify.
 * Without merged buffers one chain must hold the frame, as before.
 *
 * Hostile input: a tx chain shorter than the header, a frame over 65550
 * bytes, a gso_type or checksum request the guest did not negotiate, or a
 * frame the backend refuses is dropped (tx_dropped); an rx chain with less
 * room than a header and an Ethernet header is given back empty
 * (rx_bad_buffers); a chain outside
 * RAM or a broken ring is a VirtqueueError: NEEDS_RESET. Nothing throws out
 * of queueNotify/onReadable.
 *
 * Device config (virtio_net_config, little-endian, 12 bytes here):
 *   0 u8[6] mac   6 u16 status (LINK_UP)   8 u16 max_virtqueue_pairs (1)   10 u16 mtu
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { IoVecs } from '../../memory/iovec.js';
import { EAGAIN, libc } from '../../host/libc.js';
import { VIRTIO_COMMON_FEATURES, VIRTIO_ID_NET, featureBit, hasFeature } from '../../virtio/constants.js';
import type { VirtioDevice, VirtioInterrupt } from '../../virtio/device.js';
import type { DescriptorChain, Virtqueue } from '../../virtio/queue.js';
import type { StateReader, StateWriter } from '../../snapshot/state.js';
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VIRTIO_NET_HDR_SIZE, type NetBackend } from './backend.js';

// ---- feature bits (5.1.3) --------------------------------------------------------------
export const VIRTIO_NET_F_CSUM = 0;
export const VIRTIO_NET_F_GUEST_CSUM = 1;
export const VIRTIO_NET_F_MTU = 3;
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
export const VIRTIO_NET_F_HOST_TSO4 = 11;
export const VIRTIO_NET_F_HOST_TSO6 = 12;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;

export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

export const VIRTIO_NET_CONFIG_SIZE = 12;
export const VIRTIO_NET_QUEUE_SIZE = 256;
export const RX_QUEUE = 0;
export const TX_QUEUE = 1;
/** Largest frame (Ethernet header on, no FCS): a 64 KiB GSO frame, as Firecracker and cloud-hypervisor take. */
export const VIRTIO_NET_MAX_FRAME = 65550;
/** The default MTU when none is set: what a guest assumes without VIRTIO_NET_F_MTU. */
export const VIRTIO_NET_DEFAULT_MTU = 1500;
/** Ethernet header plus one VLAN tag, over the MTU. */
const L2_OVERHEAD = 18;

/** The device's counters (a shared Float64Array: the I/O thread writes, the main thread reads). */
export const NET_COUNTERS = ['rx_packets', 'rx_bytes', 'rx_dropped', 'rx_bad_buffers', 'tx_packets', 'tx_bytes', 'tx_dropped'] as const;
const RX_PACKETS = 0, RX_BYTES = 1, RX_DROPPED = 2, RX_BAD_BUFFERS = 3, TX_PACKETS = 4, TX_BYTES = 5, TX_DROPPED = 6;

/** The least room an rx chain must have: a header and an Ethernet header. */
const MIN_RX_CHAIN = VIRTIO_NET_HDR_SIZE + 14;
/** Frames received per interrupt check while the backend keeps having more. */
const RX_SIGNAL_BATCH = 32;

export interface VirtioNetOptions {
  mac: Uint8Array;
  /** Offered with VIRTIO_NET_F_MTU when set. */
  mtu?: number;
  /** Absent on the main thread of a device whose data path runs on an I/O thread (config only). */
  backend?: NetBackend;
  /** Whether the backend carries vnet headers (the offloads to offer), when `backend` is absent. */
  vnetHdr?: boolean;
  /** NET_COUNTERS.length words; a private one if absent. */
  counters?: SharedArrayBuffer;
  onError?: (msg: string) => void;
}

export class VirtioNet implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_NET;
  readonly numQueues = 2;
  readonly maxQueueSize = VIRTIO_NET_QUEUE_SIZE;
  readonly features: bigint;
  readonly configSize = VIRTIO_NET_CONFIG_SIZE;
  readonly counters: Float64Array;
  readonly mac: Uint8Array;
  readonly mtu: number | undefined;
  private readonly config = new Uint8Array(VIRTIO_NET_CONFIG_SIZE);
  private readonly backend: NetBackend | undefined;
  private readonly onError: (msg: string) => void;

  private rxq: Virtqueue | undefined;
  private txq: Virtqueue | undefined;
  private mem: GuestMemory | undefined;
  private interrupt: VirtioInterrupt | undefined;
  private negotiated = 0n;
  /** rx: bytes of room the guest must post before a frame is read */
  private rxNeed = 0;
  private mergeable = false;

  // per-packet scratch, made once
  private readonly iov = new IoVecs(64);
  private readonly hdr = new Uint8Array(VIRTIO_NET_HDR_SIZE);
  /** rx: the gathered chains' writable (gpa, len, host) triples, how many, and their bytes */
  private rxBufs = new Float64Array(3 * 64);
  private rxBufCount = 0;
  private rxRoom = 0;
  /** rx: each gathered chain's head and writable length */
  private readonly rxHeads = new Int32Array(VIRTIO_NET_QUEUE_SIZE);
  private readonly rxLens = new Float64Array(VIRTIO_NET_QUEUE_SIZE);
  /** rx: room to gather before a read, about the last frames' length (a max that decays by 1/8 a frame) */
  private rxGuess = 0;
  /** rx, merged buffers: where a read goes on past the gathered room, and its native address */
  private readonly spill: Buffer;
  private readonly spillAddr: number;
  /** rx: a frame read when the guest had posted too little room (pendingLen bytes, header on), delivered first */
  private readonly pendingFrame: Buffer;
  private pendingLen = 0;

  constructor(opts: VirtioNetOptions) {
    if (opts.mac.length !== 6) throw new RangeError('virtio-net: a MAC is 6 bytes');
    this.mac = Uint8Array.from(opts.mac);
    this.mtu = opts.mtu;
    this.backend = opts.backend;
    // (the main thread's model, config only, has no data path)
    const frameMax = opts.backend ? VIRTIO_NET_HDR_SIZE + VIRTIO_NET_MAX_FRAME : 0;
    this.spill = Buffer.alloc(frameMax);
    this.spillAddr = frameMax ? Number(libc.bufferAddress(this.spill)) : 0;
    this.pendingFrame = Buffer.alloc(frameMax);
    this.onError = opts.onError ?? (() => {});
    this.counters = new Float64Array(opts.counters ?? new SharedArrayBuffer(8 * NET_COUNTERS.length));
    let f = VIRTIO_COMMON_FEATURES | featureBit(VIRTIO_NET_F_MAC) | featureBit(VIRTIO_NET_F_STATUS) | featureBit(VIRTIO_NET_F_MRG_RXBUF);
    if (opts.mtu !== undefined) f |= featureBit(VIRTIO_NET_F_MTU);
    if (opts.backend?.vnetHdr ?? opts.vnetHdr ?? false) {
      for (const b of [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6]) f |= featureBit(b);
    }
    this.features = f;
    this.config.set(this.mac, 0);
    this.setU16(6, VIRTIO_NET_S_LINK_UP);
    this.setU16(8, 1);
    this.setU16(10, opts.mtu ?? 0);
  }

  private setU16(off: number, v: number): void {
    this.config[off] = v & 0xff;
    this.config[off + 1] = v >>> 8;
  }

  /** The counters by name. */
  stats(): Record<string, number> {
    const out: Record<string, number> = {};
    NET_COUNTERS.forEach((k, i) => { out[k] = this.counters[i]!; });
    return out;
  }

  // ---- VirtioDevice ------------------------------------------------------------------

  readConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + (this.config[offset + i] ?? 0);
    return v;
  }

  writeConfig(): void {
    // mac is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR (not offered); the rest always is
  }

  activate(queues: readonly Virtqueue[], mem: GuestMemory, interrupt: VirtioInterrupt, features: bigint): void {
    const rx = queues[RX_QUEUE], tx = queues[TX_QUEUE];
    this.rxq = rx?.ready ? rx : undefined;
    this.txq = tx?.ready ? tx : undefined;
    this.mem = mem;
    this.interrupt = interrupt;
    this.negotiated = features;
    this.mergeable = hasFeature(features, VIRTIO_NET_F_MRG_RXBUF);
    const tso = hasFeature(features, VIRTIO_NET_F_GUEST_TSO4) || hasFeature(features, VIRTIO_NET_F_GUEST_TSO6);
    this.rxNeed = VIRTIO_NET_HDR_SIZE + (tso ? VIRTIO_NET_MAX_FRAME : Math.min(VIRTIO_NET_MAX_FRAME, (this.mtu ?? VIRTIO_NET_DEFAULT_MTU) + L2_OVERHEAD));
    this.rxGuess = 0;
    this.pendingLen = 0;
    this.backend?.setOffloads?.(tunOffloads(features));
  }

  reset(): void {
    this.rxq = this.txq = undefined;
    this.mem = undefined;
    this.interrupt = undefined;
    this.negotiated = 0n;
    this.pendingLen = 0;
  }

  queueNotify(q: number): void {
    if (q === TX_QUEUE) this.transmit();
    else if (q === RX_QUEUE) this.receive();
  }

  /** The I/O thread's own fd: the backend's. */
  pollFds(): readonly number[] {
    return this.backend ? [this.backend.fd] : [];
  }

  onReadable(): void {
    this.receive();
  }

  /** Close the backend (VM teardown). */
  destroy(): void {
    this.reset();
    this.backend?.close();
  }

  // ---- snapshot: the config the guest saw (the MAC may come from the VM's name) ----

  saveState(w: StateWriter): void {
    w.b64('mac', this.mac).u16('status', VIRTIO_NET_S_LINK_UP);
  }

  restoreState(r: StateReader): void {
    const mac = r.b64('mac', 6);
    if (mac[0]! & 1) r.fail('mac', 'a multicast address');
    r.u16('status', VIRTIO_NET_S_LINK_UP);
    this.mac.set(mac);
    this.config.set(mac, 0);
  }

  // ---- tx ---------------------------------------------------------------------------

  private transmit(): void {
    const vq = this.txq, interrupt = this.interrupt;
    if (!vq || !interrupt) return;
    let pushed = false;
    try {
      for (;;) {
        vq.disableNotifications();
        for (let chain = vq.popChain(true); chain !== undefined; chain = vq.popChain(true)) {
          this.sendFrame(chain);
          vq.pushUsed(chain.head, 0);
          pushed = true;
        }
        if (pushed) { interrupt.signalUsed(TX_QUEUE); pushed = false; }
        if (!vq.enableNotifications()) break;
      }
    } catch (e) {
      this.fail(e, pushed ? TX_QUEUE : -1);
    }
  }

  private sendFrame(chain: DescriptorChain): void {
    const c = this.counters, backend = this.backend;
    const len = chain.readableLen;
    const frame = len - VIRTIO_NET_HDR_SIZE;
    if (!backend || frame <= 0 || frame > VIRTIO_NET_MAX_FRAME) { c[TX_DROPPED]!++; return; }
    chain.readInto(this.hdr, 0);
    if (!this.headerAllowed(this.hdr[0]!, this.hdr[1]!)) { c[TX_DROPPED]!++; return; }
    const start = backend.vnetHdr ? 0 : VIRTIO_NET_HDR_SIZE;
    if (!chain.hostIovec(false, start, len - start, this.iov) || backend.writev(this.iov) < 0) { c[TX_DROPPED]!++; return; }
    c[TX_PACKETS]!++;
    c[TX_BYTES]! += frame;
  }

  /** A tx header asks only for what the guest negotiated: checksum offload with CSUM, TSO with HOST_TSO4/6. */
  private headerAllowed(flags: number, gso: number): boolean {
    const f = this.negotiated;
    if (flags & ~(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) return false;
    if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && !hasFeature(f, VIRTIO_NET_F_CSUM)) return false;
    switch (gso) {
      case VIRTIO_NET_HDR_GSO_NONE: return true;
      case VIRTIO_NET_HDR_GSO_TCPV4: return hasFeature(f, VIRTIO_NET_F_HOST_TSO4);
      case VIRTIO_NET_HDR_GSO_TCPV6: return hasFeature(f, VIRTIO_NET_F_HOST_TSO6);
      default: return false; // UDP, ECN: not offered
    }
  }

  // ---- rx ---------------------------------------------------------------------------

  /** Move frames from the backend into the guest's rx buffers until either runs out. */
  private receive(): void {
    const vq = this.rxq, interrupt = this.interrupt, backend = this.backend;
    if (!vq || !interrupt || !backend) return;
    let pending = 0;
    try {
      for (;;) {
        // -1: no room (wait for the guest's rx notify) or nothing to read (wait for readability)
        const r = this.pendingLen > 0 ? this.deliverPending(vq) : this.receiveFrame(vq, backend);
        if (r < 0) break;
        if (r > 0 && ++pending >= RX_SIGNAL_BATCH) { interrupt.signalUsed(RX_QUEUE); pending = 0; }
      }
      if (pending > 0) interrupt.signalUsed(RX_QUEUE);
    } catch (e) {
      this.fail(e, pending > 0 ? RX_QUEUE : -1);
    }
  }

  /**
   * Pop rx chains, after the `from` already held, until they hold `need`
   * bytes (one chain in all without MRG_RXBUF). Returns how many are held
   * (their buffers in rxBufs, their room in rxRoom), or 0 when the guest has
   * not posted enough yet: then only the `from` first are still held, and
   * rxBufs/rxRoom are as they were. `atLeast`: `need` is a guess, and
   * fewer bytes do when some chain is there. A chain too small to start a
   * frame ends the gathering short (it is given back for the next frame to skip).
   */
  private gather(vq: Virtqueue, need: number, from = 0, atLeast = false): number {
    const room0 = from ? this.rxRoom : 0, nb0 = from ? this.rxBufCount : 0;
    for (;;) {
      let held = from, room = room0, nb = nb0, enough = false;
      for (;;) {
        const chain = vq.popChain(true);
        if (chain === undefined) break;
        if (chain.writableLen < MIN_RX_CHAIN) {
          // given back empty when it comes first; after others, the frame makes do with those
          if (held > 0) { vq.unpopChains(1); enough = true; break; }
          vq.pushUsed(chain.head, 0);
          this.counters[RX_BAD_BUFFERS]!++;
          this.interrupt!.signalUsed(RX_QUEUE);
          continue;
        }
        // (+ 1: the spill buffer's triple goes after the chains')
        const want = 3 * (nb + chain.bufferCount + 1);
        if (want > this.rxBufs.length) {
          const grown = new Float64Array(Math.max(want, 2 * this.rxBufs.length));
          grown.set(this.rxBufs.subarray(0, 3 * nb));
          this.rxBufs = grown;
        }
        nb = chain.copyWritable(this.rxBufs, nb);
        this.rxHeads[held] = chain.head;
        this.rxLens[held] = chain.writableLen;
        held++;
        room += chain.writableLen;
        if (!this.mergeable || room >= need || held >= vq.size) { enough = true; break; }
      }
      if (enough || (atLeast && held > from)) { this.rxBufCount = nb; this.rxRoom = room; return held; }
      this.rxBufCount = nb0;
      this.rxRoom = room0;
      // not enough room yet: give the new chains back, and wait for more unless they already came
      if (!vq.unpopChains(held - from)) return 0;
    }
  }

  /**
   * Read one frame into chains gathered for it (and, with merged buffers,
   * the spill buffer past them). Returns 1 when a frame went to the guest,
   * 0 when one was dropped, -1 when none waits, the backend failed, there
   * is no room, or the frame must wait for more (pendingLen): unused chains
   * go back to the avail ring.
   */
  private receiveFrame(vq: Virtqueue, backend: NetBackend): number {
    const c = this.counters;
    let held = this.gather(vq, Math.min(this.rxGuess, this.rxNeed), 0, true);
    if (held === 0) return -1;
    const start = backend.vnetHdr ? 0 : VIRTIO_NET_HDR_SIZE;
    const room = this.rxRoom, nb = this.rxBufCount;
    const spill = this.mergeable ? Math.max(0, this.rxNeed - room) : 0;
    if (spill > 0) { const b = this.rxBufs; b[3 * nb] = -1; b[3 * nb + 1] = spill; b[3 * nb + 2] = this.spillAddr; }
    if (!this.iov.fill(this.rxBufs, 0, nb + (spill > 0 ? 1 : 0), start, room + spill - start)) {
      vq.unpopChains(held);
      throw new Error('rx buffers without a host mapping');
    }
    const n = backend.readv(this.iov);
    if (n <= 0) {
      vq.unpopChains(held);
      if (n < 0 && n !== -EAGAIN) this.onError(`backend read failed: errno ${-n}`);
      return -1;
    }
    const total = n + start;
    vq.mem.markDirtyPieces(this.rxBufs, 0, nb); // the frame went in through host addresses (the spill buffer is ours)
    if (total > room + spill || total <= VIRTIO_NET_HDR_SIZE) {
      // too big for the room (truncated), or no frame at all: the buffers serve the next one
      vq.unpopChains(held);
      c[RX_DROPPED]!++;
      return 0;
    }
    this.rxGuess = Math.max(total, this.rxGuess - (this.rxGuess >>> 3));
    if (total > room) {
      // the rest is in the spill buffer: it goes to the chains after these
      const more = this.gather(vq, total, held);
      if (more === 0) {
        // too little posted: keep the frame (whole) until the guest posts more
        this.copyRx(0, this.pendingFrame, 0, room, false);
        this.spill.copy(this.pendingFrame, room, 0, total - room);
        if (start > 0) this.pendingFrame.fill(0, 0, VIRTIO_NET_HDR_SIZE - 2); // (the header a bare backend has not)
        this.pendingLen = total;
        vq.unpopChains(held);
        return -1;
      }
      held = more;
      if (this.rxRoom < total) { vq.unpopChains(held); c[RX_DROPPED]!++; return 0; } // more than the ring can hold
      this.copyRx(room, this.spill, 0, total - room, true);
    }
    if (start > 0) { this.hdr.fill(0); this.copyRx(0, this.hdr, 0, VIRTIO_NET_HDR_SIZE - 2, true); }
    this.publishFrame(vq, held, total);
    return 1;
  }

  /** The frame that waited for room: into chains enough for it, or -1 (still too little). */
  private deliverPending(vq: Virtqueue): number {
    const total = this.pendingLen;
    const held = this.gather(vq, total);
    if (held === 0) return -1;
    this.pendingLen = 0;
    if (this.rxRoom < total) { vq.unpopChains(held); this.counters[RX_DROPPED]!++; return 0; }
    this.copyRx(0, this.pendingFrame, 0, total, true);
    this.publishFrame(vq, held, total);
    return 1;
  }

  /** num_buffers, then the chains the frame (`total` bytes, header on) took to the used ring; the rest back. */
  private publishFrame(vq: Virtqueue, held: number, total: number): void {
    let used = 0;
    for (let left = total; left > 0; used++) left -= this.rxLens[used]!;
    this.hdr[0] = used & 0xff; this.hdr[1] = used >>> 8;
    this.copyRx(VIRTIO_NET_HDR_SIZE - 2, this.hdr, 0, 2, true);
    vq.unpopChains(held - used);
    for (let i = 0, left = total; i < used; i++) {
      const k = Math.min(left, this.rxLens[i]!);
      vq.pushUsed(this.rxHeads[i]!, k, false);
      left -= k;
    }
    vq.publishUsed();
    this.counters[RX_PACKETS]!++;
    this.counters[RX_BYTES]! += total - VIRTIO_NET_HDR_SIZE;
  }

  /** Copy buf[bufOff, +n) to (toGuest) or from the gathered rx buffers at byte `offset` of their stream. */
  private copyRx(offset: number, buf: Uint8Array, bufOff: number, n: number, toGuest: boolean): void {
    const bufs = this.rxBufs, mem = this.mem!;
    let skip = offset, done = 0;
    for (let i = 0; i < this.rxBufCount && done < n; i++) {
      const len = bufs[3 * i + 1]!;
      if (skip >= len) { skip -= len; continue; }
      const k = Math.min(len - skip, n - done);
      if (toGuest) mem.copyIn(bufs[3 * i]! + skip, buf, bufOff + done, k);
      else mem.copyOut(bufs[3 * i]! + skip, buf, bufOff + done, k);
      done += k;
      skip = 0;
    }
  }

  /** A guest protocol error: NEEDS_RESET, after signalling what was already used on queue `q` (-1: none). */
  private fail(e: unknown, q: number): void {
    try {
      if (q >= 0) this.interrupt?.signalUsed(q);
      this.interrupt?.needsReset(e);
    } catch {
      // nothing more to do: never throw out of the data path
    }
  }
}

/** TUNSETOFFLOAD flags for the offloads the guest accepted (Firecracker's and cloud-hypervisor's mapping). */
export function tunOffloads(features: bigint): number {
  if (!hasFeature(features, VIRTIO_NET_F_GUEST_CSUM)) return 0;
  let f = TUN_F_CSUM;
  if (hasFeature(features, VIRTIO_NET_F_GUEST_TSO4)) f |= TUN_F_TSO4;
  if (hasFeature(features, VIRTIO_NET_F_GUEST_TSO6)) f |= TUN_F_TSO6;
  return f;
}
