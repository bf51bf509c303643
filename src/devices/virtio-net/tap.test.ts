/**
 * The tap backend on a real tap, in a network namespace of its own: the
 * test runs itself again under `unshare -n` (TSHYVE_TAP_CHILD=1), where it
 * creates a tap, gives the kernel's side an address and a static neighbour
 * for the "guest", writes an ICMP echo request through the backend and
 * reads the kernel's echo reply back; then the same through virtio-net's I/O
 * thread and the guest's queues. Nothing leaves the namespace, which
 * goes away with the child. Skipped without root, /dev/net/tun or unshare.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../../errors.js';
import { IoVecs } from '../../memory/iovec.js';
import { createGuestRam } from '../../memory/ram.js';
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VIRTIO_NET_HDR_SIZE } from './backend.js';
import { TapBackend } from './tap.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { signalEventfd } from '../../host/eventfd.js';
import { VirtioCore } from '../../virtio/device.js';
import { VIRTIO_F_VERSION_1, featureBit } from '../../virtio/constants.js';
import { MockSplitQueue } from '../../virtio/testing/mock-driver.js';
import { IoThreadHost } from '../io-thread/index.js';
import { NET_COUNTERS, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF, VirtioNet } from './device.js';
import type { NetIoThreadInit } from './io-thread.js';

const TAP = 'taptest0';
const HOST_MAC = '02:00:00:00:00:01';
const GUEST_MAC = [2, 0, 0, 0, 0, 2];

function unavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root: cannot make a tap or a network namespace';
  try { accessSync('/dev/net/tun', constants.R_OK | constants.W_OK); } catch { return 'no usable /dev/net/tun'; }
  const r = spawnSync('unshare', ['-n', 'true']);
  if (r.status !== 0) return `no private network namespace (unshare -n: ${r.error?.message ?? r.stderr.toString().trim()})`;
  return undefined;
}

function checksum(b: Buffer): number {
  let s = 0;
  for (let i = 0; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length & 1) s += b[b.length - 1]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/** An Ethernet frame: ICMP echo request 10.0.0.2 -> 10.0.0.1. */
