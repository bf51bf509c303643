/**
 * The snapshot on disk: FILE, one JSON document, and FILE.ram, the guest
 * RAM as a flat image (sparse: all-zero chunks are holes). The document is
 * versioned and carries a SHA-256 of each part and a CRC-32 per RAM chunk;
 * see docs/snapshot-format.md. Both files are written to temporary names and
 * renamed into place, so a crash leaves the old snapshot whole, and a VM
 * running from FILE.ram (mapped copy-on-write) never sees it change.
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync, ftruncateSync, fsyncSync, readSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { setImmediate as yieldNow } from 'node:timers/promises';
import { SnapshotError, StateReader, StateWriter } from './state.js';
import { MAX_DEVICES } from './persist.js';

/** How far a save has got: bytes of guest RAM written so far, of `total`. */
export interface SnapshotProgress {
  done: number;
  total: number;
}

export const SNAPSHOT_MAGIC = 'tshyve-snapshot';
/** 2: `devices` is one list of `{ id, kind, state }` (version 1 had pci/uarts/rtc/pm parts). */
export const SNAPSHOT_VERSION = 2;
/** RAM is checked and skipped (when zero) in chunks of this size. */
export const RAM_CHUNK = 256 * 1024;
/** The parts of the document that carry a checksum, in order. */
export const PARTS = ['config', 'ram', 'vm', 'vcpus', 'devices'] as const;
export type PartName = (typeof PARTS)[number];
const MAX_DOC_BYTES = 64 * 1024 * 1024;

const ZERO = Buffer.alloc(RAM_CHUNK);
const ZERO_CRC = crc32(ZERO);

export function ramFileFor(file: string): string { return `${file}.ram`; }

/** The checksum recorded for one part: SHA-256 of its compact JSON. */
export function partChecksum(x: unknown): string {
  return createHash('sha256').update(JSON.stringify(x)).digest('hex');
}

export interface RamWriteResult { bytesWritten: number; crcs: Buffer }

/**
 * Write guest RAM to `path`: only what the guest ever touched (`ranges`)
 * and, of that, only non-zero pieces; the rest stays a hole. Writes go
 * straight from guest memory in runs of up to 8 MiB, and the event loop gets
 * a turn now and then so progress reaches a controller.
 */
