/**
 * Output-only backend for a plain path (a log file or a character device
 * such as a pty or nmdm-like node). Opened non-blocking and without becoming
 * our controlling terminal; a regular file is created if missing and
 * appended to. Input from the device is not read.
 *
 * A regular file stops growing at `maxBytes` (default 64 MiB; 0: no limit),
 * so a guest printing forever cannot fill the disk: the rest is dropped and
 * counted, with one warning. A character device has no size to cap.
 */
import { constants, promises as fsp } from 'node:fs';
import { UserError } from '../../errors.js';
import { log } from '../../log.js';
import { FdWriter } from './fd-writer.js';
import type { SerialBackend } from './types.js';

export const FILE_MAX_BYTES_DEFAULT = 64 * 1024 * 1024;

export class FileSerialBackend implements SerialBackend {
  private readonly out: FdWriter;
  private closed = false;
  private overCap = 0; // bytes dropped at the size cap

  /** `room`: bytes the file may still grow by (Infinity: no cap). */
  private constructor(private readonly fh: fsp.FileHandle, readonly path: string, private room: number, private readonly maxBytes: number) {
    this.out = new FdWriter(fh.fd);
  }

  get droppedOutput(): number { return this.out.dropped + this.overCap; }

  static async open(path: string, maxBytes = FILE_MAX_BYTES_DEFAULT): Promise<FileSerialBackend> {
    const st = await fsp.stat(path).catch(() => null);
    if (st && !st.isFile() && !st.isCharacterDevice()) {
      throw new UserError(`serial backend ${path}: not a regular file or character device`);
    }
    const flags = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOCTTY | constants.O_NONBLOCK;
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(path, flags, 0o644);
    } catch (e) {
      throw new UserError(`serial backend ${path}: cannot open: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
    // What was opened, not what was there before: the cap is for regular files.
    const now = await fh.stat();
    const room = now.isFile() && maxBytes > 0 ? Math.max(0, maxBytes - now.size) : Infinity;
    return new FileSerialBackend(fh, path, room, maxBytes);
  }

  write(bytes: Uint8Array): void {
    if (this.closed) return;
    if (bytes.length > this.room) {
      if (this.overCap === 0) log('warn', `serial output file ${this.path} reached its size limit (${this.maxBytes} bytes); further output is dropped`);
      this.overCap += bytes.length - this.room;
      bytes = bytes.subarray(0, this.room);
    }
    if (bytes.length > 0) this.room -= this.out.write(bytes);
  }

  onData(): void { /* output only */ }
  pause(): void { /* no input */ }
  resume(): void { /* no input */ }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.out.stop();
    await this.out.flush(1000);
    await this.fh.close().catch(() => undefined);
  }
}
