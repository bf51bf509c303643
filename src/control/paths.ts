/**
 * Where control sockets live: DIR/NAME.sock. DIR is $TSHYVE_CONTROL_DIR when
 * set, /run/tshyve for root (bhyve's home for such things), and
 * $XDG_RUNTIME_DIR/tshyve for other users who have one (they cannot write
 * /run). tshyve and tshyvectl use the same rule, so they meet.
 */
import { join } from 'node:path';

export const SOCKET_SUFFIX = '.sock';

export function defaultControlDir(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.()): string {
  if (env.TSHYVE_CONTROL_DIR) return env.TSHYVE_CONTROL_DIR;
  if (uid !== 0 && env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'tshyve');
  return '/run/tshyve';
}

export function socketPathFor(name: string, dir = defaultControlDir()): string {
  return join(dir, name + SOCKET_SUFFIX);
}

/** A name is a socket path when it has a '/' (a VM name never does). */
export function resolveSocket(nameOrPath: string, dir?: string): { name: string; path: string } {
  if (nameOrPath.includes('/')) {
    const base = nameOrPath.slice(nameOrPath.lastIndexOf('/') + 1);
    return { name: base.endsWith(SOCKET_SUFFIX) ? base.slice(0, -SOCKET_SUFFIX.length) : base, path: nameOrPath };
  }
  return { name: nameOrPath, path: socketPathFor(nameOrPath, dir) };
}
