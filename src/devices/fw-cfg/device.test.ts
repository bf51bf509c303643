import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Bus } from '../../bus/bus.js';
import { SnapshotError, StateReader, StateWriter } from '../../snapshot/state.js';
import {
  DMA_CTL, FILE_ENTRY_SIZE, FW_CFG_DMA_PORT, FW_CFG_DMA_PORT_LEN, FW_CFG_PORT, FW_CFG_PORT_LEN, FwCfg, KEY,
} from './device.js';

const SIG = Buffer.from('QEMU');
const BIG = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 7) & 0xff));

function setup(memSize = 1 << 20) {
  const mem = GuestMemory.ofSize(memSize);
  const fw = new FwCfg(mem, {
    keyed: new Map<number, Uint8Array>([[KEY.SIGNATURE, SIG], [KEY.ID, Uint8Array.of(3, 0, 0, 0)], [0x8003, Uint8Array.of(0xaa, 0xbb)]]),
    files: [{ name: 'etc/a', data: Uint8Array.of(1, 2, 3) }, { name: 'opt/big', data: BIG }],
  });
  const pio = new Bus('pio');
  pio.register(FW_CFG_PORT, FW_CFG_PORT_LEN, fw.port, 'fw-cfg');
  pio.register(FW_CFG_DMA_PORT, FW_CFG_DMA_PORT_LEN, fw.dmaPort, 'fw-cfg-dma');
  return { mem, fw, pio };
}

function readPio(pio: Bus, key: number, n: number): Buffer {
  pio.write(FW_CFG_PORT, 2, key);
  return Buffer.from(Array.from({ length: n }, () => pio.read(FW_CFG_PORT + 1, 1)));
}

function bswap32(v: number): number { return Buffer.from(Uint32Array.of(v).buffer).readUInt32BE(0); }

/** A FWCfgDmaAccess at `at` in guest memory, started through the ports as OVMF does; returns the control field after. */
function dma(mem: GuestMemory, pio: Bus, at: number, control: number, length: number, address: number): number {
  const d = Buffer.alloc(16);
  d.writeUInt32BE(control >>> 0, 0); d.writeUInt32BE(length, 4); d.writeBigUInt64BE(BigInt(address), 8);
  mem.write(at, d);
  pio.write(FW_CFG_DMA_PORT, 4, bswap32(Math.floor(at / 2 ** 32)));
  pio.write(FW_CFG_DMA_PORT + 4, 4, bswap32(at >>> 0));
  return Buffer.from(mem.read(at, 4)).readUInt32BE(0);
}

test('fw_cfg ports: the signature a byte at a time, zeros past an item\'s end and for unknown keys', () => {
  const { pio } = setup();
  assert.deepEqual(readPio(pio, KEY.SIGNATURE, 6), Buffer.from('QEMU\0\0'));
  assert.deepEqual(readPio(pio, KEY.ID, 4), Buffer.of(3, 0, 0, 0));
  assert.deepEqual(readPio(pio, 0x1234, 2), Buffer.of(0, 0));
  // bit 14 (the old write channel) is ignored, bit 15 picks the architecture's keys
  assert.deepEqual(readPio(pio, 0x4000 | KEY.SIGNATURE, 4), SIG);
  assert.deepEqual(readPio(pio, 0x8003, 2), Buffer.of(0xaa, 0xbb));
  assert.deepEqual(readPio(pio, 0x0003, 2), Buffer.of(0, 0));
  // a data write is ignored, a selector write restarts the item
  pio.write(FW_CFG_PORT, 2, KEY.SIGNATURE);
  pio.read(FW_CFG_PORT + 1, 1);
  pio.write(FW_CFG_PORT + 1, 1, 0x55);
  assert.equal(pio.read(FW_CFG_PORT + 1, 1), 'E'.charCodeAt(0));
  assert.equal(pio.read(FW_CFG_PORT + 1, 2), 0, 'only byte reads read data');
});

test('fw_cfg file directory: big-endian count, 64-byte entries numbered from 0x20', () => {
  const { pio } = setup();
  const dir = readPio(pio, KEY.FILE_DIR, 4 + 2 * FILE_ENTRY_SIZE);
  assert.equal(dir.readUInt32BE(0), 2);
  const entry = (i: number) => {
    const e = dir.subarray(4 + i * FILE_ENTRY_SIZE, 4 + (i + 1) * FILE_ENTRY_SIZE);
    return { size: e.readUInt32BE(0), select: e.readUInt16BE(4), name: e.subarray(8).toString('latin1').replace(/\0+$/, '') };
  };
  assert.deepEqual(entry(0), { size: 3, select: 0x20, name: 'etc/a' });
  assert.deepEqual(entry(1), { size: BIG.length, select: 0x21, name: 'opt/big' });
  assert.deepEqual(readPio(pio, 0x20, 3), Buffer.of(1, 2, 3));
});

