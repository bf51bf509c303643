/**
 * A virtual machine assembled from its config tree: KVM VM and vCPUs, guest
 * RAM, the x86 platform (in-kernel irqchip and PIT, the PCI host and its
 * functions, the platform devices of devices/platform.ts), the boot payload,
 * and the vCPU threads. `run()` resolves with bhyve's exit code when the
 * guest powers off, resets or fails. vCPUs, interrupt routing, boot and
 * snapshots live in their own modules beside this one.
 */
import { totalmem } from 'node:os';
import { EventEmitter } from 'node:events';
import { Kvm, type Vm, VcpuFd } from '../kvm/kvm.js';
import { createGuestRam, type RamMapping } from '../memory/ram.js';
import { libc } from '../host/libc.js';
import { SANDBOX_OFF, type SandboxStatus } from '../host/sandbox/index.js';
import { CAP, MEM_READONLY, SYSTEM_EVENT } from '../kvm/abi.js';
import { GuestMemory, PAGE_SIZE } from '../memory/guest-memory.js';
import { Bus, type IrqLine } from '../bus/bus.js';
import { type ConfigTree } from '../config/tree.js';
import { UserError, HostError } from '../errors.js';
import { RateLimitedLog, log } from '../log.js';
import { inspectHost, emulatedKvmMessage, type HostReport } from './host-check.js';
import { ExitCode } from './exit-codes.js';
import type { Topology } from '../x86/cpuid.js';
import { guestRamLayout, PCI_MMIO32_BASE, PCI_MMIO32_END, PCI_PIO_BASE, PCI_PIO_END } from '../x86/layout.js';
// First: the registries in all.ts's order (the order devices are built and saved in).
import '../devices/all.js';
import { AcpiPm } from '../devices/acpi-pm.js';
import { Uart16550 } from '../devices/uart16550.js';
import { openSerialBackend, type SerialBackend } from '../devices/backends/index.js';
import { buildPlatformDevices, type BuiltPlatformDevice } from '../devices/platform.js';
import { PciHost, PCI_CONFIG_ADDR, PCI_CONFIG_DATA } from '../pci/host.js';
import { loadPciDevice, mmioAllocator, persistentPciFunction, type DeviceContext } from '../pci/device.js';
import { resolveCpus, resolveMemBytes } from '../config/options.js';
import { ExitServer } from '../vcpu/exit-server.js';
import { VcpuThread } from '../vcpu/vcpu-thread.js';
import { ShadowRegisters } from '../vcpu/shadow.js';
import { DB, type VcpuEvent } from '../vcpu/mailbox.js';
import type { VmControl, SnapshotOptions, SnapshotResult, MigrationOptions, MigrationResult } from './control.js';
import { SnapshotError } from '../snapshot/state.js';
import { loadRamImage, type LoadedSnapshot, type SnapshotParts, type VmState } from '../snapshot/file.js';
import type { PersistentDevice } from '../snapshot/persist.js';
import { rawDisksWarning } from '../snapshot/disks.js';
import { IrqRouting } from './irq-routing.js';
import { setupVcpus, vcpuCpuid, VcpuHolds, watchForHalt } from './vcpus.js';
import { parseMigrationAddress } from '../migration/transport.js';
import type { MachineFacts } from '../migration/hello.js';
import type { RamSlot } from '../migration/dirty-log.js';
import { bootSource, loadBoot } from './boot.js';
import { checkSnapshotConfig, VmSnapshots } from './snapshot.js';
import { applyDiskCheckpoints } from './disk-checkpoint.js';
import { irqchipMode, UserIrqchip, type IrqchipMode } from './irqchip.js';

export { COM_PORTS } from '../devices/uart16550.js';

/** Guest RAM's KVM memory slots: the layout's regions, laid end to end in the mapping. */
function ramSlots(ram: RamMapping): RamSlot[] {
  let off = 0;
  return guestRamLayout(ram.size).map((r, slot) => {
    const s = { slot, gpa: r.gpa, size: r.size, ramOffset: off, hostAddr: ram.hostAddr + BigInt(off) };
    off += r.size;
    return s;
  });
}

