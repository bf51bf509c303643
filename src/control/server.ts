/**
 * Serves a VmControl on a unix socket (protocol.ts). One per VM.
 *
 * listen() makes the socket's directory (mode 0700) if needed and refuses
 * one that others could write to or that someone else owns; replaces a
 * stale socket file nobody answers on, and refuses a path a live VM owns.
 * The socket is bound in a private directory and linked into place with
 * mode 0600, so it is never reachable with looser permissions.
 * Clients are checked (SO_PEERCRED: our uid or root) and limited in number;
 * each one is held to bounded memory (connection.ts).
 * close() stops accepting, lets the requests in flight finish (so the
 * answer to a --suspend reaches its client before tshyve exits), flushes
 * every reply, and removes the socket file. A failing operation is an
 * error reply, never a crash of the VM.
 */
import { createServer, createConnection, type Server, type Socket } from 'node:net';
import { chmodSync, linkSync, lstatSync, mkdirSync, mkdtempSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import type { VmControl, SnapshotProgress, MigrationProgress } from '../vm/control.js';
import { TshyveError, UserError } from '../errors.js';
import { log } from '../log.js';
import { peerCredentials } from '../host/libc.js';
import { parseRequest, salvageId, type Request, type VmInfo } from './protocol.js';
import { Connection, refuse, type ConnectionLimits } from './connection.js';

/** Linux's sun_path holds 108 bytes with the terminating NUL. */
export const MAX_SOCKET_PATH_BYTES = 107;

/** Clients served at once; more are told so and closed. */
export const MAX_CONNECTIONS = 16;
/** Longest request line; a client sending longer is dropped. */
export const MAX_REQUEST_BYTES = 64 * 1024;

export interface ControlServerOptions {
  /** how long close() waits for operations in flight (default 10 s) */
  drainMs?: number;
  /** at most this many progress events a second per request (default 20) */
  progressPerSecond?: number;
  /** a client leaving more than 64 KiB of replies unread this long is dropped (default 10 s) */
  replyTimeoutMs?: number;
}

const LIMITS: Omit<ConnectionLimits, 'replyTimeoutMs'> = {
  maxRequestBytes: MAX_REQUEST_BYTES,
  replyHighWater: 64 * 1024, // stop reading requests above this much unread
  replyHardMax: 1024 * 1024, // answers to requests already running, beyond that
  maxActive: 16, // requests served at once per client
};

export class ControlServer {
  private server: Server | undefined;
  private readonly conns = new Set<Socket>();
  private refusing = 0; // refused clients still reading their error line
  private readonly inflight = new Set<Promise<void>>();
  private socketPath: string | undefined;
  /** the inode we bound, so we never remove a socket someone else made since */
  private ino: number | undefined;
  private closing: Promise<void> | undefined;

  constructor(readonly control: VmControl, private readonly opts: ControlServerOptions = {}) {}

  /** The socket path while listening. */
  get path(): string | undefined { return this.socketPath; }

  /** Clients being served now (refused ones not counted). */
  get clients(): number { return this.conns.size; }

  async listen(path: string): Promise<void> {
    if (this.server) throw new Error('ControlServer is already listening');
    if (path === '') throw new UserError('control socket path is empty');
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
      throw new UserError(`control socket path ${path} is too long (${Buffer.byteLength(path)} bytes; a unix socket path holds ${MAX_SOCKET_PATH_BYTES})`);
    }
    const dir = dirname(path);
    // The socket is first bound at DIR/.XXXXXX/s, which must fit too.
    const dirMax = MAX_SOCKET_PATH_BYTES - '/.XXXXXX/s'.length;
    if (Buffer.byteLength(dir) > dirMax) {
      throw new UserError(`control socket directory ${dir} is too long (at most ${dirMax} bytes: the socket is bound at a temporary name there first)`);
    }
    makeDir(dir);
    checkDir(dir);
    await clearStale(path);
    // Bound where only we can reach it, made 0600, then linked into place:
    // link() fails if the name exists (two VMs starting at once).
    let tmp: string;
    try { tmp = mkdtempSync(join(dir, '.')); } catch (e) { throw cannotCreate(path, e); }
    const server = createServer((c) => this.accept(c));
    try {
      const tmpPath = join(tmp, 's');
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(tmpPath, () => { server.off('error', reject); resolve(); });
      }).catch((e: unknown) => { throw cannotCreate(path, e); });
      try {
        chmodSync(tmpPath, 0o600);
        linkSync(tmpPath, path);
      } catch (e) {
        server.close();
        throw (e as NodeJS.ErrnoException).code === 'EEXIST' ? inUse(path) : cannotCreate(path, e);
      }
      this.ino = statSync(path).ino;
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    server.on('error', (e) => log('warn', `control socket ${path}: ${e.message}`));
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
    const why = this.refusal(c);
    if (why) {
      // Each refused client holds a descriptor while it reads its line: a flood of them is just closed.
      if (this.refusing >= MAX_CONNECTIONS * 4) { c.destroy(); return; }
      this.refusing++;
      c.once('close', () => { this.refusing--; });
      refuse(c, why);
      return;
    }
    this.conns.add(c);
    c.on('close', () => this.conns.delete(c));
    new Connection(c, { ...LIMITS, replyTimeoutMs: this.opts.replyTimeoutMs ?? 10_000 }, (conn, line) => this.onLine(conn, line));
  }

  /** Why this client is turned away, if it is: not our uid nor root, or one too many. */
  private refusal(c: Socket): string | undefined {
    // Node keeps a unix socket's descriptor on its handle; SO_PEERCRED needs it.
    const fd = (c as unknown as { _handle?: { fd?: number } })._handle?.fd;
    const cred = fd === undefined || fd < 0 ? undefined : peerCredentials(fd);
    const euid = process.geteuid?.() ?? 0;
    if (!cred) return 'permission denied: cannot check the client';
    if (cred.uid !== euid && cred.uid !== 0) {
      log('warn', `control socket: refused a client of uid ${cred.uid} (pid ${cred.pid})`);
      return 'permission denied';
    }
    if (this.conns.size >= MAX_CONNECTIONS) return `too many connections (at most ${MAX_CONNECTIONS})`;
    return undefined;
  }

  /** Serve one request line; resolves once it is answered. */
  private onLine(conn: Connection, line: string): Promise<void> {
    let req: Request;
    try {
      req = parseRequest(line);
    } catch (e) {
      conn.send({ id: salvageId(line), ok: false, error: (e as Error).message });
      return Promise.resolve();
    }
    if (this.closing) {
      conn.send({ id: req.id, ok: false, error: `VM ${this.control.name} is shutting down` });
      return Promise.resolve();
    }
    const p = this.serve(conn, req).finally(() => this.inflight.delete(p));
    this.inflight.add(p);
    return p;
  }

  private async serve(conn: Connection, req: Request): Promise<void> {
    try {
      const result = await this.run(req, progressSender(conn, req, this.opts.progressPerSecond ?? 20));
      conn.send({ id: req.id, ok: true, result: result ?? null });
    } catch (e) {
      if (!(e instanceof TshyveError)) log('warn', `control socket: ${req.op}: ${(e as Error)?.stack ?? String(e)}`);
      const msg = e instanceof Error ? e.message : String(e);
      conn.send({ id: req.id, ok: false, error: msg.split('\n')[0] || 'failed' });
    }
  }

  private async run(req: Request, onProgress: (p: SnapshotProgress | MigrationProgress) => void): Promise<unknown> {
    const vm = this.control;
    switch (req.op) {
      case 'info': return { name: vm.name, pid: process.pid, paused: vm.paused, sandbox: vm.sandbox?.on ? `on (${vm.sandbox.layers})` : 'off' } satisfies VmInfo;
      case 'stats': return vm.stats();
      case 'pause': await vm.pause(); return { paused: vm.paused };
      case 'resume': vm.resume(); return { paused: vm.paused };
      case 'checkpoint': return vm.checkpoint(fileArg(req), { onProgress, external: req.args.external === true });
      case 'suspend': return vm.suspend(fileArg(req), { onProgress });
      case 'migrate': return vm.migrate(targetArg(req), { live: req.args.live === true, onProgress });
      case 'forceReset': vm.forceReset(); return null;
      case 'forcePoweroff': vm.forcePoweroff(); return null;
      case 'destroy': vm.destroy(); return null;
    }
  }
}

