/**
 * What a running VM offers its controllers (the control socket, tshyvectl,
 * library users): bhyvectl's operations. Machine implements it.
 */
import type { SnapshotProgress } from '../snapshot/file.js';
import type { DiskRecord } from '../snapshot/disks.js';

export type { SnapshotProgress };

export interface SnapshotResult {
  /** the JSON state document */
  file: string;
  /** guest RAM, next to it */
  ramFile: string;
  ramBytes: number;
  /** ms the vCPUs were paused */
  pausedMs: number;
  /** ms the whole save took */
  totalMs: number;
  /** a checkpoint: what it did to each disk (snapshot/disks.ts) */
  disks?: DiskRecord[];
  /** one line about disks the checkpoint could not include (raw disks of an internal one) */
  warning?: string;
}

export interface SnapshotOptions {
  onProgress?(p: SnapshotProgress): void;
  /**
   * A checkpoint (not a suspend): each disk goes on in a new qcow2 overlay
   * next to the file (bhyve's --ext-checkpoint) instead of getting an
   * internal qcow2 snapshot.
   */
  external?: boolean;
}

/** How far a migration has got (JSON on the control socket; tshyvectl draws it). */
export interface MigrationProgress extends SnapshotProgress {
  /** `done`: bytes sent so far; `total`: guest RAM bytes */
  phase: 'handshake' | 'copy' | 'switchover' | 'commit';
  /** pre-copy round (1 is the first full copy) */
  round: number;
  /** bytes a second the guest dirtied during the last round */
  dirtyRate: number;
  /** how long the guest would be paused if it were paused now */
  expectedDowntimeMs: number;
}

export interface MigrationOptions {
  /** pre-copy while the guest runs (live) rather than pausing first (warm) */
  live?: boolean;
  onProgress?(p: MigrationProgress): void;
}

export interface MigrationResult {
  target: string;
  live: boolean;
  /** pre-copy rounds (0 for a warm migration) */
  rounds: number;
  /** bytes sent on the stream */
  bytes: number;
  /** pages sent, and of those, all-zero ones (sent without data) */
  pages: number;
  zeroPages: number;
  /** ms from the start to the destination running */
  totalMs: number;
  /** ms the guest was paused: from the source pausing it to the destination's word that it runs */
  downtimeMs: number;
  /** live: the remainder fitted migration.downtime_ms; false when a round or time limit ended pre-copy */
  converged: boolean;
  /** why pre-copy stopped, when it did not converge */
  note?: string;
  /** ms of each step of the switchover on the source (pause, quiesce, dirty_log, pages, capture, ... wait_running) */
  steps?: Record<string, number>;
}

export interface VmControl {
  readonly name: string;
  /** true while paused by a controller */
  readonly paused: boolean;
  /** the sandbox in force (src/host/sandbox): `layers` in words; absent means off */
  readonly sandbox?: { readonly on: boolean; readonly layers: string };
  pause(): Promise<void>;
  resume(): void;
  /** Counters for --get-stats: exits by kind, vCPUs, RAM, uptime. */
  stats(): Record<string, number | string>;
  /**
   * Save the VM to `file` (+ `file`.ram) and keep running; qcow2 disks get
   * the snapshot diskSnapshotName(file), or, with opts.external, every disk
   * goes on in a new overlay (snapshot/disks.ts).
   */
  checkpoint(file: string, opts?: SnapshotOptions): Promise<SnapshotResult>;
  /** Save the VM to `file`, then end it (tshyve exits 0 after a suspend). */
  suspend(file: string, opts?: SnapshotOptions): Promise<SnapshotResult>;
  /** Send the VM to a destination tshyve (`-R`); on success the VM here ends (exit 0). */
  migrate(target: string, opts?: MigrationOptions): Promise<MigrationResult>;
  /** End the VM as a reset would (exit 0). */
  forceReset(): void;
  /** End the VM as a power-off would (exit 1). */
  forcePoweroff(): void;
  /** Tear the VM down (exit 4, "destroyed"). */
  destroy(): void;
}