/**
 * `restore`: a snapshot read from files; `incoming`: a migration's RAM
 * (being received) and its source's config: the VM is built without a
 * boot payload, and restoreIncoming() gives it its state. With
 * `storageGate`, it is built while the source still uses the disks
 * (only if buildsBeforeStorage(config)): devices touch them once it resolves.
 */
interface CreateOptions {
  restore?: LoadedSnapshot;
  incoming?: { ram: RamMapping; sourceConfig: Map<string, string>; storageGate?: Promise<void> };
}

/** Not yet saved: the user-space APIC timers and vCPU run states (halted, waiting for SIPI). */
const USER_IRQCHIP_NO_SNAPSHOTS = 'snapshots and migration are not supported with x86.irqchip=user (user-space interrupt controllers) yet';

/** KVM memory slots from here on hold device memory (firmware), not RAM: the dirty log and RAM images skip them. */
const FIRST_DEVICE_SLOT = 16;
/** How long a vCPU thread may take to read its own state before it is read from this thread instead. */
const CAPTURE_WAIT_MS = 5000;

export class Machine extends EventEmitter implements VmControl {
  readonly pio = new Bus('pio');
  readonly mmio = new Bus('mmio');
  readonly pci = new PciHost();
  readonly uarts = new Map<string, Uart16550>();
  readonly backends: SerialBackend[] = [];
  /** device registers vCPU threads may read without a round trip */
  readonly shadow = new ShadowRegisters();
  /** every device under the device contract: the PCI host, PCI functions, platform devices */
  private readonly devices: PersistentDevice[] = [this.pci.persistent];
  private platform: BuiltPlatformDevice[] = [];
  private readonly vcpus: VcpuHolds;
  private readonly irqs: IrqRouting;
  private readonly snapshots: VmSnapshots;
  private exitServer: ExitServer | undefined;
  /** the vCPU threads' start (by run(), or startParked()) */
  private threadsStarted: Promise<void> | undefined;
  private finished: Promise<ExitCode>;
  private resolveFinished!: (c: ExitCode) => void;
  private ending = false;
  private saving = false;
  private userPaused = false;
  private readonly guestLog = new RateLimitedLog(10);
  /** BARs are placed per VM: a second VM in the same process starts from the window's base again. */
  private readonly allocMmio = mmioAllocator(PCI_MMIO32_BASE, PCI_MMIO32_END);
  /** I/O BARs (transitional virtio) from 0x6000, inside the DSDT's I/O window and clear of ISA ports. */
  private readonly allocPio = mmioAllocator(PCI_PIO_BASE, PCI_PIO_END);
  /** guest RAM's KVM slots */
  private slots: RamSlot[] = [];
  /** the next KVM slot for a device's memory (firmware images), clear of RAM's */
  private nextDeviceSlot = FIRST_DEVICE_SLOT;
  private readonly freeDeviceSlots: number[] = [];
  /** pages tshyve's own threads wrote (GuestMemory's dirty map) */
  private dirtyMap = new Uint8Array(new SharedArrayBuffer(0));
  /** an incoming migration's VM built early: when its disks are ours (DeviceContext.storageGate) */
  private storageGate: Promise<void> | undefined;
  /** an incoming migration's numbers, for --get-stats (migration_*) */
  migrationStats: Record<string, number> | undefined;
  /** the reason the VM stopped with ExitCode.ERROR */
  errorMessage: string | undefined;
  /** ms from process start to the first vCPU entering KVM_RUN */
  firstRunMs: number | undefined;
  /** the sandbox tshyve put itself in (src/host/sandbox), for --get-stats and migrate() */
  sandbox: SandboxStatus = SANDBOX_OFF;
  /** x86.irqchip=user: the interrupt controllers tshyve runs itself */
  private readonly userIrq: UserIrqchip | undefined;

