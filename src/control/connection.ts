/**
 * One control-socket client, held to bounded memory whatever it does:
 *  - a request line longer than maxRequestBytes gets an error and the
 *    client is dropped;
 *  - replies wait for the reader: while more than replyHighWater bytes of
 *    replies are unread, or maxActive requests are being served, its
 *    requests are not read (the socket is paused; the kernel's buffer then
 *    stops the client's writes);
 *  - a client that leaves replies unread for replyTimeoutMs, or more than
 *    replyHardMax bytes of them (answers to requests already running), is
 *    dropped.
 */
import type { Socket } from 'node:net';
import { log } from '../log.js';
import { LineDecoder, encode, type ServerMessage } from './protocol.js';

export interface ConnectionLimits {
  maxRequestBytes: number;
  replyHighWater: number;
  replyHardMax: number;
  replyTimeoutMs: number;
  maxActive: number;
}

/** How long a refused client has to read its one error line before it is closed. */
const REFUSE_LINGER_MS = 1000;

/**
 * Send one error line (id null), then close after REFUSE_LINGER_MS without
 * reading anything more: closing at once would make a client whose request
 * crosses our close see EPIPE instead of the reason.
 */
export function refuse(c: Socket, error: string): void {
  c.on('error', () => { /* it went away first */ });
  c.pause(); // what it sends is left unread
  c.end(encode({ id: null, ok: false, error }));
  setTimeout(() => c.destroy(), REFUSE_LINGER_MS).unref();
}

export class Connection {
  private readonly dec: LineDecoder;
  private lines: string[] = []; // read, not started yet
  private next = 0; // index of the next line to start
  private active = 0; // requests being served
  private stall: NodeJS.Timeout | undefined;

  /** `serve` runs one request line and resolves once its answer is sent. */
  constructor(readonly sock: Socket, private readonly limits: ConnectionLimits, private readonly serve: (conn: Connection, line: string) => Promise<void>) {
    this.dec = new LineDecoder(limits.maxRequestBytes);
    sock.on('error', () => { /* the client went away; its replies are dropped */ });
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('drain', () => { this.clearStall(); this.pump(); });
    sock.on('close', () => this.clearStall());
  }

  send(msg: ServerMessage): void {
    const c = this.sock;
    if (c.destroyed || !c.writable) return;
    c.write(encode(msg));
    if (c.writableLength > this.limits.replyHardMax) {
      this.drop(`more than ${this.limits.replyHardMax} bytes of replies unread`);
    } else if (c.writableLength > this.limits.replyHighWater && !this.stall) {
      this.stall = setTimeout(() => this.drop(`replies unread for ${this.limits.replyTimeoutMs} ms`), this.limits.replyTimeoutMs);
      this.stall.unref();
    }
  }

  private onData(chunk: Buffer): void {
    if (this.dec.overflow) return;
    for (const line of this.dec.push(chunk)) if (line.trim() !== '') this.lines.push(line);
    if (this.dec.overflow) {
      this.lines = [];
      this.next = 0;
      refuse(this.sock, 'bad request: line too long');
      return;
    }
    this.pump();
  }

  /** Start what the limits allow; read more only once every line read is started. */
  private pump(): void {
    const c = this.sock;
    while (this.next < this.lines.length && this.active < this.limits.maxActive && c.writableLength <= this.limits.replyHighWater && !c.destroyed) {
      const line = this.lines[this.next++]!;
      this.active++;
      void this.serve(this, line).finally(() => { this.active--; this.pump(); });
    }
    if (this.next === this.lines.length) {
      this.lines = [];
      this.next = 0;
      if (!this.dec.overflow) c.resume();
    } else {
      c.pause();
    }
  }

  private clearStall(): void {
    clearTimeout(this.stall);
    this.stall = undefined;
  }

  private drop(why: string): void {
    log('warn', `control socket: dropped a client: ${why}`);
    this.clearStall();
    this.sock.destroy();
  }
}
