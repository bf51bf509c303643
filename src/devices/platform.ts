/**
 * Platform (LPC/ISA) devices: the registry that `-l NAME,...` and the VM
 * builder resolve through, as PCI devices resolve through pci/device.ts. A
 * device registers itself by name in its own file (and one import line in
 * all.ts); the VM builds every registered device its config asks for, in
 * registration order, and saves and restores it under the device contract.
 */
import type { Bus, IrqLine } from '../bus/bus.js';
import { ConfigNode, type ConfigTree, type ConfigTreeWriter } from '../config/tree.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { PciConfigSpace, PciFunction } from '../pci/device.js';
import type { DeviceConfigKeys, PersistentDevice } from '../snapshot/persist.js';
import type { SerialBackend } from './backends/types.js';

/** What a platform device gets from the VM when it is built. */
export interface PlatformContext {
  readonly pio: Bus;
  readonly mmio: Bus;
  /** Guest RAM, bounds-checked (fw_cfg DMA). */
  readonly mem: GuestMemory;
  /** The whole config: what devices that describe the machine to firmware (fw_cfg) read. */
  readonly config: ConfigTree;
  /** An IOAPIC/PIC pin. */
  irq(gsi: number): IrqLine;
  /** Guest RAM in bytes (the RTC's CMOS reports it). */
  readonly memBytes: number;
  /**
   * Publish a register that vCPU threads answer without a round trip
   * (a write to `transparentWritePort` does not invalidate it); undefined
   * when `x86.shadow_regs=false`.
   */
  shadowRegister?(port: number, transparentWritePort: number): (value: number | undefined) => void;
  /** A serial backend (`stdio`, `tcp=...`, a path); the VM closes it when it ends. */
  openSerial(spec: string): Promise<SerialBackend>;
  /** The guest asked for power-off (ACPI S5). */
  powerOff(): void;
  /** The guest asked for a reset. */
  reset(): void;
  /**
   * Map `size` bytes of host memory at `hostAddr` into the guest at `gpa` (a
   * KVM memory slot of its own); with `readOnly`, guest writes there become
   * MMIO exits. Firmware images live in such slots.
   */
  mapMemory(gpa: number, size: number, hostAddr: bigint, opts: { readOnly: boolean }): { unmap(): void };
  /** A guest's misuse of a device, logged rate-limited. */
  guestError(dev: string, msg: string): void;
  /** The config space of the PCI function at B:S.F (built before platform devices), if there is one. */
  pciConfig(bus: number, slot: number, func: number): PciConfigSpace | undefined;
  /** Add a PCI function the platform device brings (saved and restored as `pci.B.S.F` of `kind`). */
  addPciFunction(bdf: { bus: number; slot: number; func: number }, kind: string, fn: PciFunction): void;
}

/** A built platform device: its state under the device contract, and teardown. */
export type PlatformModel = Omit<PersistentDevice, 'id' | 'kind'> & { destroy?(): void };

/** A platform device type. Its config keys are relative to `node`. */
export interface PlatformDeviceEmulation extends DeviceConfigKeys {
  /** The device's id in the VM and its snapshot: `com1`, `rtc`, `pm`. */
  readonly name: string;
  /** The emulation (`uart`, `rtc`, `acpi-pm`): a snapshot entry's kind. */
  readonly kind: string;
  /** Its config node: `lpc.com1`, `rtc`. */
  readonly node: string;
  /** `-l NAME,conf`: config keys from `conf` (undefined without a comma). Absent: `-l` does not take it. */
  lpcConfig?(node: ConfigTreeWriter, conf: string | undefined): void;
  /** Build it, or undefined when the config does not ask for it. Throws UserError on bad config. */
  create(ctx: PlatformContext, node: ConfigNode): PlatformModel | undefined | Promise<PlatformModel | undefined>;
}

const registry = new Map<string, PlatformDeviceEmulation>();

export function registerPlatformDevice(d: PlatformDeviceEmulation): void {
  if (registry.has(d.name)) throw new Error(`platform device ${d.name} registered twice`);
  registry.set(d.name, d);
}

/** Every platform device type, in registration order. */
export function platformDevices(): PlatformDeviceEmulation[] {
  return [...registry.values()];
}

/** What `-l` takes (and `-l help` lists). */
export function lpcDeviceNames(): string[] {
  return platformDevices().filter((d) => d.lpcConfig).map((d) => d.name);
}

/** The device `-l NAME,...` configures, if `-l` takes it. */
export function lpcDevice(name: string): { node: string; lpcConfig: NonNullable<PlatformDeviceEmulation['lpcConfig']> } | undefined {
  const d = registry.get(name);
  return d?.lpcConfig ? { node: d.node, lpcConfig: (w, conf) => d.lpcConfig!(w, conf) } : undefined;
}

/** One built platform device: the contract and the model behind it. */
export interface BuiltPlatformDevice extends PersistentDevice {
  readonly model: PlatformModel;
}

/** Build every registered platform device the config asks for, in registration order. */
export async function buildPlatformDevices(ctx: PlatformContext, config: ConfigTree): Promise<BuiltPlatformDevice[]> {
  const out: BuiltPlatformDevice[] = [];
  for (const e of registry.values()) {
    const model = await e.create(ctx, config.node(e.node) ?? new ConfigNode(e.node));
    if (!model) continue;
    out.push({
      id: e.name, kind: e.kind, model,
      saveState: (w) => model.saveState(w),
      restoreState: (r) => model.restoreState(r),
      afterRestore: model.afterRestore && (() => model.afterRestore!()),
      quiesce: model.quiesce && (() => model.quiesce!()),
      unquiesce: model.unquiesce && (() => model.unquiesce!()),
    });
  }
  return out;
}
