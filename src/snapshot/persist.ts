/**
 * The device contract of a VM (after Firecracker's per-device Persist and
 * bhyve's pe_snapshot): every device, PCI function or platform device, has a
 * stable id and saves and restores its own state, so the VM saves and
 * restores by one loop over one list.
 */
import { SnapshotError, StateWriter, type StateReader } from './state.js';
import type { DiskCheckpoint } from './disks.js';

/**
 * Config keys a device type declares, relative to its config node
 * (`pci.B.S.F`, `lpc.com1`, `rtc`). A part `N` matches any decimal number;
 * a last part `*` matches the rest of the key.
 */
export interface DeviceConfigKeys {
  /** Keys that do not describe the guest's machine (tuning, host behaviour): a restore ignores them. */
  readonly hostOnlyKeys?: readonly string[];
  /** Keys whose value is a host path: a restore checks their presence, not their value. */
  readonly hostPathKeys?: readonly string[];
}

/** One device of a VM as save and restore see it. */
export interface PersistentDevice {
  /** Stable within a VM and across save and restore: `pci.0.3.0`, `com1`, `rtc`, `pm`. */
  readonly id: string;
  /** The emulation's registry name (`virtio-blk`, `uart`): a restore refuses another kind under the same id. */
  readonly kind: string;
  saveState(w: StateWriter): void;
  /** Throws SnapshotError on anything malformed or out of range (the VM is then not started). */
  restoreState(r: StateReader): void;
  /** After every device is restored, before the vCPUs run (e.g. re-kick queues). */
  afterRestore?(): void;
  /** Stop taking new requests; resolves when in-flight ones are complete and the state is readable (save). */
  quiesce?(): Promise<void>;
  unquiesce?(): void;
  /** A device with a disk: checkpoints that include disks call it, the device quiesced. */
  readonly disk?: DiskCheckpoint;
}

/** Longest device list a snapshot may hold (PCI functions and platform devices). */
export const MAX_DEVICES = 2048;

/** The `devices` part of a snapshot: `{ id, kind, state }` per device, in the VM's order. */
export function saveDevices(devices: readonly PersistentDevice[]): StateWriter[] {
  return devices.map((d) => {
    const w = new StateWriter();
    w.str('id', d.id).str('kind', d.kind).obj_('state', (sw) => d.saveState(sw));
    return w;
  });
}

/**
 * Match the snapshot's device entries to this VM's devices, by id: the same
 * count, every id known, none twice, the same kind. Returns each device with
 * its state reader, in the VM's order; nothing is restored yet.
 */
export function matchDevices(entries: readonly StateReader[], devices: readonly PersistentDevice[]): { dev: PersistentDevice; state: StateReader }[] {
  if (entries.length !== devices.length) throw new SnapshotError(`the snapshot has ${entries.length} devices, this VM has ${devices.length}`, 'EMISMATCH');
  const byId = new Map(devices.map((d) => [d.id, d]));
  const found = new Map<string, StateReader>();
  for (const e of entries) {
    const id = e.str('id', 64), kind = e.str('kind', 64);
    const dev = byId.get(id);
    if (!dev || dev.kind !== kind) e.fail('id', `${kind} ${id} is not in this VM`);
    if (found.has(id)) e.fail('id', `${id} is in the snapshot twice`);
    found.set(id, e.obj('state'));
  }
  return devices.map((dev) => ({ dev, state: found.get(dev.id)! }));
}
