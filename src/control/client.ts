/**
 * A client of a VM's control socket: what tshyvectl uses, and what a Node
 * program uses to control a tshyve process (or another Machine's
 * ControlServer).
 *
 *   const vm = await connectVm('myvm');          // or a socket path
 *   console.log(await vm.stats());
 *   await vm.checkpoint('/var/tmp/myvm.ckp', { onProgress: (p) => ... });
 *   vm.close();
 */
import { createConnection, type Socket } from 'node:net';
import { readdirSync } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import { TshyveError } from '../errors.js';
import type { MigrationOptions, MigrationProgress, MigrationResult, SnapshotOptions, SnapshotProgress, SnapshotResult } from '../vm/control.js';
import { LineDecoder, encode, parseServerMessage, type Op, type VmInfo } from './protocol.js';
import { defaultControlDir, resolveSocket, SOCKET_SUFFIX } from './paths.js';

/** A control operation failed: the VM said no, or it cannot be reached. `remote` when the VM answered. */
export class ControlError extends TshyveError {
  constructor(message: string, readonly remote = false, code = 'ECONTROL') {
    super(code, message);
  }
}

export interface ConnectOptions {
  /** the directory NAME.sock is looked up in (default: defaultControlDir()) */
  dir?: string;
  /** give up connecting after this long (default 2 s) */
  timeoutMs?: number;
}

export interface CallOptions {
  onProgress?(p: SnapshotProgress | MigrationProgress): void;
  /** give up waiting for the answer after this long; 0 = never (default: 30 s, never for checkpoint/suspend) */
  timeoutMs?: number;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  onProgress?(p: SnapshotProgress | MigrationProgress): void;
  timer?: NodeJS.Timeout;
}

export class ControlClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closedWhy: string | undefined;

  private constructor(private readonly sock: Socket, readonly name: string, readonly path: string) {
    const dec = new LineDecoder();
    sock.on('data', (chunk: Buffer) => {
      for (const line of dec.push(chunk)) this.onLine(line);
      if (dec.overflow) this.fail(`VM ${name} sent a line too long`);
    });
    sock.on('error', (e: NodeJS.ErrnoException) => this.fail(`VM ${name}: ${e.code ?? e.message}`));
    sock.on('close', () => this.fail(`VM ${name} closed the connection`));
  }

  /** Connect to the socket at `path`; `name` is what error messages call the VM. */
  static connect(path: string, name = resolveSocket(path).name, timeoutMs = 2000): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const sock = createConnection(path);
      const t = setTimeout(() => { sock.destroy(); reject(new ControlError(`VM ${name} is not answering (${path})`, false, 'ETIMEDOUT')); }, timeoutMs);
      sock.once('connect', () => {
        clearTimeout(t);
        sock.removeAllListeners('error');
        resolve(new ControlClient(sock, name, path));
      });
      sock.once('error', (e: NodeJS.ErrnoException) => { clearTimeout(t); reject(connectError(e, name, path)); });
    });
  }

  /** Send one request; resolves with its result, rejects with a ControlError. */
  call<T = unknown>(op: Op, args: Record<string, unknown> = {}, opts: CallOptions = {}): Promise<T> {
    if (this.closedWhy) return Promise.reject(new ControlError(this.closedWhy));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { resolve: resolve as (v: unknown) => void, reject, onProgress: opts.onProgress };
      const long = op === 'checkpoint' || op === 'suspend' || op === 'migrate';
      const timeoutMs = opts.timeoutMs ?? (long ? 0 : 30_000);
      if (timeoutMs > 0) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new ControlError(`VM ${this.name} did not answer ${op} within ${(timeoutMs / 1000).toFixed(1)} s`, false, 'ETIMEDOUT'));
        }, timeoutMs);
      }
      this.pending.set(id, p);
      this.sock.write(encode({ id, op, args }));
    });
  }

  info(): Promise<VmInfo> { return this.call('info'); }
  stats(): Promise<Record<string, number | string>> { return this.call('stats'); }
  async pause(): Promise<void> { await this.call('pause'); }
  async resume(): Promise<void> { await this.call('resume'); }
  /** `file` is resolved against this process's working directory. */
  checkpoint(file: string, opts: SnapshotOptions = {}): Promise<SnapshotResult> {
    return this.call('checkpoint', { file: resolvePath(file), ...(opts.external && { external: true }) }, { onProgress: opts.onProgress });
  }
  suspend(file: string, opts: SnapshotOptions = {}): Promise<SnapshotResult> {
    return this.call('suspend', { file: resolvePath(file) }, { onProgress: opts.onProgress });
  }
  /** `target`: `HOST,PORT`, or `unix:PATH` (resolved against this process's working directory). */
  migrate(target: string, opts: MigrationOptions = {}): Promise<MigrationResult> {
    const t = target.startsWith('unix:') ? `unix:${resolvePath(target.slice(5))}` : target;
    return this.call('migrate', { target: t, live: opts.live === true }, { onProgress: opts.onProgress as CallOptions['onProgress'] });
  }
  async forceReset(): Promise<void> { await this.call('forceReset'); }
  async forcePoweroff(): Promise<void> { await this.call('forcePoweroff'); }
  async destroy(): Promise<void> { await this.call('destroy'); }

  close(): void {
    this.closedWhy ??= 'connection closed';
    this.sock.end();
  }

  private onLine(line: string): void {
    const m = parseServerMessage(line);
    // An error for no request: the server turned us away (too many clients, not our uid...).
    if (m && m.id === null && 'ok' in m && !m.ok) { this.fail(`VM ${this.name}: ${m.error}`); return; }
    if (!m || typeof m.id !== 'number') return;
    const p = this.pending.get(m.id);
    if (!p) return;
    if ('progress' in m) { p.onProgress?.(m.progress); return; }
    this.pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.ok) p.resolve(m.result); else p.reject(new ControlError(m.error, true));
  }

  private fail(why: string): void {
    this.closedWhy ??= why;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new ControlError(why));
    }
    this.sock.destroy();
  }
}