export async function writeRam(path: string, ram: Uint8Array, ranges: [number, number][],
  onProgress?: (p: SnapshotProgress) => void): Promise<RamWriteResult> {
  const chunks = Math.ceil(ram.length / RAM_CHUNK);
  const crcs = Buffer.alloc(chunks * 4);
  const fd = openSync(path, 'w', 0o600);
  let written = 0;
  try {
    ftruncateSync(fd, ram.length);
    let runStart = 0, runEnd = 0;
    const flush = () => {
      for (let off = runStart; off < runEnd;) off += writeSync(fd, ram, off, runEnd - off, off);
      written += runEnd - runStart;
      runStart = runEnd = 0;
    };
    const queue = (a: number, b: number) => {
      if (runEnd === a && b - runStart <= 8 * 2 ** 20) { runEnd = b; return; }
      flush();
      runStart = a; runEnd = b;
    };
    let r = 0, lastYield = 0;
    for (let c = 0; c < chunks; c++) {
      const lo = c * RAM_CHUNK, hi = Math.min(lo + RAM_CHUNK, ram.length);
      while (r < ranges.length && ranges[r]![1] <= lo) r++;
      let crc = 0, at = lo;
      for (let i = r; i < ranges.length && ranges[i]![0] < hi; i++) {
        const a = Math.max(lo, ranges[i]![0]), b = Math.min(hi, ranges[i]![1]);
        if (a > at) crc = crc32(ZERO.subarray(0, a - at), crc);
        const piece = ram.subarray(a, b);
        crc = crc32(piece, crc);
        if (Buffer.compare(piece, ZERO.subarray(0, b - a)) !== 0) queue(a, b);
        at = b;
      }
      if (at === lo) crc = hi - lo === RAM_CHUNK ? ZERO_CRC : crc32(ZERO.subarray(0, hi - lo));
      else if (at < hi) crc = crc32(ZERO.subarray(0, hi - at), crc);
      crcs.writeUInt32LE(crc >>> 0, c * 4);
      if (lo - lastYield >= 32 * 2 ** 20) {
        lastYield = lo;
        onProgress?.({ done: lo, total: ram.length });
        await yieldNow();
      }
    }
    flush();
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  onProgress?.({ done: ram.length, total: ram.length });
  return { bytesWritten: written, crcs };
}

export interface SnapshotParts {
  config: Record<string, string>;
  vm: StateWriter;
  vcpus: StateWriter[];
  devices: StateWriter[];
}

/** Save a whole snapshot: RAM first, then the document that names it. */
export async function writeSnapshot(file: string, ram: Uint8Array, ranges: [number, number][], parts: SnapshotParts,
  onProgress?: (p: SnapshotProgress) => void): Promise<{ ramFile: string; ramBytesWritten: number }> {
  const ramFile = ramFileFor(file);
  const tmpRam = `${ramFile}.tmp-${process.pid}`, tmpDoc = `${file}.tmp-${process.pid}`;
  try {
    const { bytesWritten, crcs } = await writeRam(tmpRam, ram, ranges, onProgress);
    const ramPart = new StateWriter().str('file', basename(ramFile)).u64('size', ram.length).u32('chunk', RAM_CHUNK).b64('crc32', crcs).obj;
    const cfg = new StateWriter();
    for (const [k, v] of Object.entries(parts.config)) cfg.str(k, v);
    const body: Record<PartName, unknown> = {
      config: cfg.obj, ram: ramPart, vm: parts.vm.obj, vcpus: parts.vcpus.map((w) => w.obj), devices: parts.devices.map((w) => w.obj),
    };
    const doc = {
      'magic$str': SNAPSHOT_MAGIC,
      'version$u32': SNAPSHOT_VERSION,
      'created$str': new Date().toISOString(),
      ...body,
      checksums: Object.fromEntries(PARTS.map((p) => [`${p}$sha256`, partChecksum(body[p])])),
    };
    const fd = openSync(tmpDoc, 'w', 0o600);
    try { writeSync(fd, JSON.stringify(doc, null, 1) + '\n'); fsyncSync(fd); } finally { closeSync(fd); }
    renameSync(tmpRam, ramFile);
    renameSync(tmpDoc, file);
    return { ramFile, ramBytesWritten: bytesWritten };
  } catch (e) {
    for (const t of [tmpRam, tmpDoc]) { try { unlinkSync(t); } catch { /* not there */ } }
    throw e;
  }
}

export interface LoadedSnapshot {
  file: string;
  created: string;
  config: Map<string, string>;
  ram: { file: string; size: number; chunk: number; crcs: Buffer };
  vm: StateReader;
  vcpus: StateReader[];
  /** one entry per device, `{ id, kind, state }` (persist.ts) */
  devices: StateReader[];
}

/**
 * Read and check a snapshot document: magic, version, every part's
 * checksum, the RAM image's presence and size. The parts' fields are
 * checked later by their owners (StateReader). Throws SnapshotError.
 */
export function readSnapshot(file: string, maxVcpus = 1024): LoadedSnapshot {
  let text: string;
  try {
    if (statSync(file).size > MAX_DOC_BYTES) throw new SnapshotError(`${file} is too large to be a tshyve snapshot`);
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof SnapshotError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new SnapshotError(`cannot read snapshot ${file}: ${code === 'ENOENT' ? 'no such file' : code ?? String(e)}`, 'ENOENT');
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new SnapshotError(`${file} is not a tshyve snapshot (not valid JSON: ${(e as Error).message}; truncated?)`);
  }
  const r = new StateReader(doc, 'snapshot');
  if ((doc as Record<string, unknown>)['magic$str'] !== SNAPSHOT_MAGIC) throw new SnapshotError(`${file} is not a tshyve snapshot (wrong magic)`);
  const version = r.u32('version');
  if (version !== SNAPSHOT_VERSION) throw new SnapshotError(`${file} is a version ${version} snapshot; this tshyve reads version ${SNAPSHOT_VERSION}`);
  const sums = r.obj('checksums');
  const body = doc as Record<string, unknown>;
  for (const p of PARTS) {
    const want = sums.raw(`${p}$sha256`);
    if (!(p in body)) throw new SnapshotError(`snapshot ${file}: part '${p}' is missing`);
    if (typeof want !== 'string' || want !== partChecksum(body[p])) {
      throw new SnapshotError(`snapshot ${file}: checksum of part '${p}' does not match (the file was changed or damaged)`);
    }
  }
  const cfgR = r.obj('config');
  const config = new Map<string, string>();
  for (const k of Object.keys(body['config'] as object)) {
    if (!k.endsWith('$str')) cfgR.fail(k, 'config values are strings');
    const key = k.slice(0, -4);
    config.set(key, cfgR.str(key, 65536));
  }
  const rr = r.obj('ram');
  const ramName = rr.str('file', 4096);
  if (ramName !== basename(ramName) || ramName === '' || ramName === '.' || ramName === '..') rr.fail('file', 'must be a file name next to the snapshot');
  const size = rr.safe('size');
  const chunk = rr.u32('chunk');
  if (chunk !== RAM_CHUNK) rr.fail('chunk', `${chunk}, this tshyve uses ${RAM_CHUNK}`);
  const crcs = rr.b64('crc32', Math.ceil(size / chunk) * 4);
  const ramFile = join(dirname(file), ramName);
  let ramSize: number;
  try { ramSize = statSync(ramFile).size; } catch (e) {
    throw new SnapshotError(`snapshot ${file}: its RAM image ${ramFile} cannot be read (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  if (ramSize !== size) throw new SnapshotError(`snapshot ${file}: RAM image ${ramFile} is ${ramSize} bytes, expected ${size} (truncated or replaced)`);
  const vcpus = r.arr('vcpus', maxVcpus);
  return { file, created: r.str('created', 64), config, ram: { file: ramFile, size, chunk, crcs }, vm: r.obj('vm'), vcpus, devices: r.arr('devices', MAX_DEVICES) };
}

/** Read the whole RAM image and compare each chunk's CRC (snapshot.verify_ram; restore does not need it). */
export function verifyRam(s: LoadedSnapshot): void {
  const fd = openSync(s.ram.file, 'r');
  try {
    if (fstatSync(fd).size !== s.ram.size) throw new SnapshotError(`RAM image ${s.ram.file} changed size`);
    const buf = Buffer.alloc(s.ram.chunk);
    for (let c = 0, off = 0; off < s.ram.size; c++, off += s.ram.chunk) {
      const n = Math.min(s.ram.chunk, s.ram.size - off);
      let got = 0;
      while (got < n) { const k = readSync(fd, buf, got, n - got, off + got); if (k <= 0) break; got += k; }
      if (got !== n || crc32(buf.subarray(0, n)) !== s.ram.crcs.readUInt32LE(c * 4)) {
        throw new SnapshotError(`snapshot ${s.file}: RAM image ${s.ram.file} is damaged at offset 0x${off.toString(16)} (CRC mismatch)`);
      }
    }
  } finally {
    closeSync(fd);
  }
}