  private constructor(
    readonly config: ConfigTree,
    readonly kvm: Kvm,
    readonly vm: Vm,
    readonly host: HostReport,
    readonly ram: RamMapping,
    readonly mem: GuestMemory,
    readonly topo: Topology,
    readonly vcpuFds: VcpuFd[],
    readonly irqchip: IrqchipMode,
  ) {
    super();
    this.finished = new Promise((r) => { this.resolveFinished = r; });
    if (irqchip === 'user') this.userIrq = new UserIrqchip(vcpuFds.map((v) => v.fd), kvm.vcpuMmapSize(), this.mmio, this.pio);
    this.vcpus = new VcpuHolds(vcpuFds, () => this.ending, this.userIrq?.pages);
    this.irqs = new IrqRouting(kvm, vm, config, irqchip === 'kernel');
    this.snapshots = new VmSnapshots({
      kvm, vm, vcpuFds, ram, config, devices: this.devices,
      vcpuStates: (msrs, parked) => Promise.all(this.vcpus.threads.map((t) => t.captureState(msrs, parked, CAPTURE_WAIT_MS))),
    });
  }

  /** Build the VM from its config (CreateOptions); throws UserError/HostError with one-line messages. */
  static async create(config: ConfigTree, opts: CreateOptions = {}): Promise<Machine> {
    // Every fd opened here and the guest's RAM (an incoming migration's too,
    // this function's once called) are released when a later step fails: a
    // refused start or snapshot leaves no KVM fd behind (build() finishes a
    // VM it got as far as).
    const undo: (() => void)[] = [];
    if (opts.incoming) { const ram = opts.incoming.ram; undo.push(() => ram.close()); }
    try {
      return await Machine.build(config, opts, undo);
    } catch (e) {
      for (const release of undo.reverse()) release();
      throw e;
    }
  }

