/**
 * The virtio-net model over guest RAM and a socketpair backend
 * (testing.ts): tx frames reach the network byte for byte, rx frames land
 * in guest buffers with their header and num_buffers, rx waits for room,
 * merged buffers, offloads, hostile chains, save/restore of the MAC.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { VIRTQ_DESC_F_NEXT } from '../../virtio/constants.js';
import { StateReader, StateWriter } from '../../snapshot/state.js';
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VIRTIO_NET_HDR_SIZE } from './backend.js';
import {
  RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_HOST_TSO6, VirtioNet, tunOffloads,
} from './device.js';
import { netSetup } from './testing.js';

const hdr = (flags = 0, gso = 0, numBuffers = 0): Buffer => {
  const h = Buffer.alloc(VIRTIO_NET_HDR_SIZE);
  h[0] = flags; h[1] = gso; h.writeUInt16LE(numBuffers, 10);
  return h;
};
const ALL = [VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6];

test('features and config: MAC, LINK_UP, one queue pair, MTU only when set; offloads only with a vnet-header backend', () => {
  const d = new VirtioNet({ mac: Uint8Array.of(0x58, 0x9c, 0xfc, 1, 2, 3), mtu: 9000, vnetHdr: true });
  assert.equal(d.deviceType, 1);
  assert.equal(d.numQueues, 2);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((i) => d.readConfig(i, 1)), [0x58, 0x9c, 0xfc, 1, 2, 3]);
  assert.equal(d.readConfig(6, 2), 1);
  assert.equal(d.readConfig(8, 2), 1);
  assert.equal(d.readConfig(10, 2), 9000);
  assert.ok(d.features & (1n << BigInt(VIRTIO_NET_F_MTU)));
  assert.ok(d.features & (1n << BigInt(VIRTIO_NET_F_GUEST_TSO4)));
  const bare = new VirtioNet({ mac: Uint8Array.of(2, 0, 0, 0, 0, 1), vnetHdr: false });
  assert.equal(bare.features & (1n << BigInt(VIRTIO_NET_F_MTU)), 0n);
  for (const b of [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_TSO6]) {
    assert.equal(bare.features & (1n << BigInt(b)), 0n, `bit ${b} not offered without vnet headers`);
  }
  assert.ok(bare.features & (1n << BigInt(VIRTIO_NET_F_MRG_RXBUF)));
  bare.writeConfig();
  assert.equal(bare.readConfig(0, 1), 2, 'the MAC is read-only');
});

test('TUNSETOFFLOAD follows what the guest accepted', () => {
  const bit = (n: number) => 1n << BigInt(n);
  assert.equal(tunOffloads(0n), 0);
  assert.equal(tunOffloads(bit(VIRTIO_NET_F_GUEST_TSO4)), 0, 'TSO needs GUEST_CSUM');
  assert.equal(tunOffloads(bit(VIRTIO_NET_F_GUEST_CSUM)), TUN_F_CSUM);
  assert.equal(tunOffloads(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6)), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
  const s = netSetup(ALL);
  try {
    assert.equal(s.backend.offloads, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, 'set at activation');
  } finally { s.close(); }
});

test('tx: a frame split over buffers, header in its own, reaches the backend byte for byte, with its header', () => {
  const s = netSetup(ALL);
  try {
    const frame = randomBytes(1400);
    const h = hdr(1, 1); // NEEDS_CSUM, TCPV4: negotiated
    const head = s.tx.addChain({ readable: [h, frame.subarray(0, 14), frame.subarray(14, 600), frame.subarray(600)] }, { gap: 64 });
    s.dev.queueNotify(TX_QUEUE);
    assert.deepEqual(s.tx.drainUsed(), [{ id: head, len: 0 }]);
    assert.deepEqual(s.backend.receive(), Buffer.concat([h, frame]));
    assert.deepEqual(s.signalled, [TX_QUEUE]);
    const st = s.dev.stats();
    assert.deepEqual([st.tx_packets, st.tx_bytes, st.tx_dropped], [1, 1400, 0]);
    // header and frame in one buffer, indirect
    s.tx.addChain({ readable: [Buffer.concat([hdr(), frame])] }, { indirect: true });
    s.dev.queueNotify(TX_QUEUE);
    assert.deepEqual(s.backend.receive(), Buffer.concat([hdr(), frame]));
  } finally { s.close(); }
});

test('tx without vnet headers: the backend gets the bare frame; offloads the guest cannot have asked for are dropped', () => {
  const s = netSetup([VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM], { vnetHdr: false });
  try {
    const frame = randomBytes(60);
    s.tx.addChain({ readable: [hdr(), frame] });
    s.tx.addChain({ readable: [hdr(1), frame] }); // NEEDS_CSUM: CSUM not offered without vnet headers
    s.dev.queueNotify(TX_QUEUE);
    assert.deepEqual(s.backend.receive(), frame);
    assert.equal(s.backend.receive(), undefined);
    assert.equal(s.tx.drainUsed().length, 2);
    assert.deepEqual([s.dev.stats().tx_packets, s.dev.stats().tx_dropped], [1, 1]);
  } finally { s.close(); }
});

test('tx hostile chains: short of a header, over 65550 bytes, bad gso_type or flags, TSO not negotiated: each dropped and counted', () => {
  const s = netSetup([VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM]);
  try {
    const eth = randomBytes(100);
    s.tx.addChain({ readable: [Buffer.alloc(11)] });
    s.tx.addChain({ readable: [hdr()] }); // header, no frame
    s.tx.addChain({ readable: [hdr(), 65551] });
    s.tx.addChain({ readable: [hdr(0, 3), eth] }); // UDP (UFO): not offered
    s.tx.addChain({ readable: [hdr(0, 0x81), eth] }); // TCPV4 | ECN
    s.tx.addChain({ readable: [hdr(0, 1), eth] }); // TCPV4: HOST_TSO4 not negotiated here
    s.tx.addChain({ readable: [hdr(0x40), eth] }); // unknown flag
    s.tx.addChain({ readable: [hdr(), eth], writable: [16] }); // writable part ignored: sent
    s.dev.queueNotify(TX_QUEUE);
    assert.equal(s.tx.drainUsed().length, 8, 'every chain given back');
    assert.deepEqual(s.backend.receive(), Buffer.concat([hdr(), eth]));
    assert.equal(s.backend.receive(), undefined);
    assert.deepEqual([s.dev.stats().tx_packets, s.dev.stats().tx_dropped], [1, 7]);
    assert.deepEqual(s.resets, []);
  } finally { s.close(); }
});

test('a chain pointing outside RAM, or a broken ring, sets NEEDS_RESET (tx and rx), without throwing', () => {
  for (const q of [TX_QUEUE, RX_QUEUE]) {
    const s = netSetup(ALL);
    try {
      const drv = q === TX_QUEUE ? s.tx : s.rx;
      drv.setDesc(0, { addr: 0x7fff_0000_0000, len: 100, flags: q === RX_QUEUE ? 2 : 0, next: 0 });
      drv.publish(0);
      if (q === RX_QUEUE) s.backend.send(randomBytes(60));
      s.dev.queueNotify(q);
      assert.equal(s.resets.length, 1, `queue ${q}: ${s.resets.join('; ')}`);
      assert.match(s.resets[0]!, /not in guest RAM/);
      // a loop in the descriptor chain
      const t = netSetup(ALL);
      try {
        const d2 = q === TX_QUEUE ? t.tx : t.rx;
        d2.setDesc(0, { addr: 0x1000, len: 100, flags: VIRTQ_DESC_F_NEXT | (q === RX_QUEUE ? 2 : 0), next: 0 });
        d2.publish(0);
        if (q === RX_QUEUE) t.backend.send(randomBytes(60));
        t.dev.queueNotify(q);
        assert.equal(t.resets.length, 1);
      } finally { t.close(); }
    } finally { s.close(); }
  }
});

test('rx: a frame lands in the guest\'s buffer after the backend\'s header, with num_buffers 1', () => {
  const s = netSetup(ALL);
  try {
    const frame = randomBytes(1000);
    const h = hdr(2, 0); // DATA_VALID from the host's stack
    s.backend.send(Buffer.concat([h, frame]));
    const head = s.rx.addChain({ writable: [1536] });
    s.dev.queueNotify(RX_QUEUE); // one 1536-byte buffer is room for this frame (TSO or not)
    const used = s.rx.drainUsed();
    assert.deepEqual(used, [{ id: head, len: 1012 }]);
    const got = Buffer.from(s.rx.written(head, 1012));
    assert.deepEqual(got.subarray(0, 10), h.subarray(0, 10));
    assert.equal(got.readUInt16LE(10), 1, 'num_buffers');
    assert.deepEqual(got.subarray(12), frame);
    assert.deepEqual(s.signalled, [RX_QUEUE]);
    const st = s.dev.stats();
    assert.deepEqual([st.rx_packets, st.rx_bytes, st.rx_dropped], [1, 1000, 0]);
  } finally { s.close(); }
});

test('rx MRG_RXBUF: a TSO frame after small ones goes on past the chains gathered for it, into the next ones; small ones after it take one chain each', () => {
  const s = netSetup(ALL, { eventIdx: true });
  try {
    const heads: number[] = [];
    for (let i = 0; i < 80; i++) heads.push(s.rx.addChain({ writable: [1536] }));
    const frames = [randomBytes(60), randomBytes(65000), randomBytes(100), randomBytes(1400)];
    for (const f of frames) s.backend.send(Buffer.concat([hdr(), f]));
    s.dev.onReadable();
    const used = s.rx.drainUsed();
    const big = Math.ceil((65000 + 12) / 1536);
    assert.deepEqual(used.map((u) => u.id), heads.slice(0, 1 + big + 2));
    let at = 0;
    for (const f of frames) {
      const n = Math.ceil((f.length + 12) / 1536);
      const got = Buffer.concat(used.slice(at, at + n).map((u) => Buffer.from(s.rx.written(u.id, u.len))));
      assert.equal(got.readUInt16LE(10), n, 'num_buffers');
      assert.deepEqual(got.subarray(12), f);
      at += n;
    }
    assert.deepEqual([s.dev.stats().rx_packets, s.dev.stats().rx_dropped], [4, 0]);
  } finally { s.close(); }
});

test('rx without vnet headers: a zero header with num_buffers; the frame follows', () => {
  const s = netSetup([VIRTIO_NET_F_MRG_RXBUF], { vnetHdr: false });
  try {
    const frame = randomBytes(64);
    s.backend.send(frame);
    // header split over two buffers: 7 + 5 bytes, then the frame
    const head = s.rx.addChain({ writable: [7, 5, 100, 1500] });
    s.dev.queueNotify(RX_QUEUE);
    assert.deepEqual(s.rx.drainUsed(), [{ id: head, len: 76 }]);
    const got = Buffer.from(s.rx.written(head, 76));
    assert.deepEqual(got.subarray(0, 12), hdr(0, 0, 1));
    assert.deepEqual(got.subarray(12), frame);
  } finally { s.close(); }
});

test('rx waits without buffers, and does not drop: the guest\'s rx notify brings the frames in', () => {
  const s = netSetup([VIRTIO_NET_F_MRG_RXBUF], { vnetHdr: false });
  try {
    const frames = [randomBytes(100), randomBytes(200), randomBytes(300)];
    for (const f of frames) s.backend.send(f);
    s.dev.onReadable();
    s.dev.onReadable();
    assert.equal(s.rx.usedIdx, 0);
    const heads = [1, 2, 3].map(() => s.rx.addChain({ writable: [1536] }));
    s.dev.queueNotify(RX_QUEUE);
    const used = s.rx.drainUsed();
    assert.deepEqual(used.map((u) => u.id), heads);
    used.forEach((u, i) => assert.deepEqual(Buffer.from(s.rx.written(u.id, u.len)).subarray(12), frames[i]));
    assert.equal(s.dev.stats().rx_dropped, 0);
    // no frame waiting: posted buffers stay with the device's avail ring, untouched
    s.rx.addChain({ writable: [1536] });
    s.dev.onReadable();
    assert.equal(s.rx.drainUsed().length, 0);
    s.backend.send(frames[0]!);
    s.dev.onReadable();
    assert.equal(s.rx.drainUsed().length, 1);
  } finally { s.close(); }
});

test('rx MRG_RXBUF: a 64 KiB TSO frame spans many chains, num_buffers says how many, the driver sees them at once', () => {
  const s = netSetup(ALL, { eventIdx: true });
  try {
    const frame = randomBytes(65000);
    const h = hdr(1, 1);
    s.backend.send(Buffer.concat([h, frame]));
    const heads: number[] = [];
    for (let i = 0; i < 30; i++) heads.push(s.rx.addChain({ writable: [1536] }));
    s.dev.onReadable();
    assert.equal(s.rx.usedIdx, 0, '30 x 1536 bytes is not room for 64 KiB: wait');
    assert.equal(s.rx.availEvent, 30, 'the driver is asked to notify on its next buffer');
    for (let i = 0; i < 30; i++) heads.push(s.rx.addChain({ writable: [1536] }));
    s.dev.queueNotify(RX_QUEUE);
    const used = s.rx.drainUsed();
    const n = Math.ceil((65000 + 12) / 1536);
    assert.equal(used.length, n);
    assert.deepEqual(used.map((u) => u.id), heads.slice(0, n));
    assert.ok(used.slice(0, -1).every((u) => u.len === 1536));
    assert.equal(used.at(-1)!.len, 65012 - 1536 * (n - 1));
    const all = Buffer.concat(used.map((u) => Buffer.from(s.rx.written(u.id, u.len))));
    assert.equal(all.readUInt16LE(10), n, 'num_buffers');
    assert.deepEqual(all.subarray(0, 10), h.subarray(0, 10));
    assert.deepEqual(all.subarray(12), frame);
    // the chains not used are still the device's: the next frame starts at heads[n]
    s.backend.send(Buffer.concat([hdr(), randomBytes(60)]));
    for (let i = 0; i < 30; i++) s.rx.addChain({ writable: [1536] });
    s.dev.queueNotify(RX_QUEUE);
    assert.deepEqual(s.rx.drainUsed().map((u) => u.id), [heads[n]]);
  } finally { s.close(); }
});

test('rx without MRG_RXBUF: one chain per frame; a frame too big for it is dropped and the buffer serves the next', () => {
  const s = netSetup([], { vnetHdr: false });
  try {
    s.backend.send(randomBytes(2000));
    const small = randomBytes(100);
    s.backend.send(small);
    const head = s.rx.addChain({ writable: [1536] });
    s.dev.queueNotify(RX_QUEUE);
    assert.deepEqual(s.rx.drainUsed(), [{ id: head, len: 112 }]);
    assert.deepEqual(Buffer.from(s.rx.written(head, 112)), Buffer.concat([hdr(0, 0, 1), small]));
    assert.equal(s.dev.stats().rx_dropped, 1);
  } finally { s.close(); }
});

test('rx buffers smaller than a header are given back empty and counted; the frame goes to the next buffer', () => {
  const s = netSetup([VIRTIO_NET_F_MRG_RXBUF], { vnetHdr: false });
  try {
    const frame = randomBytes(80);
    s.backend.send(frame);
    const bad = s.rx.addChain({ writable: [11] });
    const bad2 = s.rx.addChain({ readable: [100] });
    const good = s.rx.addChain({ writable: [1536] });
    s.dev.queueNotify(RX_QUEUE);
    assert.deepEqual(s.rx.drainUsed(), [{ id: bad, len: 0 }, { id: bad2, len: 0 }, { id: good, len: 92 }]);
    assert.equal(s.dev.stats().rx_bad_buffers, 2);
    assert.deepEqual(s.resets, []);
  } finally { s.close(); }
});

test('save/restore: the MAC the guest saw comes back; a multicast one is refused', () => {
  const a = new VirtioNet({ mac: Uint8Array.of(0x58, 0x9c, 0xfc, 9, 8, 7) });
  const w = new StateWriter();
  a.saveState(w);
  const b = new VirtioNet({ mac: Uint8Array.of(2, 0, 0, 0, 0, 1) });
  b.restoreState(new StateReader(w.obj, 'device'));
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((i) => b.readConfig(i, 1)), [0x58, 0x9c, 0xfc, 9, 8, 7]);
  const bad = new StateWriter();
  bad.b64('mac', Uint8Array.of(1, 0, 0, 0, 0, 1)).u16('status', 1);
  assert.throws(() => b.restoreState(new StateReader(bad.obj, 'device')), /multicast/);
});
