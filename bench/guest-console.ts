/** The lab drivers' handle on a VM they talk to over its serial console (the VMM's stdio). */
import { spawn, type ChildProcess } from 'node:child_process';
import { stripTerminal } from './common.js';

/** A guest whose console we talk to: send a line, wait for a line that matches. */
export class Guest<V extends string = string> {
  private readonly child: ChildProcess;
  private buf = '';
  private output = '';
  private lines: string[] = [];
  private waiter: { re: RegExp; resolve: (m: RegExpExecArray) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;
  private exited: string | undefined;
  /** told every line as it comes, besides waitFor */
  onLine: ((line: string) => void) | undefined;

  constructor(readonly vmm: V, cmd: string, argv: string[]) {
    this.child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    const onData = (d: Buffer): void => {
      const s = d.toString('latin1');
      this.output = (this.output + s).slice(-4000);
      this.buf += s;
      for (let i = this.buf.indexOf('\n'); i >= 0; i = this.buf.indexOf('\n')) {
        const line = stripTerminal(this.buf.slice(0, i));
        this.onLine?.(line);
        this.lines.push(line);
        this.buf = this.buf.slice(i + 1);
      }
      this.check();
    };
    this.child.stdout!.on('data', onData);
    this.child.stderr!.on('data', onData);
    this.child.stdin!.on('error', () => { /* the guest is gone: its exit says so */ });
    this.child.on('error', (e) => this.fail(`could not start: ${e.message}`));
    this.child.on('exit', (code, sig) => this.fail(`exited (${sig ?? code})`));
  }

  private fail(why: string): void {
    this.exited ??= why;
    const w = this.waiter;
    if (w) { this.waiter = undefined; clearTimeout(w.timer); w.reject(new Error(`${this.vmm} ${why}`)); }
  }

  private check(): void {
    const w = this.waiter;
    if (!w) return;
    while (this.lines.length > 0) {
      const m = w.re.exec(this.lines.shift()!);
      if (m) { this.waiter = undefined; clearTimeout(w.timer); w.resolve(m); return; }
    }
  }

  /** The next console line matching `re` (earlier lines are dropped). */
  waitFor(re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      if (this.exited) { reject(new Error(`${this.vmm} ${this.exited}`)); return; }
      const timer = setTimeout(() => { this.waiter = undefined; reject(new Error(`${this.vmm}: no ${re.source} within ${timeoutMs / 1000} s`)); }, timeoutMs);
      this.waiter = { re, resolve, reject, timer };
      this.check();
    });
  }

  get pid(): number | undefined { return this.child.pid; }

  send(line: string): void { if (!this.exited) this.child.stdin!.write(`${line}\n`); }

  get tail(): string { return this.output.slice(-1200); }

  /** End the VMM now (SIGKILL); resolves once it has exited. */
  async kill(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGKILL');
    await gone;
  }

  /** Ask the guest to power off; kill it if it has not within a few seconds. */
  async close(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.send('q');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await gone;
    clearTimeout(t);
  }
}
