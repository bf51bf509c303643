/**
 * The PCI device model interface and the registry that `-s N,NAME,...` and
 * `pci.B.S.F.device=NAME` resolve through (bhyve's struct pci_devemu).
 */
import type { ConfigNode, ConfigTree, ConfigTreeWriter } from '../config/tree.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { Bus, IrqLine } from '../bus/bus.js';
import type { StateReader, StateWriter } from '../snapshot/state.js';
import type { DeviceConfigKeys, PersistentDevice } from '../snapshot/persist.js';
import type { DiskCheckpoint } from '../snapshot/disks.js';
import type { MsiVector } from './msi.js';

/** A bump allocator over [base, end): naturally aligned blocks, in order. */
export function mmioAllocator(base: number, end: number): (size: number) => number {
  let next = base;
  return (size) => {
    const a = Math.ceil(next / size) * size;
    if (a + size > end) throw new Error(`PCI ${end > 0x10000 ? '32-bit MMIO' : 'I/O'} window exhausted`);
    next = a + size;
    return a;
  };
}

/** The IOAPIC input of slot `slot`'s INTA: 16-23, round robin (the DSDT's _PRT says the same). */
export function intxGsi(slot: number): number { return 16 + (slot % 8); }

/** What a device gets from the VM when it is built. */
export interface DeviceContext {
  readonly mem: GuestMemory;
  readonly pio: Bus;
  readonly mmio: Bus;
  /** An IOAPIC/PIC pin. */
  irq(gsi: number): IrqLine;
  /** Deliver an MSI (address/data) into the guest (KVM_SIGNAL_MSI, main thread). */
  msi(address: bigint, data: number): void;
  /**
   * An irqfd-backed MSI vector (its own GSI and eventfd), or undefined when
   * the host lacks irqfd/GSI routing or `virtio.irqfd=false`: then use msi().
   */
  msiVector?(): MsiVector | undefined;
  /** Place a BAR of `size` bytes (a power of two) in the VM's 32-bit PCI window, as firmware would. */
  allocMmio(size: number): number;
  /** Place an I/O BAR of `size` ports (a power of two) in the VM's PCI I/O window. */
  allocPio?(size: number): number;
  /** Log a guest-caused problem (rate limited). */
  guestError(dev: string, msg: string): void;
  /**
   * Have guest writes of `len` bytes to MMIO `addr` call `onWrite` on the
   * device thread without a vCPU exit to user space (a KVM ioeventfd).
   * Undefined when the host cannot; the write then arrives as an MMIO exit.
   */
  ioeventfd?(addr: number, len: number, onWrite: () => void, opts?: { pio?: boolean; datamatch?: number }): { remove(): void } | undefined;
  /**
   * Bind an eventfd the device owns (a worker thread waits on it) as a KVM
   * ioeventfd. Undefined, or undefined returned, when the host cannot.
   */
  bindIoeventfd?(fd: number, addr: number, len: number, opts?: { pio?: boolean; datamatch?: number }): { remove(): void } | undefined;
  /** The VM boots firmware (-l bootrom): identities default to what the firmware knows (an i440FX host bridge). */
  readonly firmware?: boolean;
  /** The VM's name (`-n`/config `name`): what stable per-VM identities (a default MAC) derive from. */
  readonly vmName?: string;
  /** Guest RAM as mapped in this process, for worker threads to view (undefined in tests or when workers are off). */
  readonly guestRam?: { hostAddr: bigint; size: number; regions: { gpa: number; offset: number; size: number }[]; dirty?: SharedArrayBuffer };
  /**
   * Set when the VM is an incoming migration's, built while its source
   * still uses the disks: resolves once the source has flushed them and let
   * go. Only devices whose registry entry says waitsForStorageGate are built
   * so; they read and write their storage only after it (opening it for
   * its size before is allowed).
   */
  readonly storageGate?: Promise<void>;
}