  /** create()'s steps; what each opens goes into `undo` as soon as it is open. */
  private static async build(config: ConfigTree, opts: CreateOptions, undo: (() => void)[]): Promise<Machine> {
    const own = (fd: number): number => { undo.push(() => libc.close(fd)); return fd; };
    const snap = opts.restore;
    if (snap) checkSnapshotConfig(snap, config);
    const topo = resolveCpus(config);
    const memBytes = resolveMemBytes(config);
    if (memBytes > totalmem()) {
      throw new UserError(`memory size ${config.get('memory.size')} is more than this host has (${(totalmem() / 2 ** 30).toFixed(1)} GiB)`);
    }
    if (snap && snap.ram.size !== memBytes) throw new SnapshotError(`the snapshot's RAM is ${snap.ram.size} bytes, this VM has ${memBytes}`, 'EMISMATCH');
    if (snap && snap.vcpus.length !== topo.cpus) throw new SnapshotError(`the snapshot has ${snap.vcpus.length} vCPUs, this VM has ${topo.cpus}`, 'EMISMATCH');
    // the disks become what they were at the checkpoint before any device opens them
    if (snap?.disks) applyDiskCheckpoints(snap.file, snap.disks, config);
    if (opts.incoming && opts.incoming.ram.size !== memBytes) throw new SnapshotError(`the incoming RAM is ${opts.incoming.ram.size} bytes, this VM has ${memBytes}`, 'EMISMATCH');
    const saved = snap?.config ?? opts.incoming?.sourceConfig;
    const boot = saved ? undefined : bootSource(config);
    const kvm = Kvm.open(config.get('kvm.device') ?? '/dev/kvm');
    own(kvm.fd);
    const host = inspectHost(kvm);
    if (topo.cpus > host.maxVcpus) throw new UserError(`${topo.cpus} vCPUs requested, this host's KVM allows ${host.maxVcpus}`);
    const isLinux = saved ? saved.has('boot.kernel') : boot?.kind === 'linux';
    if (isLinux && host.emulated && !config.getBool('x86.allow_emulated_kvm', false)) {
      throw new HostError(emulatedKvmMessage(host), 'EEMULATED');
    }
    const { mode: irqchip, why: irqchipWhy } = irqchipMode(config, host, saved ? saved.has('lpc.bootrom') : boot?.kind === 'firmware');
    if (irqchip === 'user' && saved) throw new UserError(USER_IRQCHIP_NO_SNAPSHOTS);
    const vm = kvm.createVm();
    own(vm.fd);
    const ram = opts.incoming?.ram ?? createGuestRam(memBytes, { hugePages: config.getBool('memory.hugepages', true) });
    if (!opts.incoming) undo.push(() => ram.close());
    const slots = ramSlots(ram);
    for (const r of slots) vm.setUserMemoryRegion(r.slot, r.gpa, r.size, r.hostAddr);
    // One byte per page tshyve's own threads write, for live migration (a whole number of words: it is exchanged atomically).
    const dirty = new Uint8Array(new SharedArrayBuffer(Math.ceil(memBytes / PAGE_SIZE / 8) * 8));
    const mem = new GuestMemory(slots.map((r) => ({ gpa: r.gpa, bytes: ram.bytes.subarray(r.ramOffset, r.ramOffset + r.size), hostAddr: r.hostAddr, ramOffset: r.ramOffset })), dirty);
    // Intel needs these three pages reserved below 4G; AMD ignores them.
    vm.setIdentityMapAddr(0xfeffc000);
    vm.setTssAddr(0xfeffd000);
    if (irqchip === 'kernel') {
      vm.createIrqchip();
      vm.createPit2();
    }
    const vcpuFds: VcpuFd[] = [];
    for (let i = 0; i < topo.cpus; i++) {
      vcpuFds.push(new VcpuFd(own(vm.createVcpu(i))));
    }
    performance.mark('kvm');
    const m = new Machine(config, kvm, vm, host, ram, mem, topo, vcpuFds, irqchip);
    m.slots = slots;
    m.dirtyMap = dirty;
    m.storageGate = opts.incoming?.storageGate;
    try {
      await m.buildPci();
      await m.buildPlatform();
      performance.mark('devices');
      setupVcpus(kvm, vcpuFds, topo, host, isLinux, irqchip);
      // A restore copies the image's data into the VM's own RAM (see docs/security.md).
      if (snap) loadRamImage(snap, ram, config.getBool('snapshot.verify_ram', false));
      if (snap) m.snapshots.restore(snap); else if (boot) loadBoot(boot, mem, vcpuFds[0]!, topo.cpus, ram.size);
      performance.mark('boot');
      if (irqchipWhy) log('info', irqchipWhy);
    } catch (e) {
      // no device thread, poller or backend left behind
      await m.finish(ExitCode.ERROR);
      throw e;
    }
    return m;
  }

  /** A device context for device models. */
  deviceContext(): DeviceContext {
    const ioeventfd = this.config.getBool('virtio.ioeventfd', true);
    return {
      mem: this.mem, pio: this.pio, mmio: this.mmio, vmName: this.name, firmware: this.config.get('lpc.bootrom') !== undefined,
      irq: (gsi) => this.irq(gsi),
      msi: this.userIrq ? (address, data) => this.userIrq!.router.msi(address, data) : (address, data) => { this.vm.signalMsi(address, data); },
      msiVector: this.irqs.irqfdRouter() ? () => this.irqs.msiVector() : undefined,
      guestError: (dev, msg) => this.guestLog.log('warn', `${dev}: ${msg}`),
      allocMmio: this.allocMmio,
      allocPio: this.allocPio,
      ioeventfd: ioeventfd ? (addr, len, onWrite, opts) => this.irqs.addIoeventfd(addr, len, onWrite, opts) : undefined,
      bindIoeventfd: ioeventfd ? (fd, addr, len, opts) => this.irqs.bindIoeventfd(fd, addr, len, opts) : undefined,
      // Device threads use this thread's mapping: the same pages, shared or copy-on-write.
      guestRam: this.config.getBool('virtio.workers', true)
        ? { hostAddr: this.ram.hostAddr, size: this.ram.size, regions: this.ramRegions, dirty: this.dirtyMap.buffer }
        : undefined,
      ...(this.storageGate && { storageGate: this.storageGate }),
    };
  }

