/**
 * Listening socket backends (`tcp=IP:PORT`, `unix=PATH`), one client at a
 * time as in bhyve's uart tcp backend: a second client is closed at once.
 * Output with no client attached keeps only the latest 64 KiB, so a client
 * connecting late sees the recent console; a client that stops reading
 * makes us drop output beyond 1 MiB held (counted in real memory, queued
 * or in the socket's buffer) rather than buffer without limit.
 */
import net from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import { UserError } from '../../errors.js';
import { ByteQueue } from './byte-queue.js';
import type { SerialBackend } from './types.js';

const HOLD_MAX = 64 * 1024;
const HOLD_CHUNK = 16 * 1024;
const CLIENT_BACKLOG_MAX = 1024 * 1024;

function describeListenError(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'EADDRINUSE': return 'address already in use';
    case 'EACCES': case 'EPERM': return 'permission denied';
    case 'EADDRNOTAVAIL': return 'address not available on this host';
    case 'ENOENT': return 'directory does not exist';
    case 'ENOTDIR': return 'a path component is not a directory';
    case 'ENOTFOUND': case 'EAI_AGAIN': return 'host name does not resolve';
    default: return err.code ?? err.message;
  }
}

abstract class ListeningBackend implements SerialBackend {
  protected readonly server = net.createServer();
  private client: net.Socket | null = null;
  private cb: ((b: Uint8Array) => void) | null = null;
  private paused = false;
  private closed = false;
  /** output for the client: coalesced until the next turn of the loop, then lent to the socket until written */
  private readonly pending = new ByteQueue(CLIENT_BACKLOG_MAX);
  private flushScheduled = false;
  /** output while no client is connected: the latest HOLD_MAX bytes */
  private readonly hold = new ByteQueue(HOLD_MAX + 2 * HOLD_CHUNK, HOLD_CHUNK);
  /** Extra clients turned away. */
  refused = 0;

  /** Output bytes dropped (no client and over 64 KiB, or client not reading). */
  get droppedOutput(): number { return this.pending.dropped + this.hold.dropped; }

  protected async listen(opts: net.ListenOptions, what: string): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const fail = (e: NodeJS.ErrnoException): void => {
        reject(new UserError(`serial backend ${what}: cannot listen: ${describeListenError(e)}`));
      };
      this.server.once('error', fail);
      this.server.listen(opts, () => { this.server.off('error', fail); resolve(); });
    });
    this.server.on('error', () => { /* accept errors (EMFILE...): keep serving */ });
    this.server.on('connection', (s) => this.attach(s));
  }

  private attach(s: net.Socket): void {
    // A client whose close we have not processed yet no longer holds the slot.
    if (this.client && (this.client.destroyed || this.client.readableEnded)) this.client = null;
    if (this.client || this.closed) {
      this.refused++;
      s.destroy();
      return;
    }
    this.client = s;
    if (s.setNoDelay) s.setNoDelay(true);
    s.on('error', () => { /* 'close' follows */ });
    s.on('close', () => { if (this.client === s) this.client = null; });
    s.on('data', (b: Buffer) => { this.cb?.(b); });
    if (this.paused || !this.cb) s.pause();
    for (let b = this.hold.take(); b; b = this.hold.take()) {
      const chunk = b;
      s.write(chunk, () => this.hold.release(chunk));
    }
  }

  write(bytes: Uint8Array): void {
    if (this.closed || bytes.length === 0) return;
    this.pending.push(bytes);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  /**
   * Hand the pending output to the client; its chunks stay counted in
   * `pending` until written, so a client that does not read makes us drop
   * new output beyond CLIENT_BACKLOG_MAX. With no client, keep the latest.
   */
  private flush(): void {
    this.flushScheduled = false;
    const c = this.client;
    for (let b = this.pending.take(); b; b = this.pending.take()) {
      const chunk = b;
      if (c && !c.destroyed) {
        c.write(chunk, () => this.pending.release(chunk));
      } else {
        this.hold.pushLatest(chunk, HOLD_MAX);
        this.pending.release(chunk);
      }
    }
  }

  onData(cb: (bytes: Uint8Array) => void): void {
    this.cb = cb;
    if (!this.paused) this.client?.resume();
  }

  pause(): void {
    this.paused = true;
    this.client?.pause();
  }

  resume(): void {
    this.paused = false;
    if (this.cb) this.client?.resume();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.flush();
    const c = this.client;
    this.client = null;
    if (c) c.end(); // let queued output go out...
    const done = new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (c) setTimeout(() => c.destroy(), 1000).unref(); // ...but not forever
    await done;
    await this.cleanup();
  }

  protected async cleanup(): Promise<void> { /* subclass hook */ }
}

export class TcpSerialBackend extends ListeningBackend {
  private constructor() { super(); }

  /** Where we actually listen (port is the real one when 0 was asked for). */
  get address(): net.AddressInfo {
    return this.server.address() as net.AddressInfo;
  }
  get port(): number { return this.address.port; }

  static async open(host: string, port: number, spec: string): Promise<TcpSerialBackend> {
    const b = new TcpSerialBackend();
    await b.listen({ host, port, exclusive: true }, spec);
    return b;
  }
}

/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const SUN_PATH_MAX = 107;

export class UnixSerialBackend extends ListeningBackend {
  private constructor(readonly path: string) { super(); }

  get address(): string { return this.path; }

  static async open(path: string, spec: string): Promise<UnixSerialBackend> {
    if (Buffer.byteLength(path) > SUN_PATH_MAX) {
      throw new UserError(`serial backend ${spec}: socket path longer than ${SUN_PATH_MAX} bytes`);
    }
    await removeStaleSocket(path, spec);
    const b = new UnixSerialBackend(path);
    await b.listen({ path, exclusive: true }, spec);
    return b;
  }

  protected override async cleanup(): Promise<void> {
    await unlink(this.path).catch(() => undefined);
  }
}

/** A leftover socket file from a dead monitor is removed; a live one or a non-socket file is an error. */
async function removeStaleSocket(path: string, spec: string): Promise<void> {
  let st;
  try { st = await lstat(path); } catch { return; }
  if (!st.isSocket()) throw new UserError(`serial backend ${spec}: ${path} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const s = net.connect({ path });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
  if (live) throw new UserError(`serial backend ${spec}: ${path} is in use by another process`);
  await unlink(path).catch(() => undefined);
}
