/**
 * Output-only backend for a plain path (a log file or a character device
 * such as a pty or nmdm-like node). Opened non-blocking and without becoming
 * our controlling terminal; a regular file is created if missing and
 * appended to. Input from the device is not read.
 */
import { constants, promises as fsp } from 'node:fs';
import { UserError } from '../../errors.js';
import { FdWriter } from './fd-writer.js';
import type { SerialBackend } from './types.js';

export class FileSerialBackend implements SerialBackend {
  private readonly out: FdWriter;
  private closed = false;

  private constructor(private readonly fh: fsp.FileHandle, readonly path: string) {
    this.out = new FdWriter(fh.fd);
  }

  get droppedOutput(): number { return this.out.dropped; }

  static async open(path: string): Promise<FileSerialBackend> {
    const st = await fsp.stat(path).catch(() => null);
    if (st && !st.isFile() && !st.isCharacterDevice()) {
      throw new UserError(`serial backend ${path}: not a regular file or character device`);
    }
    const flags = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOCTTY | constants.O_NONBLOCK;
    try {
      return new FileSerialBackend(await fsp.open(path, flags, 0o644), path);
    } catch (e) {
      throw new UserError(`serial backend ${path}: cannot open: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
  }

  write(bytes: Uint8Array): void { if (!this.closed) this.out.write(bytes); }
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