test('fw_cfg DMA register: reads "QEMU CFG", a transfer reads, skips, selects and reports', () => {
  const { mem, pio } = setup();
  const sig = Buffer.alloc(8);
  sig.writeUInt32LE(pio.read(FW_CFG_DMA_PORT, 4), 0);
  sig.writeUInt32LE(pio.read(FW_CFG_DMA_PORT + 4, 4), 4);
  assert.equal(sig.toString('latin1'), 'QEMU CFG');
  // select + read the whole big file
  assert.equal(dma(mem, pio, 0x1000, (0x21 << 16) | DMA_CTL.SELECT | DMA_CTL.READ, BIG.length, 0x4000), 0);
  assert.deepEqual(Buffer.from(mem.read(0x4000, BIG.length)), BIG);
  // skip, then read on from there; past the end reads zeros
  assert.equal(dma(mem, pio, 0x1000, (0x21 << 16) | DMA_CTL.SELECT | DMA_CTL.SKIP, 4990, 0), 0);
  mem.fill(0x8000, 32, 0xee);
  assert.equal(dma(mem, pio, 0x1000, DMA_CTL.READ, 32, 0x8000), 0);
  assert.deepEqual(Buffer.from(mem.read(0x8000, 32)), Buffer.concat([BIG.subarray(4990), Buffer.alloc(22)]));
  // writes are refused: every item is read-only
  assert.equal(dma(mem, pio, 0x1000, (0x20 << 16) | DMA_CTL.SELECT | DMA_CTL.WRITE, 2, 0x8000), DMA_CTL.ERROR);
  assert.deepEqual(readPio(pio, 0x20, 3), Buffer.of(1, 2, 3));
  // no operation bit: nothing moves, success
  assert.equal(dma(mem, pio, 0x1000, (0x20 << 16) | DMA_CTL.SELECT, 3, 0x8000), 0);
});

test('fw_cfg DMA outside guest RAM: the error bit, or nothing when the descriptor itself is outside', () => {
  const { mem, pio, fw } = setup(1 << 16);
  assert.equal(dma(mem, pio, 0x100, (0x21 << 16) | DMA_CTL.SELECT | DMA_CTL.READ, 100, 0xfff0), DMA_CTL.ERROR);
  assert.equal(dma(mem, pio, 0x100, DMA_CTL.READ, 100, 2 ** 60), DMA_CTL.ERROR);
  assert.equal(dma(mem, pio, 0x100, (0x1234 << 16) | DMA_CTL.SELECT | DMA_CTL.READ, 0xffffffff, 0), DMA_CTL.ERROR, 'zeros for 4 GiB do not fit');
  const before = Buffer.from(mem.read(0, 1 << 16));
  fw.dma(0xfff8); // straddles RAM's end
  fw.dma(2 ** 62);
  assert.deepEqual(Buffer.from(mem.read(0, 1 << 16)), before);
});

test('fw_cfg state: selector, offset and the DMA register\'s high half round-trip; bad values are refused', () => {
  const { pio, fw } = setup();
  readPio(pio, 0x21, 10);
  pio.write(FW_CFG_DMA_PORT, 4, 0x01000000);
  const w = new StateWriter();
  fw.saveState(w);
  const json = JSON.parse(JSON.stringify(w.obj)) as Record<string, unknown>;
  const { pio: pio2, fw: fw2 } = setup();
  fw2.restoreState(new StateReader(json, 'fw'));
  assert.equal(pio2.read(FW_CFG_PORT + 1, 1), BIG[10]);
  const bad = (patch: Record<string, unknown>) => assert.throws(() => fw2.restoreState(new StateReader({ ...json, ...patch }, 'fw')), SnapshotError);
  bad({ 'offset$u32': BIG.length + 1 });
  bad({ 'selector$u16': 0x10000 });
  bad({ 'dmaHigh$u32': -1 });
});

