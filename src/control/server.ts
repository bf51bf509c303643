/**
 * Serves a VmControl on a unix socket (protocol.ts). One per VM.
 *
 * listen() makes the socket's directory (mode 0700) if needed, replaces a
 * stale socket file nobody answers on, and refuses a path a live VM owns.
 * close() stops accepting, lets the requests in flight finish (so the
 * answer to a --suspend reaches its client before tshyve exits), flushes
 * every reply, and removes the socket file. A failing operation is an
 * error reply, never a crash of the VM.
 */
import { createServer, createConnection, type Server, type Socket } from 'node:net';
import { chmodSync, lstatSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { dirname, isAbsolute } from 'node:path';
import type { VmControl, SnapshotProgress } from '../vm/control.js';
import { TshyveError, UserError } from '../errors.js';
import { log } from '../log.js';
import { LineDecoder, encode, parseRequest, salvageId, type Request, type ServerMessage, type VmInfo } from './protocol.js';

/** Linux's sun_path holds 108 bytes with the terminating NUL. */
export const MAX_SOCKET_PATH_BYTES = 107;

export interface ControlServerOptions {
  /** how long close() waits for operations in flight (default 10 s) */
  drainMs?: number;
  /** at most this many progress events a second per request (default 20) */
  progressPerSecond?: number;
}

export class ControlServer {
  private server: Server | undefined;
  private readonly conns = new Set<Socket>();
  private readonly inflight = new Set<Promise<void>>();
  private socketPath: string | undefined;
  /** the inode we bound, so we never remove a socket someone else made since */
  private ino: number | undefined;
  private closing: Promise<void> | undefined;

  constructor(readonly control: VmControl, private readonly opts: ControlServerOptions = {}) {}

  /** The socket path while listening. */
  get path(): string | undefined { return this.socketPath; }

  async listen(path: string): Promise<void> {
    if (this.server) throw new Error('ControlServer is already listening');
    if (path === '') throw new UserError('control socket path is empty');
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
      throw new UserError(`control socket path ${path} is too long (${Buffer.byteLength(path)} bytes; a unix socket path holds ${MAX_SOCKET_PATH_BYTES})`);
    }
    makeDir(dirname(path));
    await clearStale(path);
    const server = createServer((c) => this.accept(c));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => { server.off('error', reject); resolve(); });
    }).catch((e: NodeJS.ErrnoException) => {
      // Two VMs starting at once: the other one bound it between our check and our bind.
      if (e.code === 'EADDRINUSE') throw inUse(path);
      throw new UserError(`cannot create control socket ${path}: ${e.code ?? e.message}`);
    });
    server.on('error', (e) => log('warn', `control socket ${path}: ${e.message}`));
    try {
      chmodSync(path, 0o600);
      this.ino = statSync(path).ino;
    } catch { /* removed under us: close() copes */ }
    this.server = server;
    this.socketPath = path;
  }

  /**
   * Stop serving: no new connections or requests, wait (up to drainMs) for
   * the operations in flight, flush their replies, remove the socket file.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  /** For process 'exit' handlers, where nothing asynchronous runs any more. */
  unlinkSync(): void {
    const p = this.socketPath;
    if (!p) return;
    try {
      if (this.ino === undefined || lstatSync(p).ino === this.ino) unlinkSync(p);
    } catch { /* already gone */ }
  }

  private async doClose(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.close();
    if (this.inflight.size) {
      let timer: NodeJS.Timeout | undefined;
      const drained = await Promise.race([
        Promise.allSettled([...this.inflight]).then(() => true),
        new Promise<boolean>((r) => { timer = setTimeout(() => r(false), this.opts.drainMs ?? 10_000); }),
      ]);
      clearTimeout(timer);
      if (!drained) log('warn', `control socket: ${this.inflight.size} operation(s) still running at exit, not answered`);
    }
    // end() sends what is queued, then FIN; give slow readers a moment.
    await Promise.all([...this.conns].map((c) => new Promise<void>((resolve) => {
      if (c.destroyed) { resolve(); return; }
      const t = setTimeout(() => { c.destroy(); resolve(); }, 2000);
      c.once('close', () => { clearTimeout(t); resolve(); });
      c.end();
    })));
    this.unlinkSync();
    this.socketPath = undefined;
  }

  private accept(c: Socket): void {
    if (this.closing) { c.destroy(); return; }
    this.conns.add(c);
    const dec = new LineDecoder();
    c.on('close', () => this.conns.delete(c));
    c.on('error', () => { /* the client went away; its replies are dropped */ });
    c.on('data', (chunk: Buffer) => {
      if (dec.overflow) return; // dropped: ignore the rest of what it sends
      for (const line of dec.push(chunk)) {
        if (line.trim() === '') continue;
        this.onLine(c, line);
      }
      if (dec.overflow) {
        send(c, { id: null, ok: false, error: 'bad request: line too long' });
        c.end();
      }
    });
  }

  private onLine(c: Socket, line: string): void {
    let req: Request;
    try {
      req = parseRequest(line);
    } catch (e) {
      send(c, { id: salvageId(line), ok: false, error: (e as Error).message });
      return;
    }
    if (this.closing) { send(c, { id: req.id, ok: false, error: `VM ${this.control.name} is shutting down` }); return; }
    const p = this.serve(c, req).finally(() => this.inflight.delete(p));
    this.inflight.add(p);
  }

  private async serve(c: Socket, req: Request): Promise<void> {
    try {
      const result = await this.run(req, progressSender(c, req, this.opts.progressPerSecond ?? 20));
      send(c, { id: req.id, ok: true, result: result ?? null });
    } catch (e) {
      if (!(e instanceof TshyveError)) log('warn', `control socket: ${req.op}: ${(e as Error)?.stack ?? String(e)}`);
      const msg = e instanceof Error ? e.message : String(e);
      send(c, { id: req.id, ok: false, error: msg.split('\n')[0] || 'failed' });
    }
  }

  private async run(req: Request, onProgress: (p: SnapshotProgress) => void): Promise<unknown> {
    const vm = this.control;
    switch (req.op) {
      case 'info': return { name: vm.name, pid: process.pid, paused: vm.paused } satisfies VmInfo;
      case 'stats': return vm.stats();
      case 'pause': await vm.pause(); return { paused: vm.paused };
      case 'resume': vm.resume(); return { paused: vm.paused };
      case 'checkpoint': return vm.checkpoint(fileArg(req), { onProgress });
      case 'suspend': return vm.suspend(fileArg(req), { onProgress });
      case 'forceReset': vm.forceReset(); return null;
      case 'forcePoweroff': vm.forcePoweroff(); return null;
      case 'destroy': vm.destroy(); return null;
    }
  }
}

