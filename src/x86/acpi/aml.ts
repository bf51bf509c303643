/**
 * A minimal AML encoder (ACPI 6.x chapter 20) and resource-descriptor
 * encoder (chapter 6.4): just what the DSDT needs. Every function returns
 * the encoded bytes as a plain number array so they concatenate easily.
 */
export type Aml = number[];

const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const QWORD_PREFIX = 0x0e;
const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const ONES_OP = 0xff;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const EXT_OP = 0x5b;
const DEVICE_OP = 0x82;
const ROOT_CHAR = 0x5c;

function le(value: number | bigint, bytes: number): Aml {
  let v = BigInt(value);
  const out: Aml = [];
  for (let i = 0; i < bytes; i++) { out.push(Number(v & 0xffn)); v >>= 8n; }
  return out;
}

/** PkgLength: counts itself plus `len` following bytes (20.2.4). */
export function pkgLength(len: number): Aml {
  if (len + 1 < 0x40) return [len + 1];
  for (let extra = 1; extra <= 3; extra++) {
    const total = len + 1 + extra;
    if (total < 2 ** (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0xf)];
      for (let i = 0; i < extra; i++) out.push((total >>> (4 + 8 * i)) & 0xff);
      return out;
    }
  }
  throw new Error('AML package too long');
}

/** The smallest integer encoding, as iasl emits it. */
export function integer(v: number | bigint): Aml {
  const n = BigInt(v);
  if (n < 0n || n >= 2n ** 64n) throw new Error(`AML integer out of range: ${v}`);
  if (n === 0n) return [ZERO_OP];
  if (n === 1n) return [ONE_OP];
  if (n <= 0xffn) return [BYTE_PREFIX, Number(n)];
  if (n <= 0xffffn) return [WORD_PREFIX, ...le(n, 2)];
  if (n <= 0xffffffffn) return [DWORD_PREFIX, ...le(n, 4)];
  return [QWORD_PREFIX, ...le(n, 8)];
}

export const ones: Aml = [ONES_OP];

/** A NameString: optional leading '\' then 4-char segments separated by '.'. */
export function nameString(path: string): Aml {
  const out: Aml = [];
  let p = path;
  if (p.startsWith('\\')) { out.push(ROOT_CHAR); p = p.slice(1); }
  const segs = p.split('.');
  if (segs.length === 2) out.push(0x2e); // DualNamePrefix
  else if (segs.length > 2) out.push(0x2f, segs.length); // MultiNamePrefix
  for (const s of segs) {
    if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(s)) throw new Error(`bad AML name segment ${s}`);
    for (const c of s.padEnd(4, '_')) out.push(c.charCodeAt(0));
  }
  return out;
}

export function name(path: string, value: Aml): Aml {
  return [NAME_OP, ...nameString(path), ...value];
}

export function pkg(elements: Aml[]): Aml {
  if (elements.length > 255) throw new Error('AML Package has more than 255 elements');
  const body = [elements.length, ...elements.flat()];
  return [PACKAGE_OP, ...pkgLength(body.length), ...body];
}

export function buffer(bytes: Aml): Aml {
  const body = [...integer(bytes.length), ...bytes];
  return [BUFFER_OP, ...pkgLength(body.length), ...body];
}

export function scope(path: string, terms: Aml[]): Aml {
  const body = [...nameString(path), ...terms.flat()];
  return [SCOPE_OP, ...pkgLength(body.length), ...body];
}

export function device(path: string, terms: Aml[]): Aml {
  const body = [...nameString(path), ...terms.flat()];
  return [EXT_OP, DEVICE_OP, ...pkgLength(body.length), ...body];
}

/** EisaId("PNP0A03") -> the compressed 32-bit id, as a DWord constant. */
export function eisaId(id: string): Aml {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new Error(`bad EISA id ${id}`);
  const c = (i: number): number => id.charCodeAt(i) - 0x40;
  const vendor = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = parseInt(id.slice(3), 16);
  return [DWORD_PREFIX, vendor >> 8, vendor & 0xff, product >> 8, product & 0xff];
}

// --- resource descriptors (for _CRS buffers) ---

const ADDR_PRODUCER_FIXED = 0x0c; // producer, positive decode, _MIF, _MAF

/** I/O port descriptor with 16-bit decode (6.4.2.5). */
export function ioPort(min: number, max: number, align: number, len: number): Aml {
  return [0x47, 0x01, ...le(min, 2), ...le(max, 2), align, len];
}

function wordAddress(type: number, typeFlags: number, min: number, max: number): Aml {
  const len = max - min + 1;
  return [0x88, 0x0d, 0x00, type, ADDR_PRODUCER_FIXED, typeFlags, ...le(0, 2), ...le(min, 2), ...le(max, 2), ...le(0, 2), ...le(len, 2)];
}

/** WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, ...) */
export function wordBusNumber(min: number, max: number): Aml {
  return wordAddress(2, 0, min, max);
}

/** WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...) */
export function wordIo(min: number, max: number): Aml {
  return wordAddress(1, 0x03, min, max);
}

/** DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...) */
export function dwordMemory(min: number, max: number): Aml {
  const len = max - min + 1;
  return [0x87, 0x17, 0x00, 0, ADDR_PRODUCER_FIXED, 0x01, ...le(0, 4), ...le(min, 4), ...le(max, 4), ...le(0, 4), ...le(len, 4)];
}

/** QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...) */
export function qwordMemory(min: number, max: number): Aml {
  const len = BigInt(max) - BigInt(min) + 1n;
  return [0x8a, 0x2b, 0x00, 0, ADDR_PRODUCER_FIXED, 0x01, ...le(0, 8), ...le(min, 8), ...le(max, 8), ...le(0, 8), ...le(len, 8)];
}

/** End tag with checksum 0 ("treat as summing to zero"). */
export const endTag: Aml = [0x79, 0x00];
