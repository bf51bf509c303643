/**
 * A one-line progress bar for long saves, redrawn in place on a terminal
 * (at most 10 times a second) and silent on anything else: logs and pipes
 * get only the caller's final line.
 */
export interface ProgressStream { isTTY?: boolean; columns?: number; write(s: string): unknown }

export class ProgressBar {
  private lastDraw = 0;
  private drawn = false;
  private readonly t0 = performance.now();
  readonly enabled: boolean;

  constructor(private readonly out: ProgressStream, private readonly label: string) {
    this.enabled = out.isTTY === true;
  }

  update(done: number, total: number): void {
    if (!this.enabled) return;
    const now = performance.now();
    if (this.drawn && now - this.lastDraw < 100 && done < total) return;
    this.lastDraw = now;
    this.drawn = true;
    this.out.write('\r' + renderBar(this.label, done, total, now - this.t0, this.out.columns || 80) + '\x1b[K');
  }

  /** Erase the bar, so the final line starts on a clean line. */
  clear(): void {
    if (this.drawn) this.out.write('\r\x1b[K');
    this.drawn = false;
  }
}

/** `label [#####-----]  50% 8.0/16.0 MiB 1.2 s`, fitted to `columns`. */
export function renderBar(label: string, done: number, total: number, ms: number, columns: number): string {
  const frac = total > 0 ? Math.min(1, Math.max(0, done / total)) : 0;
  const pct = `${Math.floor(frac * 100)}%`.padStart(4);
  const tail = ` ${pct} ${formatMiB(done, false)}/${formatMiB(total)} ${(ms / 1000).toFixed(1)} s`;
  const width = Math.max(10, Math.min(40, columns - 1 - label.length - tail.length - 3));
  const fill = Math.round(frac * width);
  return `${label} [${'#'.repeat(fill)}${'-'.repeat(width - fill)}]${tail}`;
}

export function formatMiB(bytes: number, unit = true): string {
  return `${(bytes / 2 ** 20).toFixed(1)}${unit ? ' MiB' : ''}`;
}