/** Progress events, at most `perSecond`, but always the first and the last (and every migration phase change). */
function progressSender(conn: Connection, req: Request, perSecond: number): (p: SnapshotProgress | MigrationProgress) => void {
  let last = 0, lastPhase: string | undefined;
  const gap = 1000 / perSecond;
  return (p) => {
    const now = performance.now();
    const phase = 'phase' in p ? p.phase : undefined;
    if (last !== 0 && now - last < gap && p.done < p.total && phase === lastPhase) return;
    last = now;
    lastPhase = phase;
    if (Number.isFinite(p.done) && Number.isFinite(p.total)) conn.send({ id: req.id, progress: { ...p } });
  };
}

function fileArg(req: Request): string {
  const f = req.args.file;
  if (typeof f !== 'string' || f === '') throw new UserError(`${req.op} needs a file`);
  // The server's working directory means nothing to the client: clients resolve paths.
  if (!isAbsolute(f)) throw new UserError(`${req.op} file ${f} must be an absolute path`);
  return f;
}

/** A migration's destination: `HOST,PORT` or `unix:/abs/path` (checked again by the VM). */
function targetArg(req: Request): string {
  const t = req.args.target;
  if (typeof t !== 'string' || t === '') throw new UserError('migrate needs a target (HOST,PORT or unix:PATH)');
  return t;
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

/**
 * A directory others could write to could have our socket swapped under
 * us; one owned by another user is theirs. Either is refused.
 */
function checkDir(dir: string): void {
  const st = statSync(dir);
  const euid = process.geteuid?.() ?? 0;
  if (!st.isDirectory()) throw new UserError(`control socket directory ${dir} is not a directory`);
  if (st.uid !== euid && st.uid !== 0) throw new UserError(`control socket directory ${dir} belongs to uid ${st.uid}, not to us (uid ${euid}) or root`);
  if (st.mode & 0o022) {
    throw new UserError(`control socket directory ${dir} is writable by others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}); use a directory only its owner can write`);
  }
}

function cannotCreate(path: string, e: unknown): UserError {
  return new UserError(`cannot create control socket ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
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