/** Connect to a VM by name (DIR/NAME.sock) or by socket path (anything with a '/'). */
export function connectVm(nameOrPath: string, opts: ConnectOptions = {}): Promise<ControlClient> {
  const { name, path } = resolveSocket(nameOrPath, opts.dir);
  return ControlClient.connect(path, name, opts.timeoutMs);
}

export interface ListedVm extends VmInfo { socket: string }

/**
 * The VMs whose sockets in `dir` answer, by socket name; stale sockets and
 * other files are skipped. A missing directory is an empty list.
 */
export async function listVms(dir = defaultControlDir(), timeoutMs = 1000): Promise<ListedVm[]> {
  let names: string[];
  try { names = readdirSync(dir).filter((f) => f.endsWith(SOCKET_SUFFIX)).sort(); } catch { return []; }
  const found = await Promise.all(names.map(async (f): Promise<ListedVm | undefined> => {
    const path = join(dir, f);
    const name = f.slice(0, -SOCKET_SUFFIX.length);
    let c: ControlClient | undefined;
    try {
      c = await ControlClient.connect(path, name, timeoutMs);
      const info = await c.call<VmInfo>('info', {}, { timeoutMs });
      return { ...info, name, socket: path };
    } catch {
      return undefined;
    } finally {
      c?.close();
    }
  }));
  return found.filter((v): v is ListedVm => v !== undefined);
}

function connectError(e: NodeJS.ErrnoException, name: string, path: string): ControlError {
  switch (e.code) {
    case 'ENOENT': return new ControlError(`no VM named ${name} (no socket at ${path})`, false, 'ENOENT');
    case 'ECONNREFUSED': return new ControlError(`VM ${name} is not answering (stale socket ${path})`, false, 'ECONNREFUSED');
    case 'EACCES': case 'EPERM': return new ControlError(`no permission to use ${path}`, false, e.code);
    case 'ENOTDIR': return new ControlError(`no VM named ${name} (${path}: a path component is not a directory)`, false, 'ENOENT');
    default: return new ControlError(`cannot connect to VM ${name} at ${path}: ${e.code ?? e.message}`, false, e.code ?? 'ECONTROL');
  }
}
