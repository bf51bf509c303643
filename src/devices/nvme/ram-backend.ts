/**
 * bhyve's `ram=MiB` namespace: a disk in memory, zero-filled, gone with
 * the VM. The bytes are a SharedArrayBuffer, so the controller's I/O
 * thread serves the same disk (fromShared).
 */
import type { BlockBackend } from '../block/backend.js';

export class RamBlockBackend implements BlockBackend {
  readonly readonly = false;
  readonly hostSectorSizes = {};
  private readonly bytes: Uint8Array;

  constructor(readonly shared: SharedArrayBuffer) {
    this.bytes = new Uint8Array(shared);
  }

  static ofMiB(mib: number): RamBlockBackend { return new RamBlockBackend(new SharedArrayBuffer(mib * 1024 * 1024)); }

  get size(): number { return this.bytes.length; }
  read(buf: Uint8Array, offset: number): void { buf.set(this.bytes.subarray(offset, offset + buf.length)); }
  write(buf: Uint8Array, offset: number): void { this.bytes.set(buf, offset); }
  flush(): void {}
  discard(offset: number, len: number): boolean { this.bytes.fill(0, offset, offset + len); return true; }
  writeZeroes(offset: number, len: number): void { this.bytes.fill(0, offset, offset + len); }
  close(): void {}
}
