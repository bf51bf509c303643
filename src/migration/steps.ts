/**
 * Where a migration's downtime goes: the switchover timed step by step on
 * each side (pausing, the last dirty log, the last pages, the state, the
 * destination's build and restore, starting the vCPUs), for the final
 * line, `--get-stats` and `debug.timing=1`.
 */

export class StepTimer {
  private last: number;
  private readonly ms = new Map<string, number>();

  constructor(private readonly now: () => number = () => performance.now()) {
    this.last = now();
  }

  /** Time since the last mark (or the start) goes to `step` (added up if it comes again). */
  mark(step: string): void {
    const t = this.now();
    this.ms.set(step, (this.ms.get(step) ?? 0) + (t - this.last));
    this.last = t;
  }

  /** ms per step, in the order they first came, to 0.1 ms. */
  get steps(): Record<string, number> {
    return Object.fromEntries([...this.ms].map(([k, v]) => [k, Math.round(v * 10) / 10]));
  }
}

/** `pause 1.2, quiesce 30.0, ...`: the steps as one line. */
export function formatSteps(steps: Record<string, number>): string {
  return Object.entries(steps).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ');
}
