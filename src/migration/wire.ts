/**
 * The migration stream: frames both ways over one stream socket. Each frame
 * is a 16-byte header (magic "TSHM", type, reserved zeros, payload length,
 * CRC-32 of the payload) and its payload. A destination reads the stream as
 * untrusted input: the magic, a type it expects at that point, a length
 * within that type's bound and the CRC are checked before a payload is
 * looked at; anything else ends the migration (docs/security.md).
 */
import type { Socket } from 'node:net';
import { crc32 } from 'node:zlib';
import { TshyveError } from '../errors.js';

/** A migration that cannot go on: refused, broken or timed out. One line. */
export class MigrationError extends TshyveError {
  constructor(message: string, code = 'EMIGRATION') {
    super(code, message.replace(/[\0-\x1f\x7f]/g, ' '));
  }
}

export const FRAME_MAGIC = 0x4d485354; // "TSHM"
export const HEADER_BYTES = 16;

/** Frame types, in the order a migration sends them. */
export const F = {
  /** source: protocol, machine, CPU features (JSON) */
  HELLO: 1,
  /** destination: agreed (JSON: whether it builds its VM while RAM comes in) */
  WELCOME: 2,
  /** either side: no, and why (JSON {error}); the migration ends */
  REFUSE: 3,
  /** source: a batch of RAM pages (ram-pages.ts) */
  PAGES: 4,
  /** destination: its VM is built (when WELCOME said it builds while RAM comes in): the source may pause its guest */
  BUILT: 8,
  /** source: the guest is paused from here on (JSON: rounds so far) */
  SWITCHOVER: 5,
  /** source: the KVM and device state (JSON, the snapshot format's parts) */
  STATE: 6,
  /**
   * source: everything is sent (JSON: counts to check); the destination
   * takes the guest over if all of it checks, without asking again
   */
  END: 7,
  /** destination: it has taken the guest over (sent before its vCPUs run); the source ends */
  DONE: 10,
} as const;
export type FrameType = (typeof F)[keyof typeof F];
const NAMES = Object.fromEntries(Object.entries(F).map(([k, v]) => [v, k])) as Record<number, string>;
export const frameName = (t: number): string => NAMES[t] ?? `type ${t}`;

/** Longest payload of each type; PAGES is bounded by the batch size. */
const MAX_PAYLOAD: Record<number, number> = {
  [F.HELLO]: 1 << 20, [F.WELCOME]: 4096, [F.REFUSE]: 4096, [F.PAGES]: 2 << 20, [F.SWITCHOVER]: 4096,
  [F.STATE]: 64 << 20, [F.END]: 4096, [F.BUILT]: 4096, [F.DONE]: 4096,
};

export interface Frame { type: FrameType; payload: Buffer }

/**
 * How long after END a destination may still take the guest over (say
 * DONE); past it, it refuses. The source waits twice as long for DONE
 * before it resumes the guest, so that both never run it.
 */
export const TAKEOVER_MS = 60_000;

/** How long a peer may leave our frames unread before the migration is given up. */
const STALL_MS = 60_000;

export function encodeFrame(type: FrameType, payload: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  b.set(payload, HEADER_BYTES);
  return sealFrame(type, b);
}

/** Write the header of `frame`, whose payload is already in place after HEADER_BYTES (no copy of it). */
export function sealFrame(type: FrameType, frame: Buffer): Buffer {
  frame.writeUInt32LE(FRAME_MAGIC, 0);
  frame[4] = type;
  frame[5] = 0;
  frame.writeUInt16LE(0, 6);
  frame.writeUInt32LE(frame.length - HEADER_BYTES, 8);
  frame.writeUInt32LE(crc32(frame.subarray(HEADER_BYTES)), 12);
  return frame;
}

export const jsonFrame = (type: FrameType, v: unknown): Buffer => encodeFrame(type, Buffer.from(JSON.stringify(v)));

/**
 * One side of a migration connection: frames out with the socket's
 * back-pressure, frames in one at a time with a deadline, and the first
 * failure (the peer gone, a bad frame) kept and given to every later call.
 */
export class Channel {
  /** what has come in and not been taken yet, and its length */
  private chunks: Buffer[] = [];
  private have = 0;
  private want: { resolve: (f: Frame) => void; reject: (e: Error) => void; types: readonly FrameType[]; timer?: NodeJS.Timeout } | undefined;
  private failure: MigrationError | undefined;
  private drainWaiters: (() => void)[] = [];
  /** bytes written and read, headers included */
  sent = 0;
  received = 0;

  /** `stallMs`: how long the peer may leave our frames unread (default STALL_MS) */
  constructor(readonly sock: Socket, private readonly peer: string, private readonly stallMs = STALL_MS) {
    sock.on('data', (d: Buffer) => { this.chunks.push(d); this.have += d.length; this.received += d.length; this.pump(); });
    // A peer that refused and hung up while we were only writing: its reason is the error.
    sock.on('error', (e: NodeJS.ErrnoException) => this.fail(this.refusalWaiting()
      ?? new MigrationError(`the connection to ${peer} failed (${e.code ?? e.message})`, 'EGONE')));
    sock.on('close', () => this.fail(this.refusalWaiting() ?? new MigrationError(`${peer} closed the connection`, 'EGONE')));
    sock.on('drain', () => { for (const w of this.drainWaiters.splice(0)) w(); });
    sock.resume();
  }

  get failed(): MigrationError | undefined { return this.failure; }

