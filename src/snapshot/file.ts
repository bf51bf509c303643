/**
 * The snapshot on disk: FILE, one JSON document, and FILE.ram, the guest
 * RAM as a flat image (sparse: all-zero chunks are holes). The document is
 * versioned and carries a SHA-256 of each part and a CRC-32 per RAM chunk;
 * see docs/snapshot-format.md, and docs/security.md for what is trusted.
 * Both files are written under random temporary names and renamed into
 * place (secure-files.ts), so a crash leaves the old snapshot whole. A
 * restore copies the RAM image into the VM's own memory: a VM never sees the
 * file change. With a key (snapshot.key) the document carries an HMAC.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { closeSync, writeSync, ftruncateSync, fsyncSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { setImmediate as yieldNow } from 'node:timers/promises';
import type { ConfigTree } from '../config/tree.js';
import { fillGuestRamFromFile, type RamMapping } from '../memory/ram.js';
import { SnapshotError, StateReader, StateWriter } from './state.js';
import { MAX_DEVICES } from './persist.js';
import { MAX_DISKS, readDisks, type DiskRecord } from './disks.js';
import { SnapshotDir, checkSnapshotDir, openInput, readCapped, readKeyFile } from './secure-files.js';

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
/** A part only checkpoints that include disks have (disks.ts); checked like the others when present. */
const DISKS_PART = 'disks';
const MAX_DOC_BYTES = 64 * 1024 * 1024;
/** Deepest nesting a document may have (tshyve writes 7 levels); deeper is refused before anything recurses. */
const MAX_DEPTH = 32;
/** The document's key for its HMAC-SHA256, over the compact JSON of the document without it. */
const HMAC_KEY = 'hmac$sha256';

const ZERO = Buffer.alloc(RAM_CHUNK);
const ZERO_CRC = crc32(ZERO);
const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();
const ZERO_SHA = sha256(ZERO);

export function ramFileFor(file: string): string { return `${file}.ram`; }

/** The checksum recorded for one part: SHA-256 of its compact JSON. */
export function partChecksum(x: unknown): string {
  return createHash('sha256').update(JSON.stringify(x)).digest('hex');
}

/** CRC-32 per chunk; with `withSha`, SHA-256 per chunk too (what a key authenticates RAM with) */
export interface RamWriteResult { bytesWritten: number; crcs: Buffer; sha?: Buffer }

/**
 * Write guest RAM to `fd`: only what the guest ever touched (`ranges`)
 * and, of that, only non-zero pieces; the rest stays a hole. Writes go
 * straight from guest memory in runs of up to 8 MiB, and the event loop gets
 * a turn now and then so progress reaches a controller.
 */
async function writeRam(fd: number, ram: Uint8Array, ranges: [number, number][], withSha: boolean,
  onProgress?: (p: SnapshotProgress) => void): Promise<RamWriteResult> {
  const chunks = Math.ceil(ram.length / RAM_CHUNK);
  const crcs = Buffer.alloc(chunks * 4);
  const sha = withSha ? Buffer.alloc(chunks * 32) : undefined;
  let written = 0;
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
    const h = sha && createHash('sha256');
    const feed = (b: Uint8Array) => { crc = crc32(b, crc); h?.update(b); };
    for (let i = r; i < ranges.length && ranges[i]![0] < hi; i++) {
      const a = Math.max(lo, ranges[i]![0]), b = Math.min(hi, ranges[i]![1]);
      if (a > at) feed(ZERO.subarray(0, a - at));
      const piece = ram.subarray(a, b);
      feed(piece);
      if (Buffer.compare(piece, ZERO.subarray(0, b - a)) !== 0) queue(a, b);
      at = b;
    }
    const zeroChunk = at === lo && hi - lo === RAM_CHUNK;
    if (!zeroChunk && at < hi) feed(ZERO.subarray(0, hi - at));
    crcs.writeUInt32LE(zeroChunk ? ZERO_CRC : crc >>> 0, c * 4);
    if (sha) (zeroChunk ? ZERO_SHA : h!.digest()).copy(sha, c * 32);
    if (lo - lastYield >= 32 * 2 ** 20) {
      lastYield = lo;
      onProgress?.({ done: lo, total: ram.length });
      await yieldNow();
    }
  }
  flush();
  fsyncSync(fd);
  onProgress?.({ done: ram.length, total: ram.length });
  return { bytesWritten: written, crcs, sha };
}

export interface SnapshotParts {
  config: Record<string, string>;
  vm: StateWriter;
  vcpus: StateWriter[];
  devices: StateWriter[];
  /** the disks' checkpoint records (disks.ts), when the checkpoint includes disks */
  disks?: StateWriter[];
}

