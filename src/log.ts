/**
 * Diagnostics to stderr, one line each, prefixed with the program name.
 * Guest-caused messages are rate limited: a hostile guest must not be able
 * to flood the host's log.
 */
export type Level = 'error' | 'warn' | 'info' | 'debug';
const ORDER: Record<Level, number> = { error: 0, warn: 1, info: 2, debug: 3 };

let threshold: Level = (process.env.TSHYVE_LOG as Level | undefined) ?? 'info';
let sink: (line: string) => void = (l) => process.stderr.write(l + '\n');

export function setLogLevel(l: Level): void { threshold = l; }
export function setLogSink(f: (line: string) => void): void { sink = f; }

export function log(level: Level, msg: string): void {
  if (ORDER[level] <= ORDER[threshold]) sink(`tshyve: ${level === 'info' ? '' : level + ': '}${msg}`);
}

/** Allows `perSecond` messages per second and counts the rest. */
export class RateLimitedLog {
  private windowStart = 0;
  private count = 0;
  suppressed = 0;
  constructor(private readonly perSecond = 10) {}
  log(level: Level, msg: string): void {
    const now = Date.now();
    if (now - this.windowStart > 1000) {
      if (this.suppressed) log(level, `(${this.suppressed} similar messages suppressed)`);
      this.windowStart = now; this.count = 0; this.suppressed = 0;
    }
    if (++this.count <= this.perSecond) log(level, msg); else this.suppressed++;
  }
}
