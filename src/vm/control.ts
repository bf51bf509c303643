/**
 * What a running VM offers its controllers (the control socket, tshyvectl,
 * library users): bhyvectl's operations. Machine implements it.
 */
import type { SnapshotProgress } from '../snapshot/file.js';

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
}

export interface SnapshotOptions {
  onProgress?(p: SnapshotProgress): void;
}

export interface VmControl {
  readonly name: string;
  /** true while paused by a controller */
  readonly paused: boolean;
  pause(): Promise<void>;
  resume(): void;
  /** Counters for --get-stats: exits by kind, vCPUs, RAM, uptime. */
  stats(): Record<string, number | string>;
  /** Save the VM to `file` (+ `file`.ram) and keep running. */
  checkpoint(file: string, opts?: SnapshotOptions): Promise<SnapshotResult>;
  /** Save the VM to `file`, then end it (tshyve exits 0 after a suspend). */
  suspend(file: string, opts?: SnapshotOptions): Promise<SnapshotResult>;
  /** End the VM as a reset would (exit 0). */
  forceReset(): void;
  /** End the VM as a power-off would (exit 1). */
  forcePoweroff(): void;
  /** Tear the VM down (exit 4, "destroyed"). */
  destroy(): void;
}
