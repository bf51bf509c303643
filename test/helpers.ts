/**
 * Test helpers: run the tshyve CLI as a user would and collect what it
 * printed and how it exited; find out whether this host can run guests.
 */
import { spawn } from 'node:child_process';
import { existsSync, accessSync, constants, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = join(ROOT, 'dist', 'bundle', 'cli', 'tshyve.js');
export const GUESTS = join(ROOT, 'dist', 'guests');
export const CTL = join(ROOT, 'dist', 'bundle', 'cli', 'tshyvectl.js');

/**
 * The tshyve processes of this test process serve their control sockets
 * here, not in /run/tshyve: test runs side by side (two worktrees, the same
 * VM names) must not find each other's VMs.
 */
export const CONTROL_DIR = join(tmpdir(), `tshyve-test-ctl-${process.pid}`);
process.on('exit', () => rmSync(CONTROL_DIR, { recursive: true, force: true }));

export interface RunResult { code: number | null; signal: string | null; stdout: string; stderr: string; ms: number }

export function runCli(args: string[], opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv; onStdout?: (s: string, child: import('node:child_process').ChildProcess) => void } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, TSHYVE_CONTROL_DIR: CONTROL_DIR, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; opts.onStdout?.(stdout, child); });
    child.stderr.on('data', (d) => { stderr += d; });
    if (opts.input !== undefined) child.stdin.end(opts.input); else child.stdin.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 }); });
  });
}

/** Why guest programs cannot run here, or undefined when they can. */
export function kvmUnavailable(): string | undefined {
  if (!existsSync('/dev/kvm')) return 'no /dev/kvm on this host';
  try { accessSync('/dev/kvm', constants.R_OK | constants.W_OK); } catch { return 'no permission to use /dev/kvm'; }
  return undefined;
}

export function guestBin(name: string): string | undefined {
  const p = join(GUESTS, `${name}.bin`);
  return existsSync(p) ? p : undefined;
}
