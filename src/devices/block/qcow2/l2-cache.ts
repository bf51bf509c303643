/**
 * A cache of L2 tables (one cluster each), write-through: a changed entry is
 * written to the file at once, so the cache never holds anything the file
 * lacks and eviction is free. Least recently used goes first. The slots'
 * buffers are made as they are first needed, up to a byte budget, so a small
 * image costs little and a large one never more than the budget.
 */
import type { FileBlockBackend } from '../file.js';

/** QEMU's default L2 cache on Linux covers up to 32 MiB of tables. */
export const L2_CACHE_BYTES = 32 << 20;

export class L2Cache {
  private readonly offs: number[] = [];
  private readonly tables: Buffer[] = [];
  private readonly used: number[] = [];
  private readonly index = new Map<number, number>();
  private tick = 0;
  private readonly slots: number;
  /** the last slot found: sequential I/O stays in one table */
  private last = -1;

  constructor(private readonly file: FileBlockBackend, private readonly cs: number, maxTables: number) {
    this.slots = Math.max(4, Math.min(maxTables, Math.floor(L2_CACHE_BYTES / cs)));
  }

  /** The table at `off`, read from the file if it is not cached. */
  get(off: number): Buffer {
    const l = this.last;
    if (l >= 0 && this.offs[l] === off) return this.tables[l]!;
    let slot = this.index.get(off);
    if (slot === undefined) slot = this.load(off, undefined);
    this.used[slot] = ++this.tick;
    this.last = slot;
    return this.tables[slot]!;
  }

  /** Cache `content` as the table at `off` (a table just written there). */
  put(off: number, content: Buffer): Buffer {
    const slot = this.index.get(off) ?? this.load(off, content);
    if (content !== this.tables[slot]) content.copy(this.tables[slot]!);
    this.used[slot] = ++this.tick;
    return this.tables[slot]!;
  }

  private load(off: number, content: Buffer | undefined): number {
    let slot: number;
    if (this.tables.length < this.slots) {
      slot = this.tables.length;
      this.tables.push(Buffer.alloc(this.cs));
      this.offs.push(-1);
      this.used.push(0);
    } else {
      slot = 0;
      for (let i = 1; i < this.slots; i++) if (this.used[i]! < this.used[slot]!) slot = i;
      this.index.delete(this.offs[slot]!);
    }
    this.offs[slot] = -1;
    if (content) content.copy(this.tables[slot]!);
    else this.file.read(this.tables[slot]!, off);
    this.offs[slot] = off;
    this.index.set(off, slot);
    if (this.last === slot) this.last = -1;
    return slot;
  }

  /** Write entries [from, to) of the cached table at `off` to the file. */
  writeEntries(off: number, table: Buffer, from: number, to: number): void {
    this.file.write(table.subarray(8 * from, 8 * to), off + 8 * from);
  }

  /** Forget every table. */
  clear(): void {
    this.index.clear();
    this.offs.fill(-1);
    this.used.fill(0);
    this.last = -1;
  }

  /** Forget the table at `off` (its cluster was freed or reused). */
  drop(off: number): void {
    const slot = this.index.get(off);
    if (slot === undefined) return;
    this.index.delete(off);
    this.offs[slot] = -1;
    this.used[slot] = 0;
    if (this.last === slot) this.last = -1;
  }
}