  /** Guest RAM regions as offsets into the RAM mapping (for device threads that view it). */
  private get ramRegions(): { gpa: number; offset: number; size: number }[] {
    const base = this.ram.hostAddr;
    return this.mem.regionList.map((r) => ({ gpa: r.gpa, offset: Number(r.hostAddr! - base), size: r.bytes.length }));
  }

  irq(gsi: number): IrqLine {
    const ioapic = this.userIrq?.ioapic;
    return { set: ioapic ? (level: boolean) => ioapic.setIrq(gsi, level) : (level: boolean) => this.vm.irqLine(gsi, level) };
  }

  /** PCI: config mechanism #1 and the devices of pci.B.S.F.device. */
  private async buildPci(): Promise<void> {
    // 0xCF8 is only decoded as a dword; 0xCF9 is the reset control register.
    this.pio.register(PCI_CONFIG_ADDR, 1, this.pci, 'pci-config-address');
    this.pio.register(PCI_CONFIG_DATA, 4, this.pci.dataPort, 'pci-config-data');
    const ctx = this.deviceContext();
    for (const [bus, bnode] of this.config.node('pci')?.children ?? []) {
      for (const [slot, snode] of bnode.children) {
        for (const [func, fnode] of snode.children) {
          const name = fnode.get('device');
          if (!name) continue;
          const emu = await loadPciDevice(name);
          if (!emu) throw new UserError(`unknown PCI device '${name}' at pci.${bus}.${slot}.${func}`);
          const bdf = { bus: Number(bus), slot: Number(slot), func: Number(func) };
          const fn = emu.create(ctx, fnode, bdf);
          this.pci.add(bdf.bus, bdf.slot, bdf.func, fn);
          this.devices.push(persistentPciFunction(bdf, name, fn));
        }
      }
    }
  }

  /** The platform devices of devices/platform.ts that the config asks for. */
  private async buildPlatform(): Promise<void> {
    const shadow = this.config.getBool('x86.shadow_regs', true);
    this.platform = await buildPlatformDevices({
      pio: this.pio,
      mmio: this.mmio,
      mem: this.mem,
      config: this.config,
      irq: (gsi) => this.irq(gsi),
      memBytes: this.ram.size,
      shadowRegister: shadow ? (port, writePort) => this.shadow.register(port, writePort) : undefined,
      openSerial: async (spec) => { const b = await openSerialBackend(spec); this.backends.push(b); return b; },
      powerOff: () => void this.finish(ExitCode.POWEROFF),
      reset: () => void this.finish(ExitCode.REBOOT),
      mapMemory: (gpa, size, hostAddr, opts) => this.mapDeviceMemory(gpa, size, hostAddr, opts.readOnly),
      guestError: (dev, msg) => this.guestLog.log('warn', `${dev}: ${msg}`),
      pciConfig: (bus, slot, func) => this.pci.get(bus, slot, func)?.config,
      addPciFunction: (bdf, kind, fn) => {
        if (this.pci.has(bdf.bus, bdf.slot, bdf.func)) throw new UserError(`PCI ${bdf.bus}:${bdf.slot}:${bdf.func} is needed for ${kind}; use another slot for the device configured there`);
        this.pci.add(bdf.bus, bdf.slot, bdf.func, fn);
        this.devices.push(persistentPciFunction(bdf, kind, fn));
      },
    }, this.config);
    for (const d of this.platform) {
      if (d.model instanceof Uart16550) this.uarts.set(d.id, d.model);
      this.devices.push(d);
    }
  }

  /**
   * A KVM memory slot of its own for device memory (firmware images); an
   * unmapped slot is taken again (the flash maps and unmaps its store as the guest switches modes).
   */
  private mapDeviceMemory(gpa: number, size: number, hostAddr: bigint, readOnly: boolean): { unmap(): void } {
    if (readOnly && !this.kvm.checkExtension(CAP.READONLY_MEM)) throw new HostError('this host\'s KVM cannot map read-only memory (KVM_CAP_READONLY_MEM), which firmware needs');
    const slot = this.freeDeviceSlots.pop() ?? this.nextDeviceSlot++;
    this.vm.setUserMemoryRegion(slot, gpa, size, hostAddr, readOnly ? MEM_READONLY : 0);
    let mapped = true;
    return {
      unmap: () => {
        if (!mapped) return;
        mapped = false;
        this.vm.setUserMemoryRegion(slot, gpa, 0, 0n);
        this.freeDeviceSlots.push(slot);
      },
    };
  }

