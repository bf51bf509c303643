/**
 * virtio-net fuzz: over a million random tx chains and rx buffer layouts
 * (buffer counts and sizes, header splits, indirect tables, chains too
 * small, writable parts on tx, readable parts on rx, bad headers, frames
 * over the limit, the occasional chain outside RAM) against random frames
 * from the network, under every feature mix. Nothing throws; every frame
 * delivered is the next one sent (those skipped are the ones counted as
 * dropped), with num_buffers telling its chains; every tx chain is given
 * back and the network gets exactly the frames counted as sent; the
 * counters add up; and the device writes guest memory only inside the
 * rx buffers the driver posted (and the used rings).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_SIZE, usedRingBytes } from '../../virtio/constants.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { MockSplitQueue } from '../../virtio/testing/mock-driver.js';
import { VIRTIO_NET_HDR_SIZE } from './backend.js';
import {
  RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
} from './device.js';
import { netSetup, type NetSetup } from './testing.js';

const CHAINS = Number(process.env.TSHYVE_NET_FUZZ_CHAINS ?? 1_000_000);
const RAM = 512 << 10;
const QSIZE = 64;

/** xorshift32: reproducible. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x % n;
  };
}

/** The writable ranges of the chain at `head`, read back from the descriptors (direct or indirect). */
function writableRanges(mem: GuestMemory, drv: MockSplitQueue, head: number): [number, number][] {
  const out: [number, number][] = [];
  const desc = (table: number, i: number) => ({
    addr: Number(mem.readU64(table + VIRTQ_DESC_SIZE * i)), len: mem.readU32(table + VIRTQ_DESC_SIZE * i + 8),
    flags: mem.readU16(table + VIRTQ_DESC_SIZE * i + 12), next: mem.readU16(table + VIRTQ_DESC_SIZE * i + 14),
  });
  let d = desc(drv.desc, head);
  let table = drv.desc;
  if (d.flags & VIRTQ_DESC_F_INDIRECT) { table = d.addr; d = desc(table, 0); }
  for (let n = 0; n < 64; n++) {
    if (d.flags & VIRTQ_DESC_F_WRITE) out.push([d.addr, d.len]);
    if (!(d.flags & VIRTQ_DESC_F_NEXT)) break;
    d = desc(table, d.next);
  }
  return out;
}

const FEATURE_MIXES: { features: number[]; vnetHdr: boolean; eventIdx: boolean }[] = [
  { features: [VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6], vnetHdr: true, eventIdx: true },
  { features: [VIRTIO_NET_F_MRG_RXBUF], vnetHdr: false, eventIdx: false },
  { features: [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4], vnetHdr: true, eventIdx: false },
  { features: [], vnetHdr: false, eventIdx: true },
];

class Run {
  readonly s: NetSetup;
  readonly shadow: Uint8Array;
  readonly mix: (typeof FEATURE_MIXES)[number];
  /** frames sent by the network and not yet delivered or skipped */
  private readonly pending: Buffer[] = [];
  /** rx chains posted and not used yet: head -> writable ranges */
  private readonly outstanding = new Map<number, [number, number][]>();
  txUsed = 0;
  txReceived = 0;
  rxDelivered = 0;
  rxBytes = 0;
  rxSkipped = 0;
  rxBad = 0;
  resets = 0;

  constructor(mixIndex: number) {
    this.mix = FEATURE_MIXES[mixIndex % FEATURE_MIXES.length]!;
    this.s = netSetup(this.mix.features, { vnetHdr: this.mix.vnetHdr, eventIdx: this.mix.eventIdx, size: QSIZE, ramSize: RAM });
    this.shadow = new Uint8Array(RAM);
  }

