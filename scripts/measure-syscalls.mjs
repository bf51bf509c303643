#!/usr/bin/env node
/**
 * Measure the system calls node processes make while a command runs (for
 * the sandbox's seccomp allow-list, src/host/sandbox/allowed.ts):
 *   node scripts/measure-syscalls.mjs OUT.json -- CMD ARGS...
 * runs CMD under `strace -f` (its output streamed here, never stored),
 * follows every process and thread it starts, and writes the names of the
 * calls made by processes whose program is node, with their counts. Calls a
 * child makes between fork and execve (another program) are not counted.
 * Several runs merge: an existing OUT.json is added to.
 * Run in the repo: the host-KVM tests, then a lab boot (see docs/security.md):
 *   node scripts/measure-syscalls.mjs /tmp/sc.json -- node --test --test-concurrency=1 dist/test/control.test.js ...
 * Then write the allow-list from it (most frequent first; the calls the
 * sandbox always refuses, src/host/sandbox/refused.ts, left out):
 *   node scripts/measure-syscalls.mjs --emit /tmp/sc.json > src/host/sandbox/allowed.ts
 */
import { spawn } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';

if (process.argv[2] === '--emit') await emit(process.argv[3]);
const [out, sep, ...cmd] = process.argv.slice(2);
if (!out || sep !== '--' || cmd.length === 0) {
  process.stderr.write('usage: measure-syscalls.mjs OUT.json -- CMD ARGS...\n');
  process.exit(2);
}
const counts = new Map(Object.entries(existsSync(out) ? JSON.parse(readFileSync(out, 'utf8')) : {}));
/** tid -> its process (tgid) */
const tgidOf = new Map();
/** tgid -> program ('' between fork and execve) */
const exeOf = new Map();
/** tid -> the flags of a clone not yet returned */
const pendingClone = new Map();

// strace writes to a FIFO (it cannot open node's pipes, which are sockets, by name).
const dir = mkdtempSync(join(tmpdir(), 'measure-syscalls-'));
const fifo = join(dir, 'trace');
spawn('mkfifo', [fifo], { stdio: 'inherit' }).on('close', () => {
  const strace = spawn('strace', ['-f', '-qq', '-s', '256', '-o', fifo, ...cmd], { stdio: 'inherit' });
  const lines = createInterface({ input: createReadStream(fifo) });
  lines.on('line', onLine);
  lines.on('close', () => strace.exitCode === null ? strace.on('close', finish) : finish(strace.exitCode));
});
function onLine(line) {
  const m = /^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$/.exec(line);
  if (!m) return;
  const tid = Number(m[1]);
  const name = m[2] ?? m[3];
  const rest = m[4];
  if (!tgidOf.has(tid)) { tgidOf.set(tid, tid); if (!exeOf.has(tid)) exeOf.set(tid, 'node'); }
  const tgid = tgidOf.get(tid);
  if (m[3] && (name === 'clone' || name === 'clone3')) pendingClone.set(tid, rest);
  const done = /\) = (-?\d+)/.exec(rest) ?? /= (-?\d+)(?: |$)/.exec(rest);
  if ((name === 'clone' || name === 'clone3' || name === 'fork' || name === 'vfork') && done && Number(done[1]) > 0) {
    const flags = pendingClone.get(tid) ?? rest;
    pendingClone.delete(tid);
    const child = Number(done[1]);
    if (/CLONE_THREAD/.test(flags)) tgidOf.set(child, tgid);
    else { tgidOf.set(child, child); exeOf.set(child, ''); }
  }
  if (name === 'execve' && m[3]) {
    const exe = /^"([^"]*)"/.exec(rest)?.[1] ?? '';
    if (/ = 0$/.test(rest)) exeOf.set(tgid, basename(exe));
    else pendingClone.set(tid, `exec:${exe}`);
  } else if (name === 'execve' && / = 0$/.test(rest)) {
    const p = pendingClone.get(tid);
    if (p?.startsWith('exec:')) exeOf.set(tgid, basename(p.slice(5)));
  }
  if (exeOf.get(tgid) === 'node' && name !== 'execve') counts.set(name, (counts.get(name) ?? 0) + 1);
}
function finish(code) {
  rmSync(dir, { recursive: true, force: true });
  writeFileSync(out, JSON.stringify(Object.fromEntries([...counts].sort()), null, 1) + '\n');
  process.stderr.write(`measure-syscalls: ${counts.size} system calls made by node processes; command exited ${code}\n`);
  process.exit(code ?? 1);
}

async function emit(file) {
  const { REFUSED } = await import(new URL('../dist/src/host/sandbox/refused.js', import.meta.url).href);
  const counts = Object.entries(JSON.parse(readFileSync(file, 'utf8'))).filter(([n]) => !REFUSED.includes(n)).sort((a, b) => b[1] - a[1]);
  const names = counts.map(([n]) => `'${n}'`);
  const lines = [];
  for (let line = ' '; names.length;) {
    const n = names.shift();
    if (line.length + n.length + 2 > 120) { lines.push(line.trimEnd()); line = ' '; }
    line += ` ${n},`;
    if (!names.length) lines.push(line);
  }
  process.stdout.write(`/**
 * The system calls tshyve and node make, as measured by
 * scripts/measure-syscalls.mjs (strace over the host-KVM tests and a lab
 * boot), most frequent first (the filter tests them in this order).
 * Generated: edit by measuring again, or add a call by hand with the reason.
 */
export const ALLOWED: readonly string[] = [
${lines.join('\n')}
];
`);
  process.exit(0);
}
