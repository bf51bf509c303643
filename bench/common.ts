/**
 * Shared by the benchmark driver that runs inside the lab (lab-boot.ts)
 * and the host-side runner (run.ts): paths, the result format, statistics.
 */
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

/** The checkout: this file is dist/bench/common.js once compiled. */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = join(ROOT, 'dist', 'bundle', 'cli', 'tshyve.js');
export const GUEST_DIR = join(ROOT, 'lab', 'out', 'guest');
export const GUEST_CMDLINE = 'console=ttyS0 quiet tshyve.run=poweroff';
export const DEFAULT_RUNS = 3;

export type Vmm = 'tshyve' | 'qemu';

/** One boot of the reference guest inside the lab. */
export interface LabRun {
  vmm: Vmm;
  cpus: number;
  /** 0-based index within its configuration; -1 for a warm-up run (not counted). */
  run: number;
  ok: boolean;
  /** Why the run does not count (timeout, wrong exit status, no marker...). */
  error?: string;
  /** spawn to process exit. */
  wallMs: number;
  /** spawn to the moment TSHYVE-GUEST-OK appeared on the console. */
  markerMs?: number;
  /** The guest's /proc/uptime when its init ran the workload (UPTIME=). */
  uptimeS?: number;
  /** tshyve only: its own 'vCPUs running X ms after process start' (debug.timing=1). */
  vcpuRunMs?: number;
  code: number | null;
  signal: string | null;
  /** The end of the console output, for failed runs. */
  tail?: string;
}

export interface LabResults {
  startedAt: string;
  finishedAt?: string;
  /** Set when the driver stopped early (time budget) or crashed. */
  note?: string;
  runsPerConfig: number;
  cpuConfigs: number[];
  perRunTimeoutS: number;
  l1: { nproc: number; loadavgStart: number[]; loadavgEnd?: number[]; uptimeAtDriverStartS: number; kernel: string };
  runs: LabRun[];
}