  /** One round; returns the chains it posted. */
  round(r: (n: number) => number): number {
    const { s } = this;
    let posted = 0;
    // the driver: rx buffers, frames from the network, tx chains
    const nRx = r(12);
    for (let i = 0; i < nRx && s.rx.freeDescriptors >= 6; i++) {
      const nb = 1 + r(4);
      const writable: number[] = [];
      for (let k = 0; k < nb; k++) writable.push(r(8) === 0 ? r(16) : r(8) === 0 ? 4096 + r(8192) : 1 + r(2100));
      const spec = r(50) === 0 ? { readable: [1 + r(64)], writable } : { writable };
      const head = s.rx.addChain(spec, { indirect: r(4) === 0, gap: r(3) === 0 ? r(32) : 0 });
      this.outstanding.set(head, writableRanges(s.mem, s.rx, head));
      posted++;
    }
    const nFrames = r(6);
    for (let i = 0; i < nFrames; i++) {
      const len = r(20) === 0 ? 14 + r(70_000) : 14 + r(1600);
      const f = Buffer.alloc((this.mix.vnetHdr ? VIRTIO_NET_HDR_SIZE : 0) + len);
      for (let k = 0; k < f.length; k += 97) f[k] = r(256);
      f.writeUInt32LE(this.pending.length + this.rxDelivered + this.rxSkipped, f.length - 4); // a serial, to tell frames apart
      if (s.backend.send(f)) this.pending.push(f);
    }
    const nTx = r(12);
    for (let i = 0; i < nTx && s.tx.freeDescriptors >= 6; i++) {
      const hdr = Buffer.alloc(VIRTIO_NET_HDR_SIZE);
      if (r(4) === 0) { hdr[0] = r(4); hdr[1] = [0, 1, 3, 4, 0x81, r(256)][r(6)]!; }
      const frameLen = r(30) === 0 ? 65_540 + r(20) : r(20) === 0 ? r(14) : 14 + r(1500);
      const readable: (Uint8Array | number)[] = [];
      const split = r(3);
      if (split === 0) readable.push(hdr, frameLen);
      else if (split === 1) readable.push(Buffer.concat([hdr, Buffer.alloc(Math.min(frameLen, 40))]), Math.max(0, frameLen - 40));
      else { const k = r(12); readable.push(hdr.subarray(0, k), hdr.subarray(k), frameLen); }
      const parts = readable.filter((b) => (typeof b === 'number' ? b : b.length) > 0);
      const spec = r(40) === 0 ? { readable: [r(12) + 1] } : r(40) === 0 ? { readable: parts, writable: [1 + r(100)] } : { readable: parts };
      const head = s.tx.addChain(spec, { indirect: r(4) === 0, publish: false });
      if (r(3000) === 0) s.tx.setDesc(head, { addr: RAM + r(1 << 20), len: 64, flags: 0, next: 0 }); // outside RAM: NEEDS_RESET
      s.tx.publish(head);
      posted++;
    }
    // the device, in a random order; memory as the driver left it
    this.shadow.set(s.bytes);
    const allowed = [...this.outstanding.values()].flat();
    for (const op of [r(3), r(3), r(3)]) {
      if (op === 0) s.dev.queueNotify(TX_QUEUE);
      else if (op === 1) s.dev.queueNotify(RX_QUEUE);
      else s.dev.onReadable();
    }
    // only posted rx buffers and the used rings (and avail_event) may have changed
    for (const [gpa, len] of allowed) this.shadow.set(s.bytes.subarray(gpa, gpa + len), gpa);
    for (const d of [s.rx, s.tx]) this.shadow.set(s.bytes.subarray(d.used, d.used + usedRingBytes(QSIZE)), d.used);
    assert.equal(Buffer.compare(s.bytes, this.shadow), 0, 'guest memory written outside the posted rx buffers');
    if (s.resets.length > 0) {
      assert.match(s.resets[0]!, /not in guest RAM/);
      this.resets++;
      return -posted; // the caller starts over
    }
    this.checkUsed();
    return posted;
  }

