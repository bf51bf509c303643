/**
 * PRP walking (NVMe 1.4, 4.3): a command's data pointer (PRP1, PRP2) and,
 * for transfers over two pages, PRP lists, turned into the pages the data
 * lives in, each checked to be guest RAM. The number of pages follows from
 * the transfer length, which the caller has bounded (MDTS), and a list that
 * chains must chain to a page-aligned list page, so a list pointing into
 * itself ends like any other: the walk never loops or grows.
 *
 * Pages are kept as (gpa, len, host address) triples in one preallocated
 * Float64Array, the layout IoVecs.fill takes: no allocation per command.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { MDTS, PAGE, SC } from './constants.js';
import { addr64 } from './queues.js';

const MAX_PAGES = (1 << MDTS) + 1;

export class PrpWalk {
  /** (gpa, len, host) per page, `count` of them */
  readonly segs = new Float64Array(3 * MAX_PAGES);
  count = 0;
  /** every page has a native mapping (for preadv/pwritev) */
  native = true;

  private add(mem: GuestMemory, gpa: number, len: number): boolean {
    const host = mem.resolve(gpa, len);
    if (host < 0 || this.count === MAX_PAGES) return false;
    const i = 3 * this.count++;
    this.segs[i] = gpa; this.segs[i + 1] = len; this.segs[i + 2] = host;
    if (host === 0) this.native = false;
    return true;
  }

  /**
   * Walk `len` bytes (1 to 2^MDTS pages) of PRP1 (lo, hi) and PRP2 (lo, hi).
   * Returns a status: SUCCESS, PRP_OFFSET_INVALID or DATA_TRANSFER.
   */
  walk(mem: GuestMemory, p1lo: number, p1hi: number, p2lo: number, p2hi: number, len: number): number {
    this.count = 0;
    this.native = true;
    const prp1 = addr64(p1lo, p1hi);
    if (p1lo & 3) return SC.PRP_OFFSET_INVALID;
    if (prp1 < 0) return SC.DATA_TRANSFER;
    const first = Math.min(len, PAGE - (prp1 % PAGE));
    if (!this.add(mem, prp1, first)) return SC.DATA_TRANSFER;
    let rem = len - first;
    if (rem === 0) return SC.SUCCESS;
    const prp2 = addr64(p2lo, p2hi);
    if (rem <= PAGE) {
      if (p2lo & (PAGE - 1)) return SC.PRP_OFFSET_INVALID;
      if (prp2 < 0 || !this.add(mem, prp2, rem)) return SC.DATA_TRANSFER;
      return SC.SUCCESS;
    }
    if (p2lo & 7) return SC.PRP_OFFSET_INVALID;
    if (prp2 < 0) return SC.DATA_TRANSFER;
    let entry = prp2;
    while (rem > 0) {
      if (!mem.contains(entry, 8)) return SC.DATA_TRANSFER;
      const lo = mem.readU32(entry), hi = mem.readU32(entry + 4);
      const last = (entry + 8) % PAGE === 0;
      if (last && rem > PAGE) {
        // the list's last entry points to the next list page
        if (lo & (PAGE - 1)) return SC.PRP_OFFSET_INVALID;
        entry = addr64(lo, hi);
        if (entry < 0) return SC.DATA_TRANSFER;
        continue;
      }
      if (lo & (PAGE - 1)) return SC.PRP_OFFSET_INVALID;
      const p = addr64(lo, hi);
      const k = Math.min(PAGE, rem);
      if (p < 0 || !this.add(mem, p, k)) return SC.DATA_TRANSFER;
      rem -= k;
      entry += 8;
    }
    return SC.SUCCESS;
  }

  /** Copy between `buf` and the walked pages (small admin payloads): into guest memory when `toGuest`. */
  copy(mem: GuestMemory, buf: Uint8Array, toGuest: boolean): void {
    let at = 0;
    for (let i = 0; i < this.count && at < buf.length; i++) {
      const k = Math.min(this.segs[3 * i + 1]!, buf.length - at);
      if (toGuest) mem.copyIn(this.segs[3 * i]!, buf, at, k); else mem.copyOut(this.segs[3 * i]!, buf, at, k);
      at += k;
    }
  }
}
