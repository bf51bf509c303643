/**
 * The control socket's wire format: one JSON object per line (UTF-8, '\n'
 * terminated) over a unix stream socket, in both directions.
 *
 *   request   {"id":1,"op":"checkpoint","args":{"file":"/abs/vm.ckp"}}   (+ "external":true: --ext-checkpoint)
 *   progress  {"id":1,"progress":{"done":1048576,"total":16777216}}
 *             a migration's also says {"phase":"copy","round":2,"dirtyRate":N,"expectedDowntimeMs":N}
 *   response  {"id":1,"ok":true,"result":{...}}   or   {"id":1,"ok":false,"error":"one line"}
 *
 * A client may have several requests in flight; `id` pairs them up. A line
 * that is not a request gets {"id":null,"ok":false,"error":...}.
 */
import type { MigrationProgress, SnapshotProgress } from '../vm/control.js';

/** Operations a control socket serves: VmControl's methods, plus `info`. */
export const OPS = ['info', 'stats', 'pause', 'resume', 'checkpoint', 'suspend', 'migrate', 'forceReset', 'forcePoweroff', 'destroy'] as const;
export type Op = (typeof OPS)[number];

export type RequestId = number | string;

export interface Request { id: RequestId; op: Op; args: Record<string, unknown> }
export type Response =
  | { id: RequestId | null; ok: true; result: unknown }
  | { id: RequestId | null; ok: false; error: string };
/** A save's progress, or a migration's (which says more: MigrationProgress). */
export interface ProgressEvent { id: RequestId; progress: SnapshotProgress | MigrationProgress }
export type ServerMessage = Response | ProgressEvent;

/** What `info` answers: enough for `tshyvectl --list` and a liveness check. */
export interface VmInfo { name: string; pid: number; paused: boolean; sandbox: string }

/** Longest line either side accepts; longer is a broken or hostile peer. */
export const MAX_LINE_BYTES = 1 << 20;

export function encode(msg: Request | ServerMessage): string {
  return JSON.stringify(msg) + '\n';
}

/**
 * Splits a byte stream into lines however the chunks fall (a line split
 * across chunks, several lines in one chunk, a multi-byte UTF-8 character
 * cut in two). `overflow` is set once a line grows past `maxBytes`; the
 * caller should then drop the peer.
 */
export class LineDecoder {
  private parts: Buffer[] = [];
  private pending = 0;
  overflow = false;
  constructor(private readonly maxBytes = MAX_LINE_BYTES) {}

  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      // A line ending in this chunk counts too, not only a line still open.
      if (this.pending + nl - start > this.maxBytes) { this.overflow = true; this.parts = []; this.pending = 0; return lines; }
      this.parts.push(chunk.subarray(start, nl));
      lines.push(Buffer.concat(this.parts).toString('utf8'));
      this.parts = []; this.pending = 0;
      start = nl + 1;
    }
    if (start < chunk.length) {
      this.parts.push(chunk.subarray(start));
      this.pending += chunk.length - start;
      if (this.pending > this.maxBytes) { this.overflow = true; this.parts = []; this.pending = 0; }
    }
    return lines;
  }
}

/** Parse and check one request line; throws Error with a one-line reason. */
export function parseRequest(line: string): Request {
  let v: unknown;
  try { v = JSON.parse(line); } catch { throw new Error('bad request: not JSON'); }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('bad request: not a JSON object');
  const o = v as Record<string, unknown>;
  if (!isId(o.id)) throw new Error('bad request: "id" must be a number or a string');
  if (typeof o.op !== 'string') throw new Error('bad request: "op" must be a string');
  if (!(OPS as readonly string[]).includes(o.op)) throw new Error(`unknown operation '${o.op.slice(0, 40)}'`);
  const args = o.args ?? {};
  if (typeof args !== 'object' || args === null || Array.isArray(args)) throw new Error('bad request: "args" must be an object');
  return { id: o.id, op: o.op as Op, args: args as Record<string, unknown> };
}

/** The id of a line that failed parseRequest, if it had a usable one. */
export function salvageId(line: string): RequestId | null {
  try {
    const v = JSON.parse(line) as { id?: unknown };
    return typeof v === 'object' && v !== null && isId(v.id) ? v.id : null;
  } catch { return null; }
}

/** Parse one server line; undefined when it is not a message we know. */
export function parseServerMessage(line: string): ServerMessage | undefined {
  let v: unknown;
  try { v = JSON.parse(line); } catch { return undefined; }
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  if (!(isId(o.id) || o.id === null)) return undefined;
  if (typeof o.progress === 'object' && o.progress !== null && o.id !== null) {
    const p = o.progress as Record<string, unknown>;
    if (typeof p.done !== 'number' || typeof p.total !== 'number') return undefined;
    const progress: SnapshotProgress | MigrationProgress = { done: p.done, total: p.total };
    if (typeof p.phase === 'string' && typeof p.round === 'number' && typeof p.dirtyRate === 'number' && typeof p.expectedDowntimeMs === 'number') {
      Object.assign(progress, { phase: p.phase, round: p.round, dirtyRate: p.dirtyRate, expectedDowntimeMs: p.expectedDowntimeMs });
    }
    return { id: o.id as RequestId, progress };
  }
  if (o.ok === true) return { id: o.id as RequestId | null, ok: true, result: o.result };
  if (o.ok === false) return { id: o.id as RequestId | null, ok: false, error: typeof o.error === 'string' ? o.error : 'error' };
  return undefined;
}

function isId(v: unknown): v is RequestId {
  return (typeof v === 'number' && Number.isFinite(v)) || (typeof v === 'string' && v.length <= 100);
}