/** The parts' JSON: what a snapshot document and a migration's state hold. */
export function stateBody(parts: SnapshotParts): Record<'config' | 'vm' | 'vcpus' | 'devices', unknown> {
  const cfg = new StateWriter();
  for (const [k, v] of Object.entries(parts.config)) cfg.str(k, v);
  return { config: cfg.obj, vm: parts.vm.obj, vcpus: parts.vcpus.map((w) => w.obj), devices: parts.devices.map((w) => w.obj) };
}

/** Where a save may go and how it is signed (from snapshot.dir and snapshot.key). */
export interface SaveOptions {
  onProgress?: (p: SnapshotProgress) => void;
  /** the snapshot must be written inside this directory */
  within?: string;
  /** HMAC-SHA256 key */
  key?: Buffer;
}

/** The save options a VM's config asks for; reads the key file (UserError on a bad one). */
export function saveOptionsFrom(config: ConfigTree): Omit<SaveOptions, 'onProgress'> {
  const within = config.get('snapshot.dir'), keyFile = config.get('snapshot.key');
  if (within !== undefined) checkSnapshotDir(within);
  return { within, key: keyFile === undefined ? undefined : readKeyFile(keyFile) };
}

/** The restore options a VM's config asks for (the key to check a snapshot with). */
export function loadOptionsFrom(config: ConfigTree): LoadOptions {
  const keyFile = config.get('snapshot.key');
  return { key: keyFile === undefined ? undefined : readKeyFile(keyFile) };
}

const hmac = (key: Buffer, doc: object): Buffer => createHmac('sha256', key).update(JSON.stringify(doc)).digest();

/**
 * Save a whole snapshot: RAM first, then the document that names it, each
 * to a new file of its own renamed over the target (see SnapshotDir).
 */
export async function writeSnapshot(file: string, ram: Uint8Array, ranges: [number, number][], parts: SnapshotParts,
  opts: SaveOptions = {}): Promise<{ ramFile: string; ramBytesWritten: number }> {
  const dir = SnapshotDir.open(file, opts.within);
  const docName = basename(file), ramName = basename(ramFileFor(file));
  const temps: string[] = [];
  try {
    dir.checkReplaceable(docName);
    dir.checkReplaceable(ramName);
    const tmpRam = dir.createTemp(ramName);
    temps.push(tmpRam.name);
    let result: RamWriteResult;
    try { result = await writeRam(tmpRam.fd, ram, ranges, opts.key !== undefined, opts.onProgress); } finally { closeSync(tmpRam.fd); }
    const ramPart = new StateWriter().str('file', ramName).u64('size', ram.length).u32('chunk', RAM_CHUNK).b64('crc32', result.crcs);
    // CRC-32 finds damage but is easily forged: a keyed snapshot authenticates RAM by SHA-256.
    if (result.sha) ramPart.b64('sha256', result.sha);
    const body: Record<string, unknown> = { ...stateBody(parts), ram: ramPart.obj };
    if (parts.disks) body[DISKS_PART] = parts.disks.map((w) => w.obj);
    const doc: Record<string, unknown> = {
      'magic$str': SNAPSHOT_MAGIC,
      'version$u32': SNAPSHOT_VERSION,
      'created$str': new Date().toISOString(),
      ...body,
      checksums: partSums(body, parts.disks ? [...PARTS, DISKS_PART] : PARTS),
    };
    if (opts.key) doc[HMAC_KEY] = hmac(opts.key, doc).toString('hex');
    const tmpDoc = dir.createTemp(docName);
    temps.push(tmpDoc.name);
    try { writeSync(tmpDoc.fd, JSON.stringify(doc, null, 1) + '\n'); fsyncSync(tmpDoc.fd); } finally { closeSync(tmpDoc.fd); }
    dir.replace(tmpRam.name, ramName);
    dir.replace(tmpDoc.name, docName);
    dir.sync();
    return { ramFile: join(dirname(file), ramName), ramBytesWritten: result.bytesWritten };
  } catch (e) {
    for (const t of temps) dir.remove(t);
    throw e;
  } finally {
    dir.close();
  }
}

/** A VM's state as a restore applies it: from a snapshot file, or from a migration stream. */
export interface VmState {
  /** the saved VM's config (its guest-visible part must match this VM's) */
  config: Map<string, string>;
  vm: StateReader;
  vcpus: StateReader[];
  /** one entry per device, `{ id, kind, state }` (persist.ts) */
  devices: StateReader[];
}