  /**
   * Write a frame; resolves once the socket can take more, rejects once the
   * connection failed, or when the peer has taken nothing for stallMs (a
   * stopped peer must not hold a paused guest forever).
   */
  async send(frame: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    this.sent += frame.length;
    if (this.sock.write(frame)) return;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.drainWaiters.push(resolve);
      timer = setTimeout(() => this.fail(new MigrationError(`${this.peer} took nothing for ${this.stallMs / 1000} s`, 'ETIMEDOUT')), this.stallMs);
    });
    clearTimeout(timer);
    if (this.failure) throw this.failure;
  }

  /** The next frame, which must be one of `types` (REFUSE always may come: it becomes the error). */
  recv(types: readonly FrameType[], timeoutMs: number): Promise<Frame> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.want) return Promise.reject(new Error('Channel.recv while another recv waits'));
    return new Promise((resolve, reject) => {
      this.want = { resolve, reject, types };
      if (timeoutMs > 0) {
        this.want.timer = setTimeout(() => this.fail(new MigrationError(`${this.peer} sent nothing for ${timeoutMs / 1000} s`, 'ETIMEDOUT')), timeoutMs);
      }
      this.pump();
    });
  }

  async recvJson(types: readonly FrameType[], timeoutMs: number): Promise<{ type: FrameType; value: Record<string, unknown> }> {
    const f = await this.recv(types, timeoutMs);
    let v: unknown;
    try { v = JSON.parse(f.payload.toString('utf8')); } catch { v = undefined; }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw this.fail(new MigrationError(`${this.peer} sent a ${frameName(f.type)} that is not a JSON object`));
    return { type: f.type, value: v as Record<string, unknown> };
  }

  /** End the migration: the first reason sticks; the socket is closed. */
  fail(e: MigrationError): MigrationError {
    this.failure ??= e;
    const w = this.want;
    this.want = undefined;
    if (w) { clearTimeout(w.timer); w.reject(this.failure); }
    for (const d of this.drainWaiters.splice(0)) d();
    this.sock.destroy();
    return this.failure;
  }

  /** Send what is queued, then close; resolves once the peer has closed too (at most 2 s). */
  end(): Promise<void> {
    return new Promise((resolve) => {
      if (this.sock.destroyed) { resolve(); return; }
      const t = setTimeout(() => { this.sock.destroy(); resolve(); }, 2000);
      // Done when the peer has hung up too, not when our last byte left: a
      // peer still writing gets an error on its next write once we are gone,
      // and may lose what we sent last (a REFUSE) unread.
      this.sock.once('close', () => { clearTimeout(t); resolve(); });
      this.sock.end();
    });
  }

  /** A whole REFUSE frame among what came in and was not read. */
  private refusalWaiting(): MigrationError | undefined {
    const b = Buffer.concat(this.chunks);
    for (let at = 0; at + HEADER_BYTES <= b.length;) {
      const len = b.readUInt32LE(at + 8);
      if (b.readUInt32LE(at) !== FRAME_MAGIC || at + HEADER_BYTES + len > b.length) return undefined;
      const payload = b.subarray(at + HEADER_BYTES, at + HEADER_BYTES + len);
      if (b[at + 4] === F.REFUSE && crc32(payload) === b.readUInt32LE(at + 12)) return this.refusal(payload);
      at += HEADER_BYTES + len;
    }
    return undefined;
  }

  private refusal(payload: Buffer): MigrationError {
    let error = 'no reason given';
    try { const v = JSON.parse(payload.toString('utf8')) as { error?: unknown }; if (typeof v.error === 'string') error = v.error.slice(0, 500); } catch { /* keep the default */ }
    return new MigrationError(`${this.peer} refused: ${error}`, 'EREFUSED');
  }

  private pump(): void {
    const w = this.want;
    if (!w || this.failure || this.have < HEADER_BYTES) return;
    // Joined once the header, then once the whole frame, is in.
    if (this.chunks[0]!.length < HEADER_BYTES) this.chunks = [Buffer.concat(this.chunks)];
    let b = this.chunks[0]!;
    const type = b[4]!, len = b.readUInt32LE(8);
    let why: string | undefined;
    if (b.readUInt32LE(0) !== FRAME_MAGIC) why = 'a frame without the stream\'s magic';
    else if (b[5] !== 0 || b.readUInt16LE(6) !== 0) why = 'a frame header with reserved bits set';
    else if (type !== F.REFUSE && !w.types.includes(type as FrameType)) why = `${frameName(type)} where ${w.types.map(frameName).join(' or ')} was expected`;
    else if (len > MAX_PAYLOAD[type]!) why = `a ${frameName(type)} of ${len} bytes (at most ${MAX_PAYLOAD[type]})`;
    if (why) { this.fail(new MigrationError(`${this.peer} sent ${why}`, 'EPROTO')); return; }
    if (this.have < HEADER_BYTES + len) return;
    if (b.length < HEADER_BYTES + len) this.chunks = [b = Buffer.concat(this.chunks)];
    const payload = b.subarray(HEADER_BYTES, HEADER_BYTES + len);
    const rest = b.subarray(HEADER_BYTES + len);
    this.chunks[0] = rest;
    if (rest.length === 0) this.chunks.shift();
    this.have -= HEADER_BYTES + len;
    if (crc32(payload) !== b.readUInt32LE(12)) { this.fail(new MigrationError(`${this.peer} sent a ${frameName(type)} whose checksum does not match (damaged stream)`, 'EPROTO')); return; }
    this.want = undefined;
    clearTimeout(w.timer);
    if (type === F.REFUSE) { w.reject(this.fail(this.refusal(payload))); return; }
    w.resolve({ type: type as FrameType, payload });
  }
}