/** Terminal escape sequences (SeaBIOS/QEMU -nographic print ESC c, ESC [?7l ...) and \r. */
export function stripTerminal(s: string): string {
  return s
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]/g, '') // CSI
    .replace(/\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)/g, '') // OSC
    .replace(/\x1b[()*+][0-9A-Za-z]/g, '') // charset selection
    .replace(/\x1b[@-Z\\-_`-~]/g, '') // other two-byte escapes (ESC c, ESC 7...)
    .replace(/\r/g, '');
}

export function median(xs: number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export interface Stats { n: number; median: number; min: number; max: number }
export function stats(xs: number[]): Stats | undefined {
  const m = median(xs);
  return m === undefined ? undefined : { n: xs.length, median: m, min: Math.min(...xs), max: Math.max(...xs) };
}

/**
 * tshyve/QEMU ratios of the passes that ran back to back: the same round
 * and pair index (pair >= 0; -1 marks a round's first, cold pass). The
 * lab's speed drifts by up to 2x over minutes (other work on the machine's
 * two cores); a pair, a second apart, shares its conditions.
 */
export function pairedRatios<T extends { vmm: Vmm; round: number; pair: number }>(passes: readonly T[], value: (p: T) => number | undefined): number[] {
  const out: number[] = [];
  for (const a of passes) {
    if (a.vmm !== 'tshyve' || a.pair < 0) continue;
    const b = passes.find((x) => x.vmm === 'qemu' && x.round === a.round && x.pair === a.pair);
    const va = value(a), vb = b ? value(b) : undefined;
    if (va !== undefined && vb !== undefined && va > 0 && vb > 0) out.push(va / vb);
  }
  return out;
}

/** Two-sided 95 % Student t quantiles for 1..30 degrees of freedom (normal's 1.96 beyond). */
const T95 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13,
  2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04];

export interface GeoMean { n: number; gmean: number; lo: number; hi: number }

/**
 * Geometric mean of ratios with a 95 % interval (t on the logs). Pairs of
 * one round share that round's boots, so the interval is a little narrower
 * than the truth; the per-round means show how far rounds differ.
 */
export function geoMean(ratios: readonly number[]): GeoMean | undefined {
  const logs = ratios.filter((r) => r > 0 && Number.isFinite(r)).map(Math.log);
  const n = logs.length;
  if (n === 0) return undefined;
  const mean = logs.reduce((a, b) => a + b, 0) / n;
  if (n === 1) return { n, gmean: Math.exp(mean), lo: Number.NaN, hi: Number.NaN };
  const sd = Math.sqrt(logs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1));
  const half = (T95[n - 2] ?? 1.96) * sd / Math.sqrt(n);
  return { n, gmean: Math.exp(mean), lo: Math.exp(mean - half), hi: Math.exp(mean + half) };
}

export interface Timed {
  code: number | null;
  signal: string | null;
  /** stdout and stderr, interleaved as they arrived. */
  output: string;
  stderr: string;
  wallMs: number;
  /** ms from spawn to the first match of `marker` in the output. */
  markerMs?: number;
  timedOut: boolean;
}

/** Spawn a command with stdin on /dev/null, time it from spawn to exit, kill it after timeoutMs. */
export function timedRun(cmd: string, args: string[], timeoutMs: number, marker?: RegExp): Promise<Timed> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let output = '', stderr = '', markerMs: number | undefined, timedOut = false, wallMs = 0;
    let exitCode: number | null = null, exitSignal: string | null = null;
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const seen = () => {
      if (markerMs === undefined && marker && marker.test(output)) markerMs = performance.now() - t0;
    };
    child.stdout.on('data', (d: Buffer) => { output += d.toString('latin1'); seen(); });
    child.stderr.on('data', (d: Buffer) => { const s = d.toString('latin1'); output += s; stderr += s; seen(); });
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, timeoutMs);
    child.on('error', (e) => { output += `\n[spawn error: ${e.message}]`; });
    // 'exit' is the moment the process ended; 'close' waits for its pipes to drain too.
    child.on('exit', (code, signal) => { wallMs = performance.now() - t0; exitCode = code; exitSignal = signal; });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (!wallMs) { wallMs = performance.now() - t0; exitCode = code; exitSignal = signal; }
      resolve({ code: exitCode, signal: exitSignal, output, stderr, wallMs, markerMs, timedOut });
    });
  });
}

export const VCPU_RUNNING = /tshyve: vCPUs running ([\d.]+) ms after process start/;

/** tshyve exits 1 on guest power-off (bhyve's convention); QEMU with -no-reboot exits 0. */
export const POWEROFF_EXIT: Record<Vmm, number> = { tshyve: 1, qemu: 0 };

/** Why a boot of a guest that prints TSHYVE-GUEST-OK in `out` and powers off does not count, or undefined. */
export function bootFailure(t: Timed, out: string, vmm: Vmm, timeoutMs: number): string | undefined {
  if (t.timedOut) return `timeout after ${Math.round(timeoutMs / 1000)} s, killed`;
  if (!/TSHYVE-GUEST-OK/.test(out)) return 'TSHYVE-GUEST-OK never printed';
  if (t.code !== POWEROFF_EXIT[vmm]) return `exit ${t.code ?? t.signal}, expected ${POWEROFF_EXIT[vmm]}`;
  return undefined;
}

/**
 * The extra tshyve arguments of a firmware boot (TSHYVE_FIRMWARE_ARGS,
 * whitespace-separated), or undefined when tshyve's firmware boot is not
 * enabled for the bench: it does not run in the nested lab until tshyve can
 * keep OVMF's CR8 writes off L0's broken path (lab/firmware-notes.md). The
 * coordinator sets it to the user-space interrupt controller's option.
 */
export function tshyveFirmwareArgs(env: NodeJS.ProcessEnv = process.env): string[] | undefined {
  const v = env.TSHYVE_FIRMWARE_ARGS;
  return v === undefined ? undefined : v.split(/\s+/).filter((a) => a !== '');
}