export interface LoadedSnapshot extends VmState {
  file: string;
  created: string;
  /** the RAM image, and which file it was when checked (loadRamImage reads only that file) */
  ram: { file: string; size: number; chunk: number; crcs: Buffer; sha?: Buffer; dev: number; ino: number };
  /** the document's HMAC was checked against a key */
  authenticated: boolean;
  /** what the checkpoint did to each disk (absent: it did nothing to them) */
  disks?: DiskRecord[];
}

export interface LoadOptions {
  maxVcpus?: number;
  /** snapshot.key: the document must carry a matching HMAC */
  key?: Buffer;
}

/**
 * Read and check a snapshot document: a regular file of at most 64 MiB,
 * magic, version, the HMAC when a key is given, every part's checksum, the
 * RAM image's presence, kind and size. The parts' fields are checked later
 * by their owners (StateReader). Throws SnapshotError.
 */
export function readSnapshot(file: string, opts: LoadOptions = {}): LoadedSnapshot {
  const { fd } = openInput(file, (why) => `cannot read snapshot ${file}: ${why === 'ENOENT' ? 'no such file' : why}`);
  let text: string;
  try {
    text = readCapped(fd, MAX_DOC_BYTES, () => new SnapshotError(`${file} is too large to be a tshyve snapshot`)).toString('utf8');
  } finally {
    closeSync(fd);
  }
  const doc = parseDocument(text, file, 'a tshyve snapshot');
  const r = new StateReader(doc, 'snapshot');
  if ((doc as Record<string, unknown>)['magic$str'] !== SNAPSHOT_MAGIC) throw new SnapshotError(`${file} is not a tshyve snapshot (wrong magic)`);
  const version = r.u32('version');
  if (version !== SNAPSHOT_VERSION) throw new SnapshotError(`${file} is a version ${version} snapshot; this tshyve reads version ${SNAPSHOT_VERSION}`);
  const body = doc as Record<string, unknown>;
  if (opts.key) checkHmac(file, body, opts.key);
  // a checksum for the part, or the part, says it is there: neither can be dropped alone
  const withDisks = DISKS_PART in body || r.obj('checksums').has(DISKS_PART);
  checkPartSums(r, body, withDisks ? [...PARTS, DISKS_PART] : PARTS, `snapshot ${file}`);
  const config = readConfigPart(r);
  const rr = r.obj('ram');
  const ramName = rr.str('file', 4096);
  if (ramName !== basename(ramName) || ramName === '' || ramName === '.' || ramName === '..') rr.fail('file', 'must be a file name next to the snapshot');
  const size = rr.safe('size');
  const chunk = rr.u32('chunk');
  if (chunk !== RAM_CHUNK) rr.fail('chunk', `${chunk}, this tshyve uses ${RAM_CHUNK}`);
  const crcs = rr.b64('crc32', Math.ceil(size / chunk) * 4);
  const sha = opts.key ? rr.b64('sha256', Math.ceil(size / chunk) * 32) : undefined;
  const ramFile = join(dirname(file), ramName);
  const { fd: ramFd, st } = openRamImage(file, ramFile);
  closeSync(ramFd);
  if (st.size !== size) throw new SnapshotError(`snapshot ${file}: RAM image ${ramFile} is ${st.size} bytes, expected ${size} (truncated or replaced)`);
  const vcpus = r.arr('vcpus', opts.maxVcpus ?? 1024);
  return {
    file, created: r.str('created', 64), config, ram: { file: ramFile, size, chunk, crcs, sha, dev: st.dev, ino: st.ino },
    authenticated: opts.key !== undefined, vm: r.obj('vm'), vcpus, devices: r.arr('devices', MAX_DEVICES),
    disks: withDisks ? readDisks(r.arr(DISKS_PART, MAX_DISKS)) : undefined,
  };
}

function openRamImage(file: string, ramFile: string): ReturnType<typeof openInput> {
  return openInput(ramFile, (why) => `snapshot ${file}: its RAM image ${ramFile} cannot be read (${why})`);
}

/**
 * Parse an untrusted state document (a snapshot, a migration stream's
 * state): valid JSON, an object, nested at most MAX_DEPTH deep.
 * `what` names what it should have been, for the message.
 */
export function parseDocument(text: string, where: string, what: string): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new SnapshotError(`${where} is not ${what} (not valid JSON: ${(e as Error).message}; truncated?)`);
  }
  if (depth(doc) > MAX_DEPTH) throw new SnapshotError(`${where} is not ${what} (nested deeper than ${MAX_DEPTH} levels)`);
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new SnapshotError(`${where} is not ${what} (not a JSON object)`);
  return doc as Record<string, unknown>;
}

