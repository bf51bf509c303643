/**
 * Guest RAM on the migration stream: PAGES frames of up to BATCH_PAGES
 * pages, each page either data (4 KiB follow) or zero (nothing follows: the
 * destination clears it). The payload is
 *   u32 count, count x (u32 page index, u32 kind 0 zero / 1 data), the data pages in order.
 * The destination checks a whole frame (count, kinds, indexes within RAM,
 * exact length) before writing any of it.
 */
import { sealFrame, F, HEADER_BYTES, MigrationError } from './wire.js';

export const PAGE = 4096;
export const BATCH_PAGES = 256;
const ZERO_PAGE = new Uint8Array(PAGE);
const KIND_ZERO = 0, KIND_DATA = 1;

/** What has been sent, for progress and the final counts. */
export interface PageCounts { pages: number; dataPages: number; zeroPages: number }

/**
 * Collects pages and sends them as PAGES frames. A page's data is copied
 * from RAM when its frame is built; a page the guest changes after it was
 * picked is dirty again and is sent again later.
 */
export class PageSender implements PageCounts {
  private readonly batch = new Uint32Array(BATCH_PAGES);
  private readonly kinds = new Uint8Array(BATCH_PAGES);
  private n = 0;
  private nData = 0;
  pages = 0;
  dataPages = 0;
  zeroPages = 0;

  constructor(private readonly ram: Uint8Array, private readonly send: (frame: Buffer) => Promise<void>) {}

  /**
   * Queue page `p`; sent as a zero page when it reads all zero now. Returns
   * a promise only when it sent a frame (await it: the socket's back-pressure).
   */
  add(p: number): Promise<void> | undefined {
    const off = p * PAGE;
    const zero = Buffer.compare(this.ram.subarray(off, off + PAGE), ZERO_PAGE) === 0;
    this.batch[this.n] = p;
    this.kinds[this.n] = zero ? KIND_ZERO : KIND_DATA;
    this.n++;
    if (!zero) this.nData++;
    return this.n === BATCH_PAGES ? this.flush() : undefined;
  }

  /** add() each page, waiting only when a frame went out. */
  async addAll(pages: Iterable<number>): Promise<void> {
    for (const p of pages) {
      const sent = this.add(p);
      if (sent) await sent;
    }
  }

  async flush(): Promise<void> {
    if (this.n === 0) return;
    const n = this.n, H = HEADER_BYTES, body = H + 4 + 8 * n;
    // The frame is built in place: page data is copied once, from RAM into it.
    const frame = Buffer.allocUnsafe(body + this.nData * PAGE);
    frame.writeUInt32LE(n, H);
    let d = body;
    for (let i = 0; i < n; i++) {
      const p = this.batch[i]!, kind = this.kinds[i]!;
      frame.writeUInt32LE(p, H + 4 + 8 * i);
      frame.writeUInt32LE(kind, H + 8 + 8 * i);
      if (kind === KIND_DATA) { frame.set(this.ram.subarray(p * PAGE, p * PAGE + PAGE), d); d += PAGE; }
    }
    this.pages += n;
    this.dataPages += this.nData;
    this.zeroPages += n - this.nData;
    this.n = this.nData = 0;
    await this.send(sealFrame(F.PAGES, frame));
  }

  /** Bytes of the stream the pages queued so far will take (for estimates). */
  static frameBytes(pages: number): number {
    return pages * (PAGE + 8) + Math.ceil(pages / BATCH_PAGES) * (HEADER_BYTES + 4);
  }
}

/**
 * Check one PAGES payload against RAM of `ram.length` bytes, then write it
 * in; returns how many pages it held and how many were data.
 */
export function applyPages(payload: Buffer, ram: Uint8Array): { pages: number; dataPages: number } {
  const bad = (why: string): never => { throw new MigrationError(`the source sent a bad PAGES frame: ${why}`, 'EPROTO'); };
  if (payload.length < 4) bad('too short');
  const n = payload.readUInt32LE(0), total = ram.length / PAGE;
  if (n === 0 || n > BATCH_PAGES) bad(`${n} pages (1-${BATCH_PAGES} allowed)`);
  const body = 4 + 8 * n;
  if (payload.length < body) bad(`${payload.length} bytes for ${n} entries`);
  let nData = 0;
  for (let i = 0; i < n; i++) {
    const p = payload.readUInt32LE(4 + 8 * i), kind = payload.readUInt32LE(8 + 8 * i);
    if (p >= total) bad(`page ${p} is past the end of RAM (${total} pages)`);
    if (kind !== KIND_ZERO && kind !== KIND_DATA) bad(`page ${p} has kind ${kind}`);
    if (kind === KIND_DATA) nData++;
  }
  if (payload.length !== body + nData * PAGE) bad(`${payload.length} bytes, ${body + nData * PAGE} expected for ${n} pages (${nData} with data)`);
  let d = body;
  for (let i = 0; i < n; i++) {
    const off = payload.readUInt32LE(4 + 8 * i) * PAGE;
    if (payload.readUInt32LE(8 + 8 * i) === KIND_DATA) { ram.set(payload.subarray(d, d + PAGE), off); d += PAGE; } else ram.fill(0, off, off + PAGE);
  }
  return { pages: n, dataPages: nData };
}
