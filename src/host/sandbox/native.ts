/**
 * The sandbox's native part (native/sandbox.c, built by node-gyp into
 * build/Release/): a system call made on every thread, and the SIGSYS
 * handler that reports a refused one. Loaded through koffi, on first use.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import koffi from 'koffi';
import { HostError } from '../../errors.js';

/**
 * The folder of tshyve's package.json, found upwards from a module's URL:
 * this module is dist/src/host/sandbox/native.js, or part of a bundle in
 * dist/bundle/, so its depth below the root is not fixed.
 */
function packageRootFrom(url: string): string {
  for (let dir = dirname(fileURLToPath(url)); ; dir = dirname(dir)) {
    try {
      if ((JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: unknown }).name === 'tshyve') return dir;
    } catch { /* no package.json here, or not ours: go up */ }
    if (dirname(dir) === dir) throw new HostError(`no tshyve package.json above ${fileURLToPath(url)}`, 'ESANDBOX');
  }
}

export const PACKAGE_ROOT = packageRootFrom(import.meta.url);
const PATH = join(PACKAGE_ROOT, 'build', 'Release', 'tshyve_sandbox.node');

interface Native {
  allThreads: (seq: Buffer, n: number) => number | bigint;
  sigsysInstall: (table: string, kill: number) => number;
}

let native: Native | undefined;

function load(): Native {
  if (native) return native;
  if (!existsSync(PATH)) throw new HostError(`the sandbox's native part ${PATH} is not built (npm run build builds it; -o sandbox=off runs without the sandbox)`, 'ESANDBOX');
  const lib = koffi.load(PATH);
  native = {
    allThreads: lib.func('long tshyve_all_threads(const void *seq, long n)') as Native['allThreads'],
    sigsysInstall: lib.func('int tshyve_sigsys_install(const char *table, int kill)') as Native['sigsysInstall'],
  };
  return native;
}

/** Make system call `nr` on every thread of the process; the number of threads, or throws with the first errno. */
export function onEveryThread(what: string, nr: number, ...args: (number | bigint)[]): number {
  return onEveryThreadInTurn(what, [[nr, ...args]]);
}

/** A system call's number and arguments. */
export type Call = [number, ...(number | bigint)[]];

/**
 * Make the calls in order on every thread (each thread stops at its first
 * failure), in one round: a round signals each thread and waits for it, which
 * costs hundreds of milliseconds in the nested lab (bench/README.md section 6).
 */
export function onEveryThreadInTurn(what: string, calls: Call[]): number {
  const seq = Buffer.alloc(calls.length * 7 * 8);
  calls.forEach((c, i) => c.forEach((v, j) => seq.writeBigInt64LE(BigInt(v), (i * 7 + j) * 8)));
  const r = Number(load().allThreads(seq, calls.length));
  if (r < 0) throw new HostError(`sandbox: ${what} failed on a thread: errno ${-r}`, 'ESANDBOX');
  return r;
}

/** Install the SIGSYS handler: `names` maps numbers to names for its report; `kill` ends the process on a refusal. */
export function installSigsysHandler(names: Readonly<Record<string, number>>, kill: boolean): void {
  const table = Object.entries(names).map(([n, nr]) => `${nr} ${n}\n`).join('');
  const r = load().sigsysInstall(table, kill ? 1 : 0);
  if (r < 0) throw new HostError(`sandbox: cannot install the SIGSYS handler: errno ${-r}`, 'ESANDBOX');
}