function echoRequest(payload: Buffer): Buffer {
  const icmp = Buffer.concat([Buffer.from([8, 0, 0, 0, 0x12, 0x34, 0, 1]), payload]);
  icmp.writeUInt16BE(checksum(icmp), 2);
  const ip = Buffer.from([0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
  ip.writeUInt16BE(20 + icmp.length, 2);
  ip.writeUInt16BE(checksum(ip), 10);
  const eth = Buffer.from([...HOST_MAC.split(':').map((x) => parseInt(x, 16)), ...GUEST_MAC, 0x08, 0x00]);
  return Buffer.concat([eth, ip, icmp]);
}

async function child(): Promise<void> {
  const tap = TapBackend.open(TAP);
  const sh = (...a: string[]) => execFileSync('ip', a, { stdio: 'pipe' });
  sh('link', 'set', TAP, 'address', HOST_MAC);
  sh('addr', 'add', '10.0.0.1/24', 'dev', TAP);
  sh('link', 'set', TAP, 'up');
  sh('neigh', 'add', '10.0.0.2', 'lladdr', '02:00:00:00:00:02', 'dev', TAP);
  tap.setOffloads(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
  const feats = execFileSync('ethtool', ['-k', TAP]).toString();
  assert.match(feats, /tcp-segmentation-offload: on/, 'TUNSETOFFLOAD took TSO');
  // guest memory as in a VM: frames go by host address
  const ram = createGuestRam(1 << 20);
  const host = Number(ram.hostAddr);
  const iov = new IoVecs(4);
  const payload = Buffer.from('tshyve tap test payload, 0123456789');
  const frame = echoRequest(payload);
  const out = Buffer.concat([Buffer.alloc(VIRTIO_NET_HDR_SIZE), frame]);
  ram.bytes.set(out, 0);
  iov.fill(Float64Array.of(0, 6, host, 6, out.length - 6, host + 6), 0, 2, 0, out.length);
  assert.equal(tap.writev(iov), out.length, 'the whole frame, header first, in one writev');
  // the reply: skip what else the kernel sends (IPv6 router solicitations ...)
  const rxAt = 0x10000;
  iov.fill(Float64Array.of(rxAt, 65536, host + rxAt), 0, 1, 0, 65536);
  const end = Date.now() + 5000;
  for (;;) {
    const n = tap.readv(iov);
    if (n > 0) {
      const got = Buffer.from(ram.bytes.subarray(rxAt, rxAt + n));
      const eth = got.subarray(VIRTIO_NET_HDR_SIZE);
      if (eth.readUInt16BE(12) === 0x0800 && eth[14 + 9] === 1 && eth[34] === 0) {
        assert.deepEqual([...eth.subarray(0, 6)], GUEST_MAC, 'to the guest');
        assert.deepEqual(eth.subarray(eth.length - payload.length), payload, 'the echo payload back');
        break;
      }
    } else {
      assert.ok(n === -11, `readv: ${n}`);
    }
    if (Date.now() > end) throw new Error('no echo reply from the kernel');
    await sleep(10);
  }
  // an existing interface that is not a tap
  assert.throws(() => TapBackend.open('lo'), (e: unknown) => e instanceof UserError && /exists and is not a tap/.test(e.message));
  ram.close();
  await throughIoThread(tap, payload);
  tap.close();
  process.stdout.write('tap child ok\n');
}

/**
 * The whole data path as a VM has it: virtio-net's I/O thread (io-thread.ts)
 * over the tap, the guest's tx and rx queues in memfd RAM, notifies as
 * eventfd writes; the echo request goes out on tx, the reply comes in on rx
 * because the thread waits on the tap's fd.
 */
async function throughIoThread(tap: TapBackend, payload: Buffer): Promise<void> {
  const RAM = 1 << 20;
  const ram = createGuestRam(RAM);
  const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
  const counters = new SharedArrayBuffer(8 * NET_COUNTERS.length);
  const mac = Uint8Array.from(GUEST_MAC);
  const inner = new VirtioNet({ mac, vnetHdr: true, counters });
  const errors: string[] = [];
  const dev = new IoThreadHost<NetIoThreadInit>(inner, {
    worker: new URL('./io-thread.js', import.meta.url),
    init: { mac, counters, backend: { type: 'tap', fd: tap.fd, vnetHdr: true, data: TAP } },
    ram: { hostAddr: ram.hostAddr, size: RAM, regions: [{ gpa: 0, offset: 0, size: RAM }] },
    label: 'virtio-net', threadName: 'net-io-test', onError: (m) => errors.push(m), mainThreadState: true,
  });
  const raised: number[] = [];
  const core = new VirtioCore(dev, mem, { raiseQueueInterrupt: (q) => raised.push(q), raiseConfigInterrupt: () => {}, guestError: (m) => errors.push(m) });
  try {
    core.writeStatus(1); core.writeStatus(3);
    core.writeDriverFeatures(featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_NET_F_MRG_RXBUF) | featureBit(VIRTIO_NET_F_GUEST_CSUM));
    core.writeStatus(0x0b);
    const [rx, tx] = [0, 1].map((q) => {
      const drv = new MockSplitQueue(mem, 64, { base: 0x40000 * (q + 1), dataEnd: 0x40000 * (q + 2) });
      drv.configure(core.queues[q]!);
      return drv;
    }) as [MockSplitQueue, MockSplitQueue];
    core.writeStatus(0x0f);
    assert.ok(core.active, errors.join('; '));
    for (let i = 0; i < 8; i++) rx.addChain({ writable: [2048] });
    tx.addChain({ readable: [Buffer.alloc(VIRTIO_NET_HDR_SIZE), echoRequest(payload)] });
    signalEventfd(dev.offload.notifyFd(1));
    const end = Date.now() + 5000;
    let reply: Buffer | undefined;
    while (!reply) {
      if (Date.now() > end) throw new Error(`no echo reply on the rx queue (${JSON.stringify(inner.stats())}; ${errors.join('; ')})`);
      await sleep(10);
      const frames = rx.drainUsed().map((u) => Buffer.from(rx.written(u.id, u.len)).subarray(VIRTIO_NET_HDR_SIZE));
      for (const eth of frames) {
        if (eth.readUInt16BE(12) === 0x0800 && eth[14 + 9] === 1 && eth[34] === 0) reply = eth;
        rx.addChain({ writable: [2048] });
      }
      if (frames.length > 0) signalEventfd(dev.offload.notifyFd(0));
    }
    assert.deepEqual(reply.subarray(reply.length - payload.length), payload);
    assert.equal(tx.usedIdx, 1);
    const st = inner.stats();
    assert.equal(st.tx_packets, 1);
    assert.ok(st.rx_packets! >= 1);
    assert.ok(raised.includes(0) && raised.includes(1), `interrupts for both queues: ${raised.join(',')}`);
    assert.deepEqual(errors, []);
  } finally {
    dev.destroy();
    ram.close();
  }
}

if (process.env.TSHYVE_TAP_CHILD) {
  await child();
} else {
  test('tap backend: TUNSETIFF with vnet headers, TUNSETOFFLOAD, a frame out by writev and the kernel\'s reply in by readv (private netns)', (t) => {
    const why = unavailable();
    if (why) { t.skip(why); return; }
    const r = spawnSync('unshare', ['-n', process.execPath, fileURLToPath(import.meta.url)], {
      env: { ...process.env, TSHYVE_TAP_CHILD: '1' }, timeout: 30_000,
    });
    assert.equal(r.status, 0, `child: ${r.stderr.toString()}`);
    assert.match(r.stdout.toString(), /tap child ok/);
  });

  test('bad tap names are one-line UserErrors naming the key', () => {
    for (const name of ['', 'a/b', 'x'.repeat(16), 'tap 0', '..']) {
      assert.throws(() => TapBackend.open(name, 'pci.0.3.0.backend'), (e: unknown) => e instanceof UserError && /^pci\.0\.3\.0\.backend: .* is not a tap interface name/.test(e.message), name);
    }
  });
}
