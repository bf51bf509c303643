/**
 * Where a migration goes: `HOST,PORT` (TCP) or `unix:PATH`, as bhyve's
 * migration writes it; the destination's listener, which takes one
 * connection and only from where it was told, and the source's connect.
 */
import { createServer, createConnection, Socket } from 'node:net';
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { UserError } from '../errors.js';
import { peerCredentials } from '../host/libc.js';
import type { SocketReserve } from '../host/sandbox/reserve.js';
import { log } from '../log.js';
import { MigrationError } from './wire.js';

export type MigrationAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/** Parse `HOST,PORT` or `unix:PATH` (absolute); UserError on anything else. */
export function parseMigrationAddress(s: string): MigrationAddress {
  if (s.startsWith('unix:')) {
    const path = s.slice(5);
    if (!isAbsolute(path)) throw new UserError(`migration address ${s}: unix:PATH needs an absolute path`);
    if (Buffer.byteLength(path) > 107) throw new UserError(`migration address ${s}: the path is too long for a unix socket`);
    return { kind: 'unix', path };
  }
  const m = /^([^,\s]+),([0-9]{1,5})$/.exec(s);
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) throw new UserError(`migration address '${s.slice(0, 200)}' is not HOST,PORT (port 1-65535) or unix:PATH`);
  return { kind: 'tcp', host: m[1]!, port };
}

export function formatAddress(a: MigrationAddress): string {
  return a.kind === 'unix' ? `unix:${a.path}` : `${a.host},${a.port}`;
}

/**
 * Connect to a destination; MigrationError (one line) when it cannot be
 * reached. In the sandbox (`reserve` given), TCP goes through one of the
 * sockets it reserved before lock-down, handed to node once connected.
 */
export async function connectTo(a: MigrationAddress, reserve?: SocketReserve, timeoutMs = 10_000): Promise<Socket> {
  if (a.kind === 'tcp' && reserve) {
    let fd: number;
    try {
      fd = await reserve.connect(a.host, a.port, timeoutMs);
    } catch (e) {
      if (e instanceof UserError) throw e;
      throw new MigrationError(`cannot connect to ${formatAddress(a)}: ${(e as Error).message}`);
    }
    return new Socket({ fd, readable: true, writable: true }).setNoDelay(true);
  }
  return new Promise((resolve, reject) => {
    const s = a.kind === 'unix' ? createConnection(a.path) : createConnection({ host: a.host, port: a.port });
    const t = setTimeout(() => { s.destroy(); reject(new MigrationError(`no answer from ${formatAddress(a)} within ${timeoutMs / 1000} s`)); }, timeoutMs);
    s.once('connect', () => { clearTimeout(t); s.removeAllListeners('error'); s.setNoDelay(true); resolve(s); });
    s.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      reject(new MigrationError(`cannot connect to ${formatAddress(a)}: ${e.code ?? e.message}`));
    });
  });
}

/**
 * Listen on `a` (TCP: bound to HOST only, not every interface; unix: a new
 * socket of mode 0600, a stale socket file replaced, anything else refused)
 * and resolve with the first connection from an acceptable peer (on a unix
 * socket, one of our own uid or root). Then the listener is closed: one
 * migration per destination. `onListening` is told once it listens.
 */
export function acceptOne(a: MigrationAddress, onListening?: () => void): Promise<Socket> {
  if (a.kind === 'unix') clearUnixPath(a.path);
  return new Promise((resolve, reject) => {
    const server = createServer({ pauseOnConnect: true });
    server.on('connection', (s) => {
      const why = refusal(a, s);
      if (why) { s.destroy(); log('warn', `refused a migration connection: ${why}`); return; }
      server.close();
      if (a.kind === 'unix') { try { unlinkSync(a.path); } catch { /* gone */ } }
      s.setNoDelay(true);
      resolve(s);
    });
    server.once('error', (e: NodeJS.ErrnoException) => reject(new UserError(`cannot listen for a migration on ${formatAddress(a)}: ${e.code ?? e.message}`)));
    const ready = () => {
      if (a.kind === 'unix') chmodSync(a.path, 0o600);
      onListening?.();
    };
    if (a.kind === 'unix') server.listen(a.path, ready); else server.listen(a.port, a.host, ready);
  });
}

/** Why this peer may not migrate into us, if it may not. */
function refusal(a: MigrationAddress, s: Socket): string | undefined {
  if (a.kind === 'unix') {
    const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
    const cred = fd === undefined || fd < 0 ? undefined : peerCredentials(fd);
    const euid = process.geteuid?.() ?? 0;
    if (!cred) return 'cannot check the peer';
    if (cred.uid !== euid && cred.uid !== 0) return `peer of uid ${cred.uid}`;
    return undefined;
  }
  return undefined; // TCP: bound to HOST alone, so only peers that reach that address get here
}

/** A socket left by an earlier destination is replaced; anything else at the path is refused. */
function clearUnixPath(path: string): void {
  let st;
  try { st = lstatSync(path); } catch { return; }
  if (!st.isSocket()) throw new UserError(`migration socket path ${path} exists and is not a socket`);
  unlinkSync(path);
}