  /**
   * Start the vCPU threads parked, not running guest code: run() then only
   * lets them go (an incoming migration starts them while its last pages
   * arrive, so thread start-up is not part of the guest's downtime).
   */
  async startParked(): Promise<void> {
    await (this.threadsStarted ??= this.startThreads());
  }

  /** Start the vCPU threads (or let go of those startParked() started); resolves with the exit code when the VM ends. */
  async run(): Promise<ExitCode> {
    await (this.threadsStarted ??= this.startThreads());
    this.firstRunMs = performance.now();
    this.vcpus.release();
    this.emit('running');
    // the start-up's marks (debug.timing reads them on 'running'): a process that runs many VMs does not pile them up
    performance.clearMarks();
    watchForHalt(this.vcpus, Number(this.config.get('x86.halt_check_ms') ?? 2000), {
      activity: () => this.activity(),
      mayCheck: () => !this.userPaused && !this.saving,
      ending: () => this.ending,
      onHalted: () => void this.finish(ExitCode.HALT, 'all vCPUs halted with interrupts disabled'),
    });
    return this.finished;
  }

  private async startThreads(): Promise<void> {
    const doorbell = new SharedArrayBuffer(DB.WORDS * 4);
    const posting = { enabled: this.config.getBool('x86.posted_writes', true), unpostedMmio: this.mmio.unpostedRanges() };
    const threads = this.vcpuFds.map((v, i) => new VcpuThread(i, v.fd, this.kvm.vcpuMmapSize(), doorbell, this.shadow.buffer, posting,
      (e) => this.onVcpuEvent(e), this.userIrq?.workerData));
    this.vcpus.threads = threads;
    this.exitServer = new ExitServer(new Int32Array(doorbell), threads.map((t) => t.mailbox), this.pio, this.mmio,
      (msg) => this.guestLog.log('warn', msg));
    if (this.config.getBool('debug.stats', false)) this.exitServer.byAddress = new Map();
    this.exitServer.start();
    // No vCPU enters the guest before every vCPU thread is up: a thread
    // still booting Node takes CPU from the guest (seconds in the nested
    // lab, where an AP's thread used to boot while the guest kernel did).
    await Promise.all(threads.map((t) => t.start(true)));
    if (!(await this.vcpus.hold(60_000))) throw new HostError('a vCPU thread did not park in time');
    performance.mark('parked');
  }

  /** Exits, and the work devices do without them: what the halt check watches. */
  private activity(): number {
    const s = this.exitServer?.stats;
    let n = (s ? s.pio + s.mmio : 0) + this.irqs.notifies + (this.userIrq?.router.delivered ?? 0);
    for (const f of this.pci.functions()) n += f.activity?.() ?? 0;
    return n;
  }

  private onVcpuEvent(e: VcpuEvent): void {
    switch (e.type) {
      case 'shutdown': void this.finish(ExitCode.TRIPLE_FAULT, `vCPU ${e.index} triple fault (${this.vcpus.describe(e.index)})`); break;
      case 'system-event':
        void this.finish(e.event === SYSTEM_EVENT.RESET ? ExitCode.REBOOT : e.event === SYSTEM_EVENT.SHUTDOWN ? ExitCode.POWEROFF : ExitCode.ERROR);
        break;
      case 'error': {
        let msg = `vCPU ${e.index}: ${e.message}`;
        if (this.host.emulated && /emulation failed/.test(e.message)) msg += `; this host's KVM is software-emulated (${this.host.emulatedWhy}) and cannot run this guest: use the nested lab (lab/run)`;
        void this.finish(ExitCode.ERROR, msg);
        break;
      }
      default: break;
    }
  }