/** Every part of `parts` present in `body` with the SHA-256 `r`'s `checksums` records for it. */
export function checkPartSums(r: StateReader, body: Record<string, unknown>, parts: readonly string[], where: string): void {
  const sums = r.obj('checksums');
  for (const p of parts) {
    const want = sums.raw(`${p}$sha256`);
    if (!(p in body)) throw new SnapshotError(`${where}: part '${p}' is missing`);
    if (typeof want !== 'string' || want !== partChecksum(body[p])) {
      throw new SnapshotError(`${where}: checksum of part '${p}' does not match (the file was changed or damaged)`);
    }
  }
}

/** The `checksums` object of a document holding `parts`. */
export function partSums(doc: Record<string, unknown>, parts: readonly string[]): Record<string, string> {
  return Object.fromEntries(parts.map((p) => [`${p}$sha256`, partChecksum(doc[p])]));
}

/** The `config` part: every value a string. */
export function readConfigPart(r: StateReader): Map<string, string> {
  const cfgR = r.obj('config');
  const config = new Map<string, string>();
  for (const k of Object.keys(r.raw('config') as object)) {
    if (!k.endsWith('$str')) cfgR.fail(k, 'config values are strings');
    const key = k.slice(0, -4);
    config.set(key, cfgR.str(key, 65536));
  }
  return config;
}

/** How deeply arrays and objects nest in a parsed JSON value (without recursing). */
function depth(v: unknown): number {
  let max = 0;
  const stack: [unknown, number][] = [[v, 1]];
  while (stack.length) {
    const [x, d] = stack.pop()!;
    if (typeof x !== 'object' || x === null) continue;
    if (d > max) max = d;
    if (max > MAX_DEPTH) break;
    for (const c of Object.values(x)) if (typeof c === 'object' && c !== null) stack.push([c, d + 1]);
  }
  return max;
}

function checkHmac(file: string, doc: Record<string, unknown>, key: Buffer): void {
  const { [HMAC_KEY]: mac, ...rest } = doc;
  if (mac === undefined) throw new SnapshotError(`snapshot ${file} carries no HMAC, and snapshot.key asks for one`);
  const want = hmac(key, rest);
  const got = typeof mac === 'string' && /^[0-9a-f]{64}$/.test(mac) ? Buffer.from(mac, 'hex') : Buffer.alloc(0);
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    throw new SnapshotError(`snapshot ${file}: its HMAC does not match snapshot.key (made with another key, or changed)`);
  }
}

/**
 * Copy the RAM image into the VM's fresh RAM (its data ranges only), from
 * the very file readSnapshot checked. Checks each chunk's CRC-32 when asked
 * (snapshot.verify_ram), and CRC-32 and SHA-256 when the document was
 * authenticated by a key, in memory: what is checked is what the guest gets.
 */
export function loadRamImage(s: LoadedSnapshot, ram: RamMapping, verify: boolean): void {
  const { fd, st } = openRamImage(s.file, s.ram.file);
  try {
    if (st.dev !== s.ram.dev || st.ino !== s.ram.ino || st.size !== s.ram.size || st.size !== ram.size) {
      throw new SnapshotError(`snapshot ${s.file}: RAM image ${s.ram.file} was replaced while being restored`);
    }
    const ranges = fillGuestRamFromFile(ram, fd, s.ram.file);
    if (verify || s.authenticated) verifyRam(s, ram.bytes, ranges);
  } finally {
    closeSync(fd);
  }
}

/** Compare each chunk's CRC (and SHA-256): whole chunks the image had no data in are zero and are not read. */
function verifyRam(s: LoadedSnapshot, bytes: Uint8Array, ranges: [number, number][]): void {
  let r = 0;
  for (let c = 0, off = 0; off < s.ram.size; c++, off += s.ram.chunk) {
    const end = Math.min(off + s.ram.chunk, s.ram.size);
    while (r < ranges.length && ranges[r]![1] <= off) r++;
    const hasData = r < ranges.length && ranges[r]![0] < end;
    const full = end - off === RAM_CHUNK, chunk = hasData || !full ? bytes.subarray(off, end) : undefined;
    const crc = chunk ? crc32(chunk) : ZERO_CRC;
    const sha = s.ram.sha && (chunk ? sha256(chunk) : ZERO_SHA);
    const bad = crc !== s.ram.crcs.readUInt32LE(c * 4) ? 'CRC' : sha && !sha.equals(s.ram.sha!.subarray(c * 32, c * 32 + 32)) ? 'SHA-256' : undefined;
    if (bad) {
      throw new SnapshotError(`snapshot ${s.file}: RAM image ${s.ram.file} is damaged at offset 0x${off.toString(16)} (${bad} mismatch)`);
    }
  }
}
