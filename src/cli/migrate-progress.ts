/**
 * tshyvectl's migration display: a cli-progress bar on a terminal (the
 * phase, the round, bytes sent of RAM, the dirty rate and the downtime the
 * guest would see if paused now), nothing on a pipe; and the one final line.
 */
import cliProgress from 'cli-progress';
import type { MigrationProgress, MigrationResult } from '../vm/control.js';
import { formatMiB } from './progress.js';

export class MigrationBar {
  private bar: cliProgress.SingleBar | undefined;

  constructor(private readonly out: NodeJS.WriteStream) {}

  update(p: MigrationProgress): void {
    if (!this.out.isTTY) return;
    const payload = {
      phase: p.phase, round: p.round, sent: formatMiB(p.done), ram: formatMiB(p.total),
      rate: `${formatMiB(p.dirtyRate, false)} MiB/s`, downtime: `${Math.round(p.expectedDowntimeMs)} ms`,
    };
    if (!this.bar) {
      this.bar = new cliProgress.SingleBar({
        stream: this.out, hideCursor: true, clearOnComplete: true, fps: 10,
        format: 'migrate {phase} round {round} [{bar}] {sent} sent of {ram} RAM | dirty {rate} | downtime now {downtime}',
      }, cliProgress.Presets.shades_classic);
      this.bar.start(p.total, Math.min(p.done, p.total), payload);
    } else {
      // Rounds after the first send less than all of RAM again: the bar shows the bytes sent, capped at RAM's size.
      this.bar.update(Math.min(p.done, p.total), payload);
    }
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}

/** `migrated VM NAME to TARGET (live, 3 rounds): 120.5 MiB in 2.41 s, downtime 38 ms` */
export function migrationLine(name: string, r: MigrationResult): string {
  const how = r.live ? `live, ${r.rounds} round${r.rounds === 1 ? '' : 's'}` : 'warm';
  const note = r.note ? `; ${r.note}` : '';
  return `migrated VM ${name} to ${r.target} (${how}): ${formatMiB(r.bytes)} in ${(r.totalMs / 1000).toFixed(2)} s, `
    + `downtime ${Math.round(r.downtimeMs)} ms, ${r.pages} pages (${r.zeroPages} zero)${note}`;
}