function send(c: Socket, msg: ServerMessage): void {
  if (!c.destroyed && c.writable) c.write(encode(msg));
}

/** Progress events, at most `perSecond`, but always the first and the last. */
function progressSender(c: Socket, req: Request, perSecond: number): (p: SnapshotProgress) => void {
  let last = 0;
  const gap = 1000 / perSecond;
  return (p) => {
    const now = performance.now();
    if (last !== 0 && now - last < gap && p.done < p.total) return;
    last = now;
    if (Number.isFinite(p.done) && Number.isFinite(p.total)) send(c, { id: req.id, progress: { done: p.done, total: p.total } });
  };
}

function fileArg(req: Request): string {
  const f = req.args.file;
  if (typeof f !== 'string' || f === '') throw new UserError(`${req.op} needs a file`);
  // The server's working directory means nothing to the client: clients resolve paths.
  if (!isAbsolute(f)) throw new UserError(`${req.op} file ${f} must be an absolute path`);
  return f;
}

function makeDir(dir: string): void {
  try {
    const first = mkdirSync(dir, { recursive: true, mode: 0o700 });
    // mode is filtered by the umask; a control directory is for its owner only.
    if (first !== undefined) chmodSync(dir, 0o700);
  } catch (e) {
    throw new UserError(`cannot create control socket directory ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function inUse(path: string): UserError {
  return new UserError(`control socket ${path} belongs to a running VM (is a VM of that name running already?); use another name or -o control.path=PATH`, 'EINUSE');
}

/** Remove `path` if it is a socket nobody answers on; throw if someone does. */
async function clearStale(path: string): Promise<void> {
  let st;
  try { st = lstatSync(path); } catch { return; }
  if (!st.isSocket()) throw new UserError(`control socket path ${path} exists and is not a socket`);
  const state = await new Promise<string>((resolve) => {
    const s = createConnection(path);
    const done = (v: string) => { clearTimeout(t); s.destroy(); resolve(v); };
    // A live socket accepts at once (even when its process is stopped); only refusal is stale.
    const t = setTimeout(() => done('live'), 1000);
    s.once('connect', () => done('live'));
    s.once('error', (e: NodeJS.ErrnoException) => done(e.code === 'ECONNREFUSED' || e.code === 'ENOENT' ? 'stale' : e.code ?? e.message));
  });
  if (state === 'live') throw inUse(path);
  if (state !== 'stale') throw new UserError(`cannot check control socket ${path}: ${state}`);
  try { unlinkSync(path); } catch { /* gone already */ }
  log('debug', `removed stale control socket ${path}`);
}
