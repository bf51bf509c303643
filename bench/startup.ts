/**
 * Where tshyve's start-up goes on this host: process start to first KVM_RUN
 * of the raw test guest, split into the steps `debug.timing=1` reports
 * (Node's bootstrap, module loading, KVM set-up, devices, boot payload, each
 * vCPU thread's spawn and module loading, the parked handshake), medians of
 * N runs; also `node -e 0` and how many files each build loads.
 *
 *   node dist/bench/startup.js [--runs N] [CLI.js ...]
 *
 * Several CLIs (another worktree's dist/src/cli/tshyve.js, a bundle) run
 * alternately, so that the host's load falls on all of them alike.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { ROOT, CLI, VCPU_RUNNING, median, timedRun } from './common.js';

const TIMELINE = /ms after process start \((.*)\)/;

/** The steps of one run's timeline, in ms each ("node 40.1, modules +80.2, ..."). */
function parseTimeline(line: string): Map<string, number> | undefined {
  const m = TIMELINE.exec(line);
  if (!m) return undefined;
  const steps = new Map<string, number>();
  for (const part of m[1]!.split(', ')) {
    const s = /^(\S+) \+?(-?[\d.]+)$/.exec(part);
    if (s) steps.set(s[1]!, Number(s[2]));
  }
  return steps;
}

/** Files a run loads: ES modules (Node's esm debug log) and CommonJS ones (koffi). */
function filesLoaded(cli: string, args: string[]): { esm: number; cjs: number; builtin: number } {
  const r = spawnSync(process.execPath, [cli, ...args], { env: { ...process.env, NODE_DEBUG: 'esm,module' }, encoding: 'utf8' });
  const esm = new Set<string>(), cjs = new Set<string>();
  for (const m of r.stderr.matchAll(/Storing (\S+)/g)) esm.add(m[1]!);
  for (const m of r.stderr.matchAll(/load "([^"]+)"/g)) cjs.add(m[1]!);
  const builtin = [...esm].filter((f) => f.startsWith('node:')).length;
  return { esm: esm.size - builtin, cjs: cjs.size, builtin };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let runs = 10;
  const clis: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--runs') runs = Number(argv[++i]);
    else clis.push(argv[i]!);
  }
  if (!(Number.isInteger(runs) && runs > 0)) { process.stderr.write('startup: --runs takes a positive integer\n'); process.exit(2); }
  if (clis.length === 0) clis.push(CLI);
  const raw = join(ROOT, 'dist', 'guests', 'long.bin');
  const args = ['-m', '16M', '-l', 'com1,stdio', '-o', `boot.raw=${raw}`, '-o', 'debug.timing=1', 'bench'];
  const nodeOnly: number[] = [];
  const per = clis.map(() => ({ first: [] as number[], wall: [] as number[], steps: new Map<string, number[]>(), fails: 0 }));
  for (let i = 0; i < runs; i++) {
    nodeOnly.push((await timedRun(process.execPath, ['-e', '0'], 30_000)).wallMs);
    for (const [k, cli] of clis.entries()) {
      const t = await timedRun(process.execPath, [cli, ...args], 30_000);
      const m = VCPU_RUNNING.exec(t.output);
      const p = per[k]!;
      if (t.code !== 1 || !m) { p.fails++; continue; }
      p.first.push(Number(m[1]));
      p.wall.push(t.wallMs);
      for (const [name, ms] of parseTimeline(t.output) ?? []) p.steps.set(name, [...(p.steps.get(name) ?? []), ms]);
    }
  }
  const f = (xs: number[]) => median(xs)?.toFixed(1) ?? '-';
  process.stdout.write(`${runs} runs each, load average ${loadavg()[0]!.toFixed(2)}; node -e 0: ${f(nodeOnly)} ms wall\n`);
  for (const [k, cli] of clis.entries()) {
    const p = per[k]!;
    const files = filesLoaded(cli, args);
    process.stdout.write(`\n${cli}\n  files loaded: ${files.esm} ES modules, ${files.cjs} CommonJS, ${files.builtin} built-in (main thread and vCPU thread)\n`);
    process.stdout.write(`  process start to first KVM_RUN ${f(p.first)} ms, wall ${f(p.wall)} ms${p.fails ? `, ${p.fails} failed runs` : ''}\n`);
    for (const [name, ms] of p.steps) process.stdout.write(`  ${name.padEnd(16)} ${f(ms).padStart(7)} ms\n`);
  }
}

await main();