  /** Press the ACPI power button (SIGTERM): the guest decides what to do. */
  pressPowerButton(): void {
    for (const d of this.platform) if (d.model instanceof AcpiPm) d.model.pressPowerButton();
  }

  /** Pause every vCPU (for snapshots and the control socket). */
  async pause(): Promise<void> {
    if (this.userPaused) return;
    this.userPaused = true;
    if (!(await this.vcpus.hold())) throw new HostError('a vCPU did not pause in time');
  }
  resume(): void {
    if (!this.userPaused) return;
    this.userPaused = false;
    this.vcpus.release();
  }
  get paused(): boolean { return this.userPaused; }
  get name(): string { return this.config.get('name') ?? 'vm'; }

  stats(): Record<string, number | string> {
    const s = this.exitServer?.stats;
    const out: Record<string, number | string> = {
      name: this.name, vcpus: this.topo.cpus, memory_bytes: this.ram.size,
      uptime_ms: this.firstRunMs === undefined ? 0 : Math.round(performance.now() - this.firstRunMs),
      state: this.ending ? 'ending' : this.userPaused ? 'paused' : 'running',
      sandbox: this.sandbox.on ? 'on' : 'off', sandbox_layers: this.sandbox.layers,
    };
    if (s) for (const [k, v] of Object.entries(s)) if (typeof v === 'number') out[`exits_${k}`] = v;
    for (const [name, u] of this.uarts) out[`${name}_dropped_bytes`] = u.droppedTx;
    for (const f of this.pci.functions()) if (f.stats) Object.assign(out, f.stats());
    for (const [k, v] of Object.entries(this.migrationStats ?? {})) out[`migration_${k}`] = v;
    return out;
  }

  /**
   * An incoming migration's VM built early, its vCPU threads parked: put its
   * own fresh state back through `roundTrip` (the stream's encoding and
   * checks) and restoreIncoming, so that the code a restore runs is compiled
   * before the source pauses the guest (cold code costs hundreds of ms where
   * user space is slow). The real state replaces all of it.
   */
  rehearseRestore(roundTrip: (parts: SnapshotParts) => VmState): void {
    this.restoreIncoming(roundTrip(this.snapshots.capture()));
  }

  /** true once the VM is ending (or has ended) */
  get isEnding(): boolean { return this.ending; }

  /** Apply an incoming migration's state (every field checked; SnapshotError on bad input) before run(). */
  restoreIncoming(state: VmState): void {
    checkSnapshotConfig(state, this.config);
    if (state.vcpus.length !== this.topo.cpus) throw new SnapshotError(`the source sent ${state.vcpus.length} vCPUs, this VM has ${this.topo.cpus}`, 'EMISMATCH');
    this.snapshots.restore(state);
  }

  /** CPUID and the machine as a migration's handshake compares them. */
  facts(): MachineFacts {
    return { vcpus: this.topo.cpus, ramBytes: this.ram.size, config: new Map(this.config.entries()), cpuid: vcpuCpuid(this.kvm, 0, this.topo, this.host, this.irqchip) };
  }

  /**
   * Send the VM to a tshyve started with `-R` (warm, or live with
   * opts.live); once the destination runs it, this VM ends with exit 0.
   * Any failure before that leaves it running here as it was.
   */
  async migrate(target: string, opts: MigrationOptions = {}): Promise<MigrationResult> {
    const addr = parseMigrationAddress(target);
    if (this.ending) throw new UserError('the VM is shutting down');
    if (this.saving) throw new UserError('a save or migration is already in progress');
    if (this.firstRunMs === undefined) throw new UserError('the VM is not running yet');
    if (this.userIrq) throw new UserError(USER_IRQCHIP_NO_SNAPSHOTS);
    this.saving = true;
    try {
      const { migrateOut } = await import('./migrate-out.js'); // (loaded when a VM migrates, not at start-up)
      return await migrateOut({
        vm: this.vm, ram: this.ram, slots: this.slots, dirtyMap: this.dirtyMap, config: this.config, snapshots: this.snapshots,
        reserve: this.sandbox.reserve,
        facts: () => this.facts(),
        hold: () => this.vcpus.hold(),
        release: () => this.vcpus.release(),
        ending: () => this.ending,
        handedOver: (msg) => void this.finish(ExitCode.REBOOT, msg),
      }, addr, opts);
    } finally {
      this.saving = false;
    }
  }

