/**
 * The control socket's config keys: `control.path` (default DIR/NAME.sock,
 * see paths.ts; empty disables it) and `control.enable` (default true).
 */
import type { ConfigTree } from '../config/tree.js';
import { defaultControlDir, socketPathFor } from './paths.js';

/** The socket path a VM with this config serves on, or undefined when it has none. */
export function controlSocketPath(config: ConfigTree, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (!config.getBool('control.enable', true)) return undefined;
  const p = config.get('control.path');
  if (p !== undefined) return p === '' ? undefined : p;
  const name = config.get('name');
  return name === undefined ? undefined : socketPathFor(name, defaultControlDir(env));
}