  /** With vnet headers the device writes num_buffers over the backend's header; the rest is the backend's. */
  private sameFrame(sent: Buffer, got: Buffer): boolean {
    if (!this.mix.vnetHdr) return sent.equals(got);
    return sent.length === got.length && sent.subarray(0, 10).equals(got.subarray(0, 10)) && sent.subarray(12).equals(got.subarray(12));
  }

  private checkUsed(): void {
    const { s } = this;
    const st = s.dev.stats();
    // tx: every chain back, the network has exactly what was counted as sent
    this.txUsed += s.tx.drainUsed().length;
    for (let f = s.backend.receive(); f; f = s.backend.receive()) this.txReceived++;
    assert.equal(st.tx_packets, this.txReceived);
    assert.equal(st.tx_packets! + st.tx_dropped!, this.txUsed, 'every tx chain given back was sent or dropped');
    // rx: frames in order, each over num_buffers chains
    const used = s.rx.drainUsed();
    const data = used.map((u) => Buffer.from(s.rx.written(u.id, u.len)));
    for (const u of used) this.outstanding.delete(u.id);
    for (let i = 0; i < used.length;) {
      if (used[i]!.len === 0) { this.rxBad++; i++; continue; }
      const nbuf = data[i]!.readUInt16LE(10);
      assert.ok(nbuf >= 1 && i + nbuf <= used.length, `num_buffers ${nbuf} with ${used.length - i} used entries left`);
      if (!this.mix.features.includes(VIRTIO_NET_F_MRG_RXBUF)) assert.equal(nbuf, 1);
      const frame = Buffer.concat(data.slice(i, i + nbuf));
      i += nbuf;
      const body = frame.subarray(this.mix.vnetHdr ? 0 : VIRTIO_NET_HDR_SIZE);
      if (!this.mix.vnetHdr) assert.deepEqual(frame.subarray(0, 10), Buffer.alloc(10), 'a zero header without vnet headers');
      for (;;) {
        const want = this.pending.shift();
        assert.ok(want, 'a frame delivered that was not sent');
        if (this.sameFrame(want, body)) break;
        this.rxSkipped++;
      }
      this.rxDelivered++;
      this.rxBytes += frame.length - VIRTIO_NET_HDR_SIZE;
    }
    assert.equal(st.rx_packets, this.rxDelivered);
    assert.equal(st.rx_bytes, this.rxBytes);
    assert.equal(st.rx_bad_buffers, this.rxBad);
    assert.ok(st.rx_dropped! >= this.rxSkipped && st.rx_dropped! <= this.rxSkipped + this.pending.length, 'drops are frames skipped, or taken and not yet seen skipped');
  }
}

test(`virtio-net fuzz: ${CHAINS} random tx chains and rx buffer layouts, every feature mix`, () => {
  const r = rng(0x5eed_0e7);
  let chains = 0, mix = 0, resets = 0;
  const total = { txSent: 0, txDropped: 0, rxDelivered: 0, rxDropped: 0, rxBad: 0 };
  const t0 = Date.now();
  while (chains < CHAINS) {
    const run = new Run(mix++);
    try {
      for (let round = 0; round < 5000 && chains < CHAINS; round++) {
        const n = run.round(r);
        chains += Math.abs(n);
        if (n < 0) { resets++; break; }
      }
      const st = run.s.dev.stats();
      total.txSent += st.tx_packets!; total.txDropped += st.tx_dropped!;
      total.rxDelivered += st.rx_packets!; total.rxDropped += st.rx_dropped!; total.rxBad += st.rx_bad_buffers!;
    } finally {
      run.s.close();
    }
  }
  // every path was taken, many times
  assert.ok(resets > 0, 'some chains pointed outside RAM');
  for (const [k, v] of Object.entries(total)) assert.ok(v > CHAINS / 1000, `${k}: ${v} (${JSON.stringify(total)})`);
  assert.ok(Date.now() - t0 < 60_000, `took ${Date.now() - t0} ms`);
});