  /**
   * Save the VM: park the vCPUs (their posted writes served, pending port
   * reads completed), let devices finish in-flight work and flush disks, take
   * the KVM and device state, write RAM and the document, then go on.
   */
  async checkpoint(file: string, opts: SnapshotOptions = {}): Promise<SnapshotResult> {
    return this.save(file, opts, false);
  }

  /** Save, then end the VM (exit 0, as bhyve after a suspend). */
  async suspend(file: string, opts: SnapshotOptions = {}): Promise<SnapshotResult> {
    return this.save(file, opts, true);
  }

  private async save(file: string, opts: SnapshotOptions, thenExit: boolean): Promise<SnapshotResult> {
    if (this.ending) throw new UserError('the VM is shutting down');
    if (this.saving) throw new UserError('a save is already in progress');
    if (this.firstRunMs === undefined) throw new UserError('the VM is not running yet');
    if (this.userIrq) throw new UserError(USER_IRQCHIP_NO_SNAPSHOTS);
    this.saving = true;
    const t0 = performance.now();
    try {
      if (!(await this.vcpus.hold())) throw new HostError('a vCPU did not pause in time; nothing was saved');
      if (this.ending) throw new UserError('the VM is shutting down');
      // a suspended VM's disks stay as they are: only a checkpoint includes them
      const disks = thenExit ? undefined : opts.external ? 'external' : 'internal';
      const saved = await this.snapshots.save(file, { onProgress: opts.onProgress, disks });
      const pausedMs = performance.now() - t0;
      if (thenExit) void this.finish(ExitCode.REBOOT, `suspended to ${file}`);
      const warning = rawDisksWarning(saved.disks);
      if (warning) log('warn', `checkpoint ${file}: ${warning}`);
      const r: SnapshotResult = { file, ramFile: saved.ramFile, ramBytes: this.ram.size, pausedMs, totalMs: performance.now() - t0 };
      return disks ? { ...r, disks: saved.disks, ...(warning && { warning }) } : r;
    } finally {
      this.saving = false;
      this.vcpus.release();
    }
  }

  forceReset(): void { void this.finish(ExitCode.REBOOT, 'reset by the controller'); }
  forcePoweroff(): void { void this.finish(ExitCode.POWEROFF, 'powered off by the controller'); }
  destroy(): void { void this.finish(ExitCode.ERROR, 'destroyed by the controller'); }

  get exitStats() {
    const s = this.exitServer;
    if (!s) return undefined;
    const top = s.byAddress ? [...s.byAddress].sort((a, b) => b[1] - a[1]).slice(0, 12) : undefined;
    return { ...s.stats, irqfd: this.irqs.stats, top };
  }

  /** End the VM with `code`; idempotent. */
  async finish(code: ExitCode, message?: string): Promise<void> {
    if (this.ending) return;
    this.ending = true;
    if (message && code === ExitCode.ERROR) this.errorMessage = message;
    else if (message) log('info', message);
    // The exit server keeps serving until every vCPU has left its mailbox.
    const clean = await Promise.all(this.vcpus.threads.map((v) => v.stop()));
    if (clean.includes(false)) log('debug', 'a vCPU did not leave KVM_RUN when kicked (halted with interrupts off?)');
    this.exitServer?.stop();
    this.irqs.stop();
    for (const f of [...this.pci.functions(), ...this.platform.map((d) => d.model)]) {
      try { f.destroy?.(); } catch (e) { log('warn', `closing a device: ${(e as Error).message}`); }
    }
    await this.closeBackends();
    this.resolveFinished(code);
  }

  private async closeBackends(): Promise<void> {
    await Promise.all(this.backends.map(async (b) => { try { await b.close(); } catch { /* closing anyway */ } }));
  }
}