test('fw_cfg snapshot mid-sequence: a fresh device restored from it goes on exactly as the original (reads, DMA results, guest RAM)', () => {
  const MEM = 1 << 16;
  let seed = 777;
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  // selects, byte reads, whole DMA transfers (descriptor written to RAM, both halves of the register) and a lone
  // high-half write, so that some snapshots fall between the DMA register's two writes
  type Op = { kind: 'select' | 'read' | 'dma' | 'high'; key: number; len: number; at: number; buf: number };
  const ops: Op[] = Array.from({ length: 2000 }, () => ({
    kind: (['select', 'read', 'read', 'read', 'dma', 'high'] as const)[rnd(6)]!, key: [KEY.SIGNATURE, KEY.FILE_DIR, 0x20, 0x21, 0x8003][rnd(5)]!,
    len: rnd(700), at: 0x100 * rnd(16), buf: 0x2000 + rnd(0x8000),
  }));
  const step = (x: ReturnType<typeof setup>, op: Op): number | undefined => {
    switch (op.kind) {
      case 'select': x.pio.write(FW_CFG_PORT, 2, op.key); return undefined;
      case 'read': return x.pio.read(FW_CFG_PORT + 1, 1);
      case 'high': x.pio.write(FW_CFG_DMA_PORT, 4, bswap32(1)); return undefined; // the next transfer's descriptor is above 4 GiB: dropped
      case 'dma': {
        const d = Buffer.alloc(16);
        d.writeUInt32BE(((op.key << 16) | (op.len & 1 ? DMA_CTL.SELECT : 0) | [DMA_CTL.READ, DMA_CTL.SKIP][op.len & 2 ? 1 : 0]!) >>> 0, 0);
        d.writeUInt32BE(op.len, 4); d.writeBigUInt64BE(BigInt(op.buf), 8);
        x.mem.write(op.at, d);
        x.pio.write(FW_CFG_DMA_PORT + 4, 4, bswap32(op.at));
        return Buffer.from(x.mem.read(op.at, 4)).readUInt32BE(0);
      }
    }
  };
  for (const cut of [1, 333, 1000, 1777]) {
    const a = setup(MEM);
    for (const op of ops.slice(0, cut)) step(a, op);
    const w = new StateWriter();
    a.fw.saveState(w);
    const b = setup(MEM);
    b.mem.write(0, a.mem.read(0, MEM)); // the guest's RAM comes with the snapshot
    b.fw.restoreState(new StateReader(JSON.parse(JSON.stringify(w.obj)) as Record<string, unknown>, 'fwcfg'));
    ops.slice(cut).forEach((op, i) => assert.equal(step(b, op), step(a, op), `${op.kind} ${cut + i} after a snapshot at ${cut}`));
    assert.deepEqual(Buffer.from(b.mem.read(0, MEM)), Buffer.from(a.mem.read(0, MEM)), `guest RAM after a snapshot at ${cut}`);
  }
});

test('fw_cfg fuzz: 10^5 random port and DMA operations stay inside guest RAM and never throw', () => {
  const { mem, pio, fw } = setup(1 << 16);
  let seed = 12345;
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  const pick = <T>(xs: readonly T[]): T => xs[rnd(xs.length)]!;
  const sizes = [1, 2, 4] as const;
  for (let i = 0; i < 100_000; i++) {
    const op = rnd(6);
    if (op === 0) pio.write(FW_CFG_PORT + rnd(2), pick(sizes), pick([0, 1, 0x19, 0x20, 0x21, 0x8003, rnd(0x10000)]));
    else if (op === 1) pio.read(FW_CFG_PORT + rnd(2), pick(sizes));
    else if (op === 2) pio.read(FW_CFG_DMA_PORT + rnd(8), pick(sizes));
    else if (op === 3) pio.write(FW_CFG_DMA_PORT + rnd(8), pick(sizes), rnd(2 ** 32));
    else {
      // a descriptor somewhere (often in RAM) with random fields
      const at = pick([rnd(1 << 16), (1 << 16) - rnd(32), rnd(2 ** 32), 2 ** 40]);
      if (mem.contains(at, 16)) {
        const d = Buffer.alloc(16);
        d.writeUInt32BE(((pick([0x19, 0x20, 0x21, rnd(0x10000)]) << 16) | rnd(0x20)) >>> 0, 0);
        d.writeUInt32BE(pick([rnd(64), rnd(1 << 17), 0xffffffff]), 4);
        d.writeBigUInt64BE(BigInt(pick([rnd(1 << 16), (1 << 16) - rnd(64), rnd(2 ** 32)])), 8);
        mem.write(at, d);
      }
      fw.dma(at);
    }
  }
  // still working afterwards
  assert.deepEqual(readPio(pio, KEY.SIGNATURE, 4), SIG);
});
