/**
 * Serial backend selection from bhyve-style strings (`-l com1,SPEC`,
 * `lpc.com1.path=SPEC`):
 *   stdio             the monitor's terminal
 *   tcp=IP:PORT       listen on IP:PORT ([v6]:PORT too); tcp=PORT means 127.0.0.1
 *   unix=PATH         listen on a unix socket
 *   /abs/path, ./rel  output only to a file or character device; a regular
 *                     file stops at 64 MiB, `/path,maxsize=SIZE` (bhyve's
 *                     size syntax, `0` for no limit) sets another limit
 * Resolves once the backend is ready (listeners are listening).
 */
import net from 'node:net';
import { UserError } from '../../errors.js';
import { parseMemSize } from '../../config/size.js';
import { FileSerialBackend } from './file.js';
import { TcpSerialBackend, UnixSerialBackend } from './socket.js';
import { StdioBackend } from './stdio.js';
import type { SerialBackend } from './types.js';

export type { SerialBackend } from './types.js';
export { restoreTerminals, StdioBackend } from './stdio.js';
export { TcpSerialBackend, UnixSerialBackend } from './socket.js';
export { FileSerialBackend, FILE_MAX_BYTES_DEFAULT } from './file.js';

export type SerialSpec =
  | { kind: 'stdio' }
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string }
  | { kind: 'file'; path: string; maxBytes?: number };

function parsePort(s: string, spec: string): number {
  if (!/^\d{1,5}$/.test(s) || Number(s) > 65535) {
    throw new UserError(`serial backend '${spec}': bad port '${s}' (expected 0-65535)`);
  }
  return Number(s);
}

function parseMaxSize(s: string, spec: string): number {
  try {
    return parseMemSize(s);
  } catch {
    throw new UserError(`serial backend '${spec}': bad maxsize '${s}' (expected a size such as 64M, or 0 for no limit)`);
  }
}

/** Parse a backend string; throws UserError with one line on anything malformed. */
export function parseSerialSpec(spec: string): SerialSpec {
  if (spec === 'stdio') return { kind: 'stdio' };
  if (spec.startsWith('tcp=')) {
    const a = spec.slice(4);
    if (/^\d+$/.test(a)) return { kind: 'tcp', host: '127.0.0.1', port: parsePort(a, spec) };
    const m = /^\[([^\]]+)\]:([^:]*)$/.exec(a) ?? /^([^:[\]]+):([^:]*)$/.exec(a);
    if (!m) throw new UserError(`serial backend '${spec}': expected tcp=IP:PORT`);
    const host = m[1]!;
    if (net.isIP(host) === 0 && host !== 'localhost') {
      throw new UserError(`serial backend '${spec}': '${host}' is not an IP address`);
    }
    return { kind: 'tcp', host, port: parsePort(m[2]!, spec) };
  }
  if (spec.startsWith('unix=')) {
    const path = spec.slice(5);
    if (path === '' || path.includes('\0')) throw new UserError(`serial backend '${spec}': expected unix=PATH`);
    return { kind: 'unix', path };
  }
  if ((spec.startsWith('/') || spec.startsWith('./')) && !spec.includes('\0')) {
    const opt = spec.lastIndexOf(',maxsize=');
    const path = opt < 0 ? spec : spec.slice(0, opt);
    if (!path.endsWith('/')) {
      if (opt < 0) return { kind: 'file', path };
      const size = spec.slice(opt + ',maxsize='.length);
      return { kind: 'file', path, maxBytes: size === '0' ? 0 : parseMaxSize(size, spec) };
    }
  }
  throw new UserError(`unknown serial backend '${spec}' (expected stdio, tcp=IP:PORT, unix=PATH or a /path)`);
}

export async function openSerialBackend(spec: string): Promise<SerialBackend> {
  const s = parseSerialSpec(spec);
  switch (s.kind) {
    case 'stdio': return new StdioBackend();
    case 'tcp': return TcpSerialBackend.open(s.host, s.port, spec);
    case 'unix': return UnixSerialBackend.open(s.path, spec);
    case 'file': return FileSerialBackend.open(s.path, s.maxBytes);
  }
}
