/**
 * A process of the lab driver's, bounded in time. A run past its timeout is
 * killed; one that does not end within KILL_GRACE_MS of SIGKILL is stuck in
 * L1's kernel (a vCPU thread that never leaves KVM_RUN, say), and waiting
 * for it would stall the whole lab run. So it is given up on: the result is
 * a hang, with what L1's kernel says of the process, and the driver goes on.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export const KILL_GRACE_MS = 30_000;

export interface Ended { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; ms: number }

export interface Bounded { child: ChildProcess; out: { stdout: string; stderr: string }; done: Promise<Ended> }

/**
 * Spawn `argv`, collect its output, send it `signal` after `timeoutMs`, and
 * give up on it `graceMs` later (both options are there for its unit test).
 */
export function bounded(argv: string[], timeoutMs: number, { graceMs = KILL_GRACE_MS, signal = 'SIGKILL' as NodeJS.Signals } = {}): Bounded {
  const t0 = Date.now();
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  child.stdout!.on('data', (d) => { out.stdout += d; });
  child.stderr!.on('data', (d) => { out.stderr += d; });
  const done = new Promise<Ended>((resolve) => {
    let settled = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(kill); clearTimeout(giveUp);
      child.stdout!.destroy(); child.stderr!.destroy();   // (a descendant may still hold the other ends)
      child.unref();
      resolve({ code, signal, stdout: out.stdout, stderr: out.stderr, ms: Date.now() - t0 });
    };
    let giveUp: NodeJS.Timeout | undefined;
    const kill = setTimeout(() => {
      out.stderr += '\n[driver: timeout, killed]';
      child.kill(signal);
      giveUp = setTimeout(() => {
        const report = stuckReport(child.pid);
        out.stderr += `\n[driver: still there ${graceMs / 1000} s after ${signal}; given up on]\n${report}`;
        process.stdout.write(`[lab] pid ${child.pid} did not end after ${signal}:\n${report}\n`);
        finish(null, null);
      }, graceMs);
    }, timeoutMs);
    child.on('close', (code, signal) => finish(code, signal));
    // 'close' also waits for the pipes; a process that has exited but left them
    // open (a descendant holding them) has still ended.
    child.on('exit', (code, signal) => { setTimeout(() => finish(code, signal), 5000).unref(); });
  });
  return { child, out, done };
}

/** What L1's kernel says of a process: each thread's state, wait channel and kernel stack, and the kernel log's tail. */
export function stuckReport(pid: number | undefined): string {
  if (pid === undefined) return '(no pid)';
  const lines: string[] = [];
  const read = (p: string) => { try { return readFileSync(p, 'utf8').trim(); } catch (e) { return `(${(e as Error).message})`; } };
  let tids: string[] = [];
  try { tids = readdirSync(`/proc/${pid}/task`); } catch { lines.push(`/proc/${pid}: gone`); }
  for (const t of tids) {
    const stat = read(`/proc/${pid}/task/${t}/stat`);
    const state = /\) (\S)/.exec(stat)?.[1] ?? '?';
    lines.push(`tid ${t} ${read(`/proc/${pid}/task/${t}/comm`)} state ${state} wchan ${read(`/proc/${pid}/task/${t}/wchan`)}`);
    const stack = read(`/proc/${pid}/task/${t}/stack`);
    if (stack) lines.push(...stack.split('\n').slice(0, 12).map((l) => `  ${l}`));
  }
  try {
    const log = execFileSync('dmesg', [], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] });
    lines.push('dmesg tail:', ...log.trim().split('\n').slice(-30));
  } catch (e) { lines.push(`dmesg: ${(e as Error).message}`); }
  return lines.join('\n');
}
