/**
 * Saving a VM and restoring one: KVM's state (irqchip, PIT, clock, every
 * vCPU) and one loop over the VM's device list, each device saving and
 * restoring its own state under the device contract (snapshot/persist.ts);
 * and which config keys a restore compares, from the VM's own list and the
 * device registries.
 */
import type { Kvm, Vm, VcpuFd } from '../kvm/kvm.js';
import type { RamMapping } from '../memory/ram.js';
import type { ConfigTree } from '../config/tree.js';
import { SnapshotError, StateWriter } from '../snapshot/state.js';
import { saveOptionsFrom, writeSnapshot, type SnapshotParts, type SnapshotProgress, type VmState } from '../snapshot/file.js';
import { readableMsrs, readVcpu, readVmState, saveVcpu, saveVmState } from '../snapshot/kvm-state.js';
import { checkConfigMatches, keyPattern, type ConfigKeyRules } from '../snapshot/config-match.js';
import { matchDevices, saveDevices, type DeviceConfigKeys, type PersistentDevice } from '../snapshot/persist.js';
import { saveDisks, type DiskRecord } from '../snapshot/disks.js';
import { SnapshotDir } from '../snapshot/secure-files.js';
import { findPciDevice } from '../pci/device.js';
import { platformDevices } from '../devices/platform.js';
import { checkpointDisks } from './disk-checkpoint.js';

/** The VM's own keys that do not describe the guest's machine (the devices declare theirs). */
const VM_HOST_ONLY_KEYS = [
  'name', 'boot.*', 'control.*', 'debug.*', 'config.*', 'snapshot.*', 'sandbox', 'sandbox.*', 'kvm.device',
  'x86.halt_check_ms', 'x86.posted_writes', 'x86.shadow_regs', 'x86.allow_emulated_kvm',
  'virtio.ioeventfd', 'virtio.irqfd', 'virtio.workers', 'migration.*',
];

/**
 * Which keys a restore ignores and which are host paths: the VM's list, every
 * platform device's keys, and the keys of the PCI device at each
 * `pci.B.S.F.device` of `entries`.
 */
export function configKeyRules(entries: Iterable<[string, string]>): ConfigKeyRules {
  const hostOnly = [...VM_HOST_ONLY_KEYS], hostPaths: string[] = [];
  const add = (node: string, keys: DeviceConfigKeys) => {
    for (const k of keys.hostOnlyKeys ?? []) hostOnly.push(`${node}.${k}`);
    for (const k of keys.hostPathKeys ?? []) hostPaths.push(`${node}.${k}`);
  };
  for (const d of platformDevices()) add(d.node, d);
  for (const [k, v] of entries) {
    const m = /^(pci\.[0-9]+\.[0-9]+\.[0-9]+)\.device$/.exec(k);
    const emu = m && findPciDevice(v);
    if (emu) add(m[1]!, emu);
  }
  return { hostOnly, hostPaths };
}

/**
 * May an incoming migration's VM of `config` be built before its source has
 * let go of the disks (DeviceContext.storageGate)? Only when every PCI host
 * path belongs to a device that uses it after the gate, on its I/O thread.
 */
export function buildsBeforeStorage(config: ConfigTree): boolean {
  if (!config.getBool('virtio.workers', true) || !config.getBool('virtio.ioeventfd', true)) return false;
  const entries = config.entries();
  const paths = configKeyRules(entries).hostPaths.map(keyPattern);
  return entries.every(([k]) => {
    const fn = /^pci\.[0-9]+\.[0-9]+\.[0-9]+(?=\.)/.exec(k)?.[0];
    if (!fn || !paths.some((re) => re.test(k))) return true;
    const node = config.node(fn);
    const emu = findPciDevice(config.get(`${fn}.device`) ?? '');
    return node !== undefined && emu?.waitsForStorageGate?.(node) === true;
  });
}

/** Throws SnapshotError when `config` does not describe the machine the snapshot was taken of. */
export function checkSnapshotConfig(snap: Pick<VmState, 'config'>, config: ConfigTree): void {
  const current = config.entries();
  checkConfigMatches(snap.config, current, configKeyRules([...snap.config, ...current]));
}

/** What a save reads and a restore writes. */
export interface SnapshotTarget {
  readonly kvm: Kvm;
  readonly vm: Vm;
  readonly vcpuFds: readonly VcpuFd[];
  readonly ram: RamMapping;
  readonly config: ConfigTree;
  /** PCI functions and platform devices, in the order they are saved and restored */
  readonly devices: readonly PersistentDevice[];
  /**
   * Each vCPU's state read on its own thread (VcpuThread.captureState), all
   * at once; undefined for one that did not answer (and without threads).
   */
  vcpuStates?(msrs: number[], parked: boolean): Promise<(Record<string, unknown> | undefined)[]>;
}

export class VmSnapshots {
  private msrList: number[] | undefined;

