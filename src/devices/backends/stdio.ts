/**
 * `stdio` backend: guest console on the monitor's own terminal, like
 * bhyve's `-l com1,stdio`. A TTY stdin goes into raw mode (so ^C reaches
 * the guest) and is restored on close, on exit and on fatal signals.
 * Output goes through FdWriter so a slow stdout never stalls the vCPUs.
 */
import { closeSync, constants, fstatSync, openSync } from 'node:fs';
import type { ReadStream } from 'node:tty';
import { libc, F_GETFL, F_SETFL, O_NONBLOCK } from '../../host/libc.js';
import { UserError } from '../../errors.js';
import { FdWriter } from './fd-writer.js';
import type { SerialBackend } from './types.js';

const rawTtys = new Set<ReadStream>();
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
let hooksInstalled = false;

/** Put every terminal we switched to raw mode back to cooked mode. Idempotent; safe to call anywhere. */
export function restoreTerminals(): void {
  for (const t of rawTtys) {
    try { t.setRawMode(false); } catch { /* terminal already gone */ }
  }
  rawTtys.clear();
}

function onSignal(sig: NodeJS.Signals): void {
  restoreTerminals();
  // If nobody else handles this signal, keep its default effect (terminate).
  if (process.listenerCount(sig) === 1) {
    for (const s of SIGNALS) process.removeListener(s, onSignal);
    process.removeListener('exit', restoreTerminals);
    hooksInstalled = false;
    process.kill(process.pid, sig);
  }
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', restoreTerminals);
  for (const s of SIGNALS) process.on(s, onSignal);
}

let inUse = false;

/**
 * A descriptor for stdout that never blocks a thread (a blocking write to a
 * reader that stopped would hold a libuv pool thread, and process exit
 * waits for those). A pipe or terminal is opened again, non-blocking,
 * through /proc: its own open file, so the shell's stays as it was. A
 * socket cannot be reopened: it is made non-blocking (as Node's own
 * process.stdout does) and put back on close. A regular file, where
 * reopening would lose the offset, is fd 1 as it is.
 */
function openStdout(): { fd: number; restore?: () => void } {
  try {
    const st = fstatSync(1);
    if (st.isFIFO() || st.isCharacterDevice()) return { fd: openSync('/proc/self/fd/1', constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOCTTY) };
    if (st.isSocket()) {
      const flags = libc.fcntlInt(1, F_GETFL, 0);
      if (flags >= 0 && !(flags & O_NONBLOCK) && libc.fcntlInt(1, F_SETFL, flags | O_NONBLOCK) === 0) {
        return { fd: 1, restore: () => { libc.fcntlInt(1, F_SETFL, flags); } };
      }
    }
  } catch { /* no /proc, or not reopenable: the descriptor as it is */ }
  return { fd: 1 };
}

export class StdioBackend implements SerialBackend {
  private readonly stdout = openStdout();
  private readonly out = new FdWriter(this.stdout.fd);
  private readonly stdin = process.stdin;
  private cb: ((b: Uint8Array) => void) | null = null;
  private closed = false;
  private readonly onStdinData = (b: Buffer): void => { this.cb?.(b); };
  private readonly ignore = (): void => { /* EOF or read error: just no more input */ };

  constructor() {
    if (inUse) throw new UserError('stdio is already used by another serial port');
    inUse = true;
    const tty = this.stdin as ReadStream;
    if (tty.isTTY) {
      tty.setRawMode(true);
      rawTtys.add(tty);
      installHooks();
    }
    this.stdin.on('error', this.ignore);
    this.stdin.on('end', this.ignore);
  }

  /** Bytes of output dropped (stdout gone or more than 4 MiB held). */
  get droppedOutput(): number { return this.out.dropped; }

  write(bytes: Uint8Array): void {
    if (!this.closed) this.out.write(bytes);
  }

  onData(cb: (bytes: Uint8Array) => void): void {
    if (this.closed) return;
    const first = this.cb === null;
    this.cb = cb;
    if (first) this.stdin.on('data', this.onStdinData); // starts reading
  }

  pause(): void { if (!this.closed) this.stdin.pause(); }
  resume(): void { if (!this.closed && this.cb) this.stdin.resume(); }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stdin.removeListener('data', this.onStdinData);
    this.stdin.pause(); // lets the process exit
    if (rawTtys.has(this.stdin as ReadStream)) {
      try { (this.stdin as ReadStream).setRawMode(false); } catch { /* gone */ }
      rawTtys.delete(this.stdin as ReadStream);
    }
    this.out.stop();
    await this.out.flush(1000);
    await this.out.abandon();
    if (this.stdout.fd !== 1) closeSync(this.stdout.fd);
    this.stdout.restore?.();
    inUse = false;
  }
}
