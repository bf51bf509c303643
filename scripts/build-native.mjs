#!/usr/bin/env node
/**
 * Build the sandbox's native part (native/sandbox.c -> build/Release/tshyve_sandbox.node)
 * with node-gyp, from source, against the headers of the node that runs this
 * (its prefix's include/node: nothing is downloaded). Skipped when the
 * module is newer than its sources. Run by `npm install` and `npm run build`.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'build', 'Release', 'tshyve_sandbox.node');
const sources = ['native/sandbox.c', 'binding.gyp'].map((f) => join(root, f));
const mtime = (f) => statSync(f).mtimeMs;
if (existsSync(out) && sources.every((s) => mtime(s) <= mtime(out))) process.exit(0);

const prefix = join(dirname(process.execPath), '..');
if (!existsSync(join(prefix, 'include', 'node', 'common.gypi'))) {
  process.stderr.write(`build-native: node's headers are not in ${prefix}/include/node (install them with node: Debian's nodejs has them); the sandbox needs its native part\n`);
  process.exit(1);
}
const bundled = join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const [cmd, args] = existsSync(bundled) ? [process.execPath, [bundled]] : ['node-gyp', []];
const r = spawnSync(cmd, [...args, 'rebuild', `--nodedir=${prefix}`, '--loglevel=warn'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
process.exit(r.status ?? 1);