/** A PCI device emulation; its config keys (hostOnlyKeys, hostPathKeys) are relative to `pci.B.S.F`. */
export interface PciDeviceEmulation extends DeviceConfigKeys {
  readonly name: string;
  /**
   * Configured by `node`, and with I/O threads (virtio.workers and
   * virtio.ioeventfd on), does the function use its host paths only after
   * DeviceContext.storageGate? Then a migration's destination may build it early.
   */
  waitsForStorageGate?(node: ConfigNode): boolean;
  /**
   * Parse bhyve's legacy option string (what follows `NAME,` in `-s`) into
   * config keys on the device node. Optional: the default accepts
   * `key=value` pairs only.
   */
  legacyConfig?(node: ConfigTreeWriter, opts: string): void;
  /** Where a device with a disk has it, from its config node (a restore checks and reverts disks before devices open them). */
  diskImage?(node: ConfigNode): { path: string; format?: string } | undefined;
  /** Build the device from its config node. Throws UserError on bad config. */
  create(ctx: DeviceContext, node: ConfigNode, bdf: { bus: number; slot: number; func: number }): PciFunction;
}

/** One PCI function as the config space and BAR logic see it. */
export interface PciFunction {
  /** 256 bytes of config space (first 64 standard, rest capabilities). */
  readonly config: PciConfigSpace;
  /** Called on reset and teardown. */
  reset?(): void;
  destroy?(): void;
  /** Device state for snapshots (the config space is saved beside it: persistentPciFunction). */
  saveState?(w: StateWriter): void;
  restoreState?(r: StateReader): void;
  /** After the whole VM is restored, before the vCPUs run (e.g. re-kick queues). */
  afterRestore?(): void;
  /** Stop taking new requests; resolves when in-flight ones are complete, disks flushed and the device state is readable (save). */
  quiesce?(): Promise<void>;
  unquiesce?(): void;
  /** A count that grows while the device works without vCPU exits (a queue served on its own thread); the halt check reads it. */
  activity?(): number;
  /** Counters for `tshyvectl --get-stats`, each key prefixed with the function's config path (`pci.0.3.0.rx_packets`). */
  stats?(): Record<string, number>;
  /** A function with a disk: what checkpoints that include disks do to it (snapshot/disks.ts). */
  disk?: DiskCheckpoint;
}

export interface PciConfigSpace {
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
  saveState?(w: StateWriter): void;
  restoreState?(r: StateReader): void;
}

/** What parsing `-s` and matching a snapshot's config need of a device: all but its model. */
export type PciDeviceInfo = Omit<PciDeviceEmulation, 'create'>;

/**
 * A device registered by its info alone: `load` imports the module of its
 * model, which registers the whole emulation under the same name. A VM
 * loads only the models it uses, so that start-up reads and compiles less.
 */
export interface LazyPciDevice extends PciDeviceInfo {
  load(): Promise<unknown>;
}

const registry = new Map<string, PciDeviceEmulation | LazyPciDevice>();

export function registerPciDevice(d: PciDeviceEmulation | LazyPciDevice): void {
  const had = registry.get(d.name);
  // A model's module replaces its lazy entry, whichever of the two comes first.
  if (had && ('load' in had) !== ('load' in d)) {
    if ('create' in d) registry.set(d.name, d);
    return;
  }
  if (had) throw new Error(`PCI device ${d.name} registered twice`);
  registry.set(d.name, d);
}

export function findPciDevice(name: string): PciDeviceInfo | undefined {
  return registry.get(name);
}

/** The emulation to build `name` with, its module imported if it was registered lazily. */
export async function loadPciDevice(name: string): Promise<PciDeviceEmulation | undefined> {
  const d = registry.get(name);
  if (!d || 'create' in d) return d;
  await d.load();
  const e = registry.get(name);
  if (!e || !('create' in e)) throw new Error(`PCI device ${name}: its module did not register it`);
  return e;
}

export function pciDeviceNames(): string[] {
  return [...registry.keys()].sort();
}

/**
 * A PCI function under the device contract: `pci.B.S.F`, its config space
 * (saved here, not by each device) and its own state in one object.
 */
export function persistentPciFunction(bdf: { bus: number; slot: number; func: number }, kind: string, fn: PciFunction): PersistentDevice {
  return {
    id: `pci.${bdf.bus}.${bdf.slot}.${bdf.func}`,
    kind,
    saveState: (w) => {
      w.obj_('config', (cw) => fn.config.saveState!(cw));
      fn.saveState?.(w);
    },
    restoreState: (r) => {
      fn.config.restoreState!(r.obj('config'));
      fn.restoreState?.(r);
    },
    afterRestore: fn.afterRestore && (() => fn.afterRestore!()),
    quiesce: fn.quiesce && (() => fn.quiesce!()),
    unquiesce: fn.unquiesce && (() => fn.unquiesce!()),
    disk: fn.disk,
  };
}

export type { ConfigTree, ConfigTreeWriter };