  constructor(private readonly t: SnapshotTarget) {}

  /**
   * Save the VM, its vCPUs parked: let devices finish in-flight work and
   * flush disks, then, with `disks`, take each disk's checkpoint
   * (vm/disk-checkpoint.ts), take the KVM and device state, write RAM and
   * the document.
   */
  async save(file: string, opts: { onProgress?: (p: SnapshotProgress) => void; disks?: 'internal' | 'external' } = {}): Promise<{ ramFile: string; disks: DiskRecord[] }> {
    const t = this.t;
    const save = saveOptionsFrom(t.config);
    // where the document may go is checked before any disk is touched
    if (opts.disks) SnapshotDir.open(file, save.within).close();
    await this.quiesce();
    try {
      const disks = opts.disks ? await checkpointDisks(t.devices, file, opts.disks === 'external') : [];
      const parts = { ...this.capture(), disks: opts.disks ? saveDisks(disks) : undefined };
      const { ramFile } = await writeSnapshot(file, t.ram.bytes, t.ram.dataRanges(), parts, { ...save, onProgress: opts.onProgress });
      return { ramFile, disks };
    } finally {
      this.unquiesce();
    }
  }

  /** vCPUs parked: tell the guest's clock it was stopped, let devices finish in-flight work (disks flushed). */
  async quiesce(): Promise<void> {
    for (const v of this.t.vcpuFds) v.kvmclockCtrl();
    try {
      for (const d of this.t.devices) await d.quiesce?.();
    } catch (e) {
      this.unquiesce();
      throw e;
    }
  }

  unquiesce(): void {
    for (const d of this.t.devices) d.unquiesce?.();
  }

  /** Which MSRs KVM lets us read (hundreds of ioctls, learnt once). */
  private readableMsrs(): number[] {
    const t = this.t;
    return this.msrList ??= readableMsrs(t.vcpuFds[0]!, t.kvm.msrIndexList());
  }

  /**
   * While the guest runs, before a migration pauses it: learn the readable
   * MSRs, and run the capture's and `encode`'s code on what can be read
   * without parking the vCPUs (each vCPU's state on its own thread between
   * two of its exits, the VM-wide KVM state and the devices' here), the
   * result dropped, so that this code is compiled before the pause (cold
   * code costs hundreds of ms where user space is slow).
   */
  async rehearseCapture(encode: (parts: SnapshotParts) => unknown): Promise<void> {
    const msrs = this.readableMsrs();
    const vcpus = (await this.t.vcpuStates?.(msrs, false)) ?? [];
    encode(this.captureHere(vcpus.flatMap((o) => (o ? [StateWriter.of(o)] : []))));
  }

  /** The KVM and device state of the quiesced VM (everything but RAM). */
  capture(): SnapshotParts {
    const msrs = this.readableMsrs();
    return this.captureHere(this.t.vcpuFds.map((v) => { const w = new StateWriter(); saveVcpu(w, v, msrs); return w; }));
  }

  /**
   * capture() for a migration's switchover: each vCPU's state read on its
   * own thread, all at once, while this thread reads the VM's and the
   * devices'; a vCPU whose thread did not answer is read here.
   */
  async captureParked(): Promise<SnapshotParts> {
    const t = this.t, msrs = this.readableMsrs();
    const fromThreads = t.vcpuStates?.(msrs, true);
    const parts = this.captureHere([]);
    const got = (await fromThreads) ?? [];
    parts.vcpus = t.vcpuFds.map((v, i) => {
      const o = got[i];
      if (o) return StateWriter.of(o);
      const w = new StateWriter();
      saveVcpu(w, v, msrs);
      return w;
    });
    return parts;
  }

  /** The config, the VM-wide KVM state and the devices', with `vcpus`. */
  private captureHere(vcpus: StateWriter[]): SnapshotParts {
    const vm = new StateWriter();
    saveVmState(vm, this.t.vm);
    return { config: Object.fromEntries(this.t.config.entries()), vm, vcpus, devices: saveDevices(this.t.devices) };
  }

  /**
   * Put the snapshot's state into this freshly built VM (every field
   * checked; SnapshotError on bad input): KVM first (irqchip, then vCPUs),
   * then the devices, which re-assert their interrupt lines, then each
   * device's afterRestore.
   */
  restore(s: VmState): void {
    const t = this.t;
    const applyVm = readVmState(s.vm, t.vm);
    const applyVcpus = s.vcpus.map((r, i) => readVcpu(r, t.vcpuFds[i]!));
    const devices = matchDevices(s.devices, t.devices);
    applyVm();
    applyVcpus.forEach((apply, i) => {
      try { apply(); } catch (e) { throw new SnapshotError(`vCPU ${i}: ${(e as Error).message}`); }
    });
    for (const { dev, state } of devices) dev.restoreState(state);
    for (const { dev } of devices) dev.afterRestore?.();
  }
}
