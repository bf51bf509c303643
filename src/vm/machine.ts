/**
 * A virtual machine assembled from its config tree: KVM VM and vCPUs, guest
 * RAM, the x86 platform (in-kernel irqchip and PIT, ACPI, RTC, UARTs, PCI
 * host), the boot payload, and the vCPU threads. `run()` resolves with
 * bhyve's exit code when the guest powers off, resets or fails.
 */
import { readFileSync, statSync } from 'node:fs';
import { totalmem } from 'node:os';
import { EventEmitter } from 'node:events';
import { Kvm, type Vm, VcpuFd, CAP } from '../kvm/kvm.js';
import { createEventfd, signalEventfd } from '../host/eventfd.js';
import { createGuestRam, mapGuestRamFromFile, ramDataRanges, type RamMapping } from '../memory/ram.js';
import { SYSTEM_EVENT, MP_STATE, type Sregs, type Segment as KvmSegment } from '../kvm/abi.js';
import { libc } from '../host/libc.js';
import { MsiRouter, type MsiVector } from './msi-router.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { Bus, type IrqLine } from '../bus/bus.js';
import { type ConfigTree } from '../config/tree.js';
import { UserError, HostError } from '../errors.js';
import { RateLimitedLog, log } from '../log.js';
import { inspectHost, emulatedKvmMessage, type HostReport } from './host-check.js';
import { ExitCode } from './exit-codes.js';
import { guestCpuid, type Topology } from '../x86/cpuid.js';
import { guestRamLayout, IOAPIC_ADDR, LAPIC_ADDR, PCI_MMIO32_BASE, PCI_MMIO32_END, PCI_PIO_BASE, PCI_PIO_END } from '../x86/layout.js';
import type { BootCpuState, Segment as BootSegment } from '../x86/boot/cpu-state.js';
import { loadLinux } from '../x86/boot/linux.js';
import { buildAcpiTables } from '../x86/acpi/index.js';
import { attachAcpiPm, type AcpiPm } from '../devices/acpi-pm.js';
import { Uart16550 } from '../devices/uart16550.js';
import { Rtc } from '../devices/rtc.js';
import { openSerialBackend, type SerialBackend } from '../devices/backends/index.js';
import { PciHost, PCI_CONFIG_ADDR, PCI_CONFIG_DATA } from '../pci/host.js';
import { findPciDevice, mmioAllocator, type DeviceContext } from '../pci/device.js';
import '../devices/all.js';
import { intxGsi } from '../pci/virtio-pci.js';
import { resolveCpus, resolveMemBytes } from '../config/options.js';
import { ExitServer } from '../vcpu/exit-server.js';
import { VcpuThread } from '../vcpu/vcpu-thread.js';
import { ShadowRegisters } from '../vcpu/shadow.js';
import { EventfdPoller } from '../host/eventfd-poller.js';
import { DB, type VcpuEvent } from '../vcpu/mailbox.js';
import type { VmControl, SnapshotOptions, SnapshotResult } from './control.js';
import type { PciFunction } from '../pci/device.js';
import { SnapshotError, StateWriter } from '../snapshot/state.js';
import { writeSnapshot, type LoadedSnapshot } from '../snapshot/file.js';
import { readableMsrs, readVcpu, readVmState, saveVcpu, saveVmState } from '../snapshot/kvm-state.js';
import { checkConfigMatches } from '../snapshot/config-match.js';

/** ISA serial ports: base port and IRQ, as on a PC. */
export const COM_PORTS: Record<string, { port: number; irq: number }> = {
  com1: { port: 0x3f8, irq: 4 },
  com2: { port: 0x2f8, irq: 3 },
  com3: { port: 0x3e8, irq: 4 },
  com4: { port: 0x2e8, irq: 3 },
};

const MSR = {
  SYSENTER_CS: 0x174, SYSENTER_ESP: 0x175, SYSENTER_EIP: 0x176,
  STAR: 0xc0000081, LSTAR: 0xc0000082, CSTAR: 0xc0000083, SYSCALL_MASK: 0xc0000084, KERNEL_GS_BASE: 0xc0000102,
  TSC: 0x10, MISC_ENABLE: 0x1a0, MTRR_DEF_TYPE: 0x2ff,
} as const;

/** Where guest code starts when no Linux kernel is given (tshyve's own test programs). */
export interface RawBoot { file: string; address: number }

export class Machine extends EventEmitter implements VmControl {
  readonly pio = new Bus('pio');
  readonly mmio = new Bus('mmio');
  readonly pci = new PciHost();
  readonly uarts = new Map<string, Uart16550>();
  readonly backends: SerialBackend[] = [];
  /** device registers vCPU threads may read without a round trip */
  readonly shadow = new ShadowRegisters();
  private vcpus: VcpuThread[] = [];
  private exitServer: ExitServer | undefined;
  private pm: AcpiPm | undefined;
  private finished: Promise<ExitCode>;
  private resolveFinished!: (c: ExitCode) => void;
  private ending = false;
  private readonly guestLog = new RateLimitedLog(10);
  /** the reason the VM stopped with ExitCode.ERROR */
  errorMessage: string | undefined;
  /** ms from process start to the first vCPU entering KVM_RUN */
  firstRunMs: number | undefined;

  private constructor(
    readonly config: ConfigTree,
    readonly kvm: Kvm,
    readonly vm: Vm,
    readonly host: HostReport,
    readonly ram: RamMapping,
    readonly mem: GuestMemory,
    readonly topo: Topology,
    readonly vcpuFds: VcpuFd[],
  ) {
    super();
    this.finished = new Promise((r) => { this.resolveFinished = r; });
  }

  /** Build the VM from its config; throws UserError/HostError with one-line messages. */
  static async create(config: ConfigTree, opts: { restore?: LoadedSnapshot } = {}): Promise<Machine> {
    const snap = opts.restore;
    if (snap) checkConfigMatches(snap.config, config.entries());
    const topo = resolveCpus(config);
    const memBytes = resolveMemBytes(config);
    if (memBytes > totalmem()) {
      throw new UserError(`memory size ${config.get('memory.size')} is more than this host has (${(totalmem() / 2 ** 30).toFixed(1)} GiB)`);
    }
    if (snap && snap.ram.size !== memBytes) throw new SnapshotError(`the snapshot's RAM is ${snap.ram.size} bytes, this VM has ${memBytes}`, 'EMISMATCH');
    if (snap && snap.vcpus.length !== topo.cpus) throw new SnapshotError(`the snapshot has ${snap.vcpus.length} vCPUs, this VM has ${topo.cpus}`, 'EMISMATCH');
    const boot = snap ? undefined : bootSource(config);
    const kvm = Kvm.open(config.get('kvm.device') ?? '/dev/kvm');
    const host = inspectHost(kvm);
    if (topo.cpus > host.maxVcpus) throw new UserError(`${topo.cpus} vCPUs requested, this host's KVM allows ${host.maxVcpus}`);
    const isLinux = snap ? snap.config.has('boot.kernel') : boot?.kind === 'linux';
    if (isLinux && host.emulated && !config.getBool('x86.allow_emulated_kvm', false)) {
      throw new HostError(emulatedKvmMessage(host), 'EEMULATED');
    }
    const vm = kvm.createVm();
    // A restore maps the saved RAM copy-on-write: nothing is read up front.
    const ram = snap ? mapGuestRamFromFile(snap.ram.file, memBytes) : createGuestRam(memBytes, `tshyve-${config.get('name') ?? 'vm'}`, { hugePages: config.getBool('memory.hugepages', true) });
    const regions = guestRamLayout(memBytes);
    let off = 0;
    const memRegions = regions.map((r, slot) => {
      vm.setUserMemoryRegion(slot, r.gpa, r.size, ram.hostAddr + BigInt(off));
      const bytes = ram.bytes.subarray(off, off + r.size);
      const hostAddr = ram.hostAddr + BigInt(off);
      off += r.size;
      return { gpa: r.gpa, bytes, hostAddr };
    });
    const mem = new GuestMemory(memRegions);
    // Intel needs these three pages reserved below 4G; AMD ignores them.
    vm.setIdentityMapAddr(0xfeffc000);
    vm.setTssAddr(0xfeffd000);
    vm.createIrqchip();
    vm.createPit2();
    const fds: VcpuFd[] = [];
    for (let i = 0; i < topo.cpus; i++) fds.push(new VcpuFd(vm.createVcpu(i)));
    const m = new Machine(config, kvm, vm, host, ram, mem, topo, fds);
    try {
      await m.buildPlatform();
      m.setupVcpus(host);
      if (snap) m.restoreFrom(snap); else m.loadBoot(boot!);
    } catch (e) {
      await m.closeBackends();
      throw e;
    }
    return m;
  }

  /** A device context for device models. */
  deviceContext(): DeviceContext {
    return {
      mem: this.mem, pio: this.pio, mmio: this.mmio,
      irq: (gsi) => this.irq(gsi),
      msi: (address, data) => { this.vm.signalMsi(address, data); },
      msiVector: this.irqfdRouter() ? () => this.msiVector() : undefined,
      guestError: (dev, msg) => this.guestLog.log('warn', `${dev}: ${msg}`),
      allocMmio: this.allocMmio,
      allocPio: this.allocPio,
      ioeventfd: this.config.getBool('virtio.ioeventfd', true) ? (addr, len, onWrite, opts) => this.addIoeventfd(addr, len, onWrite, opts) : undefined,
      bindIoeventfd: this.config.getBool('virtio.ioeventfd', true) ? (fd, addr, len, opts) => this.bindIoeventfd(fd, addr, len, opts) : undefined,
      // Device threads use this thread's mapping: the same pages, shared or copy-on-write.
      guestRam: this.config.getBool('virtio.workers', true) ? { hostAddr: this.ram.hostAddr, size: this.ram.size, regions: this.ramRegions } : undefined,
    };
  }

  private poller: EventfdPoller | undefined;
  private readonly pciDevs: { key: string; name: string; fn: PciFunction }[] = [];
  private rtc: Rtc | undefined;
  /** BARs are placed per VM: a second VM in the same process starts from the window's base again. */
  private readonly allocMmio = mmioAllocator(PCI_MMIO32_BASE, PCI_MMIO32_END);
  /** I/O BARs (transitional virtio) from 0x6000, inside the DSDT's I/O window and clear of ISA ports. */
  private readonly allocPio = mmioAllocator(PCI_PIO_BASE, PCI_PIO_END);

  /** Guest RAM regions as offsets into the memfd (for device threads that map it). */
  private get ramRegions(): { gpa: number; offset: number; size: number }[] {
    const base = this.ram.hostAddr;
    return this.mem.regionList.map((r) => ({ gpa: r.gpa, offset: Number(r.hostAddr! - base), size: r.bytes.length }));
  }

  private bindIoeventfd(fd: number, addr: number, len: number, opts: { pio?: boolean; datamatch?: number } = {}): { remove(): void } | undefined {
    const kopts = { pio: opts.pio, datamatch: opts.datamatch === undefined ? undefined : BigInt(opts.datamatch) };
    try {
      this.vm.ioeventfd(fd, BigInt(addr), len, kopts);
    } catch (e) {
      log('debug', `no ioeventfd at 0x${addr.toString(16)}: ${(e as Error).message}`);
      return undefined;
    }
    return { remove: () => { try { this.vm.ioeventfd(fd, BigInt(addr), len, { ...kopts, deassign: true }); } catch { /* already gone */ } } };
  }

  private addIoeventfd(addr: number, len: number, onWrite: () => void,
    opts: { pio?: boolean; datamatch?: number } = {}): { remove(): void } | undefined {
    this.poller ??= new EventfdPoller();
    const efd = this.poller.add(() => { this.notifies++; onWrite(); });
    const kopts = { pio: opts.pio, datamatch: opts.datamatch === undefined ? undefined : BigInt(opts.datamatch) };
    try {
      this.vm.ioeventfd(efd.fd, BigInt(addr), len, kopts);
    } catch (e) {
      efd.close();
      log('debug', `no ioeventfd at 0x${addr.toString(16)}: ${(e as Error).message}`);
      return undefined;
    }
    return {
      remove: () => {
        try { this.vm.ioeventfd(efd.fd, BigInt(addr), len, { ...kopts, deassign: true }); } catch { /* already gone */ }
        efd.close();
      },
    };
  }

  /** queue notifications that came through ioeventfds to this thread (no exit): activity for the halt check */
  private notifies = 0;

  private router: MsiRouter | undefined | false;
  private irqfds = 0;

  /** The VM's MSI router when irqfds can be used (host caps and `virtio.irqfd`), else undefined. */
  private irqfdRouter(): MsiRouter | undefined {
    if (this.router === undefined) {
      const gsis = this.kvm.checkExtension(CAP.IRQ_ROUTING);
      const ok = this.config.getBool('virtio.irqfd', true) && this.kvm.checkExtension(CAP.IRQFD) > 0 && gsis > 0;
      this.router = ok ? new MsiRouter((t) => this.vm.setGsiRouting(t), gsis) : false;
      if (!ok) log('debug', 'MSI through KVM_SIGNAL_MSI (no irqfd)');
    }
    return this.router || undefined;
  }

  private msiVector(): MsiVector | undefined {
    const router = this.irqfdRouter();
    if (!router) return undefined;
    const gsi = router.alloc();
    const fd = createEventfd();
    try {
      this.vm.irqfd(fd, gsi);
    } catch (e) {
      libc.close(fd);
      router.release(gsi);
      log('debug', `no irqfd for GSI ${gsi}: ${(e as Error).message}`);
      return undefined;
    }
    let open = true;
    this.irqfds++;
    return {
      gsi, fd,
      route: (address, data) => { router.setRoute(gsi, address, data); },
      signal: () => { signalEventfd(fd); },
      close: () => {
        if (!open) return;
        open = false;
        try { this.vm.irqfd(fd, gsi, true); } catch { /* VM going away */ }
        libc.close(fd);
        try { router.release(gsi); } catch { /* VM going away */ }
      },
    };
  }

  irq(gsi: number): IrqLine {
    return { set: (level: boolean) => this.vm.irqLine(gsi, level) };
  }

  private async buildPlatform(): Promise<void> {
    const c = this.config;
    // PCI: config mechanism #1 and the devices of pci.B.S.F.device.
    // 0xCF8 is only decoded as a dword; 0xCF9 is the reset control register.
    this.pio.register(PCI_CONFIG_ADDR, 1, this.pci, 'pci-config-address');
    this.pio.register(PCI_CONFIG_DATA, 4, this.pci.dataPort, 'pci-config-data');
    const ctx = this.deviceContext();
    const pciRoot = c.node('pci');
    for (const [bus, bnode] of pciRoot?.children ?? []) {
      for (const [slot, snode] of bnode.children) {
        for (const [func, fnode] of snode.children) {
          const name = fnode.get('device');
          if (!name) continue;
          const emu = findPciDevice(name);
          if (!emu) throw new UserError(`unknown PCI device '${name}' at pci.${bus}.${slot}.${func}`);
          const bdf = { bus: Number(bus), slot: Number(slot), func: Number(func) };
          const fn = emu.create(ctx, fnode, bdf);
          this.pci.add(bdf.bus, bdf.slot, bdf.func, fn);
          this.pciDevs.push({ key: `${bus}.${slot}.${func}`, name, fn });
        }
      }
    }
    // LPC devices: the UARTs named in lpc.comN.path, and the RTC.
    for (const [name, { port, irq }] of Object.entries(COM_PORTS)) {
      const spec = c.get(`lpc.${name}.path`);
      if (spec === undefined) continue;
      const backend = await openSerialBackend(spec);
      this.backends.push(backend);
      const uart = new Uart16550(this.irq(irq), backend);
      this.uarts.set(name, uart);
      // LSR polls (one per byte a guest prints) are answered on the vCPU thread.
      if (c.getBool('x86.shadow_regs', true)) {
        const setLsr = this.shadow.register(port + 5, port);
        uart.onChange = () => setLsr(uart.lsrShadow());
        setLsr(uart.lsrShadow());
      }
      this.pio.register(port, 8, uart, name);
    }
    const utc = !c.getBool('rtc.use_localtime', true);
    this.rtc = new Rtc({ utc, memBytes: this.ram.size, irq: this.irq(8) });
    this.pio.register(0x70, 2, this.rtc, 'rtc');
    this.pm = attachAcpiPm(this.pio, {
      onPowerOff: () => void this.finish(ExitCode.POWEROFF),
      onReset: () => void this.finish(ExitCode.REBOOT),
    }, { sci: this.irq(9) });
    // POST code and ISA DMA page registers: writes are harmless, keep them quiet.
    const sink = { read: () => 0xff, write: () => {} };
    this.pio.register(0x80, 1, sink, 'post');
  }

  private setupVcpus(host: HostReport): void {
    const supported = this.kvm.supportedCpuid();
    const tscDeadline = this.kvm.checkExtension(CAP.TSC_DEADLINE_TIMER) > 0;
    this.vcpuFds.forEach((v, i) => {
      v.setCpuid(guestCpuid(supported, i, this.topo, { hideCx16: host.emulated, tscDeadline }));
      const msrs = [
        { index: MSR.SYSENTER_CS, data: 0n }, { index: MSR.SYSENTER_ESP, data: 0n }, { index: MSR.SYSENTER_EIP, data: 0n },
        { index: MSR.STAR, data: 0n }, { index: MSR.LSTAR, data: 0n }, { index: MSR.CSTAR, data: 0n },
        { index: MSR.SYSCALL_MASK, data: 0n }, { index: MSR.KERNEL_GS_BASE, data: 0n },
        { index: MSR.TSC, data: 0n },
        { index: MSR.MISC_ENABLE, data: 1n }, // fast strings
        { index: MSR.MTRR_DEF_TYPE, data: (1n << 11n) | 6n }, // MTRRs on, default write-back
      ];
      const n = v.setMsrs(msrs);
      if (n !== msrs.length) log('debug', `vCPU ${i}: KVM accepted ${n} of ${msrs.length} boot MSRs`);
      const fpu = Buffer.alloc(416);
      fpu.writeUInt16LE(0x37f, 128); // fcw
      fpu.writeUInt32LE(0x1f80, 408); // mxcsr
      v.setFpu(fpu);
      const lapic = v.getLapic();
      const LVT_LINT0 = 0x350, LVT_LINT1 = 0x360;
      lapic.writeUInt32LE((lapic.readUInt32LE(LVT_LINT0) & ~0x700) | 0x700, LVT_LINT0); // ExtINT
      lapic.writeUInt32LE((lapic.readUInt32LE(LVT_LINT1) & ~0x700) | 0x400, LVT_LINT1); // NMI
      v.setLapic(lapic);
    });
  }

  private loadBoot(boot: BootSource): void {
    const bsp = this.vcpuFds[0]!;
    if (boot.kind === 'raw') {
      const image = boot.image;
      if (!this.mem.contains(boot.address, image.length)) throw new UserError(`boot image ${boot.file} does not fit in guest memory at 0x${boot.address.toString(16)}`);
      this.mem.write(boot.address, image);
      // Real mode at seg:off = (addr >> 4):(addr & 0xf)
      const s = bsp.getSregs();
      const seg = boot.address >> 4;
      s.cs = { ...s.cs, base: BigInt(seg << 4), selector: seg };
      bsp.setSregs(s);
      const r = bsp.getRegs();
      r.rip = BigInt(boot.address & 0xf); r.rflags = 2n; r.rsp = 0n;
      bsp.setRegs(r);
      return;
    }
    const { kernel, initrd } = boot;
    const rsdpAddr = buildAcpiTables(this.mem, {
      cpus: this.topo.cpus, ioapicAddr: IOAPIC_ADDR, lapicAddr: LAPIC_ADDR,
      // INTx routing for drivers that do not use MSI-X
      dsdt: { pci: { prt: Array.from({ length: 32 }, (_, slot) => ({ slot, pin: 0, gsi: intxGsi(slot) })) } },
    });
    const state = loadLinux(this.mem, { kernel, initrd, cmdline: boot.cmdline, memBytes: this.ram.size, rsdpAddr });
    applyBootState(bsp, state);
  }

  /** Start the vCPU threads; resolves with the exit code when the VM ends. */
  async run(): Promise<ExitCode> {
    const doorbell = new SharedArrayBuffer(DB.WORDS * 4);
    const postWrites = this.config.getBool('x86.posted_writes', true);
    this.vcpus = this.vcpuFds.map((v, i) => new VcpuThread(i, v.fd, this.kvm.vcpuMmapSize(), doorbell, this.shadow.buffer, postWrites,
      (e) => this.onVcpuEvent(e)));
    this.exitServer = new ExitServer(new Int32Array(doorbell), this.vcpus.map((t) => t.mailbox), this.pio, this.mmio,
      (msg) => this.guestLog.log('warn', msg));
    if (this.config.getBool('debug.stats', false)) this.exitServer.byAddress = new Map();
    this.exitServer.start();
    await Promise.all(this.vcpus.map((t) => t.start()));
    this.firstRunMs = performance.now();
    this.emit('running');
    this.watchForHalt();
    return this.finished;
  }

  /**
   * bhyve exits 2 when every vCPU has halted with interrupts off (Linux's
   * `halt`). KVM halts in the kernel, so look while the guest is quiet: park
   * the vCPUs, read their MP state and IF, and go on.
   */
  private watchForHalt(): void {
    const everyMs = Number(this.config.get('x86.halt_check_ms') ?? 2000);
    if (!(everyMs > 0)) return;
    let lastExits = -1;
    const check = async () => {
      if (this.ending) return;
      const s = this.exitServer?.stats;
      // Exits, and the work devices do without them (ioeventfd notifies,
      // queues served on their own threads): a vCPU halted with interrupts
      // off makes none of these, so only a quiet VM is checked, and a VM
      // busy with disk I/O is not parked every few seconds for nothing.
      let exits = (s ? s.pio + s.mmio : 0) + this.notifies;
      for (const d of this.pciDevs) exits += d.fn.activity?.() ?? 0;
      if (exits === lastExits && !this.checking && !this.userPaused && !this.saving) {
        this.checking = true;
        try {
          if (await this.allHaltedWithInterruptsOff()) { void this.finish(ExitCode.HALT, 'all vCPUs halted with interrupts disabled'); return; }
        } finally { this.checking = false; }
      }
      lastExits = exits;
      if (!this.ending) setTimeout(() => void check(), everyMs).unref();
    };
    setTimeout(() => void check(), everyMs).unref();
  }

  private checking = false;

  private async allHaltedWithInterruptsOff(): Promise<boolean> {
    const parked = await this.holdVcpus(500);
    try {
      // A vCPU that cannot be parked (an emulated KVM's halt) tells nothing.
      if (!parked || this.ending) return false;
      return this.vcpuFds.every((v) => {
        const mp = v.getMpState();
        if (mp === MP_STATE.UNINITIALIZED) return true; // never started: cannot run
        return mp === MP_STATE.HALTED && (v.getRegs().rflags & 0x200n) === 0n;
      });
    } finally {
      this.releaseVcpus();
    }
  }

  /**
   * Who wants the vCPUs parked: the user (pause), a save, the halt check.
   * They run again only when the last of them lets go, so a halt check
   * that ends during a save cannot set the guest running under it.
   */
  private holds = 0;

  private async holdVcpus(timeoutMs?: number): Promise<boolean> {
    this.holds++;
    const ok = await Promise.all(this.vcpus.map((v) => v.pause(timeoutMs)));
    return !ok.includes(false);
  }

  private releaseVcpus(): void {
    if (this.holds > 0) this.holds--;
    if (this.holds === 0 && !this.ending) for (const v of this.vcpus) v.resume();
  }

  private onVcpuEvent(e: VcpuEvent): void {
    switch (e.type) {
      case 'shutdown': void this.finish(ExitCode.TRIPLE_FAULT, `vCPU ${e.index} triple fault (${this.describeVcpu(e.index)})`); break;
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

  /**
   * Where a vCPU stood, for the triple-fault message: its thread has left
   * KVM_RUN, so its registers are what the guest last had.
   */
  private describeVcpu(i: number): string {
    try {
      const v = this.vcpuFds[i]!, r = v.getRegs(), s = v.getSregs();
      const h = (x: bigint | number) => `0x${x.toString(16)}`;
      const ev = v.getVcpuEvents();
      return `rip ${h(r.rip)} rsp ${h(r.rsp)} rflags ${h(r.rflags)} cs ${h(s.cs.selector)} ss ${h(s.ss.selector)} cr0 ${h(s.cr0)} cr2 ${h(s.cr2)} `
        + `cr3 ${h(s.cr3)} cr4 ${h(s.cr4)} efer ${h(s.efer)} idt ${h(s.idt.base)}/${h(s.idt.limit)} gdt ${h(s.gdt.base)}/${h(s.gdt.limit)} `
        + `tr ${h(s.tr.selector)}@${h(s.tr.base)} events ${ev.subarray(0, 32).toString('hex')}`;
    } catch (err) {
      return `registers unreadable: ${(err as Error).message}`;
    }
  }

  /** Press the ACPI power button (SIGTERM): the guest decides what to do. */
  pressPowerButton(): void { this.pm?.pressPowerButton(); }

  /** Pause every vCPU (for snapshots and the control socket). */
  async pause(): Promise<void> {
    if (this.userPaused) return;
    this.userPaused = true;
    if (!(await this.holdVcpus())) throw new HostError('a vCPU did not pause in time');
  }
  resume(): void {
    if (!this.userPaused) return;
    this.userPaused = false;
    this.releaseVcpus();
  }
  private userPaused = false;
  get paused(): boolean { return this.userPaused; }
  get name(): string { return this.config.get('name') ?? 'vm'; }

  stats(): Record<string, number | string> {
    const s = this.exitServer?.stats;
    const out: Record<string, number | string> = {
      name: this.name, vcpus: this.topo.cpus, memory_bytes: this.ram.size,
      uptime_ms: this.firstRunMs === undefined ? 0 : Math.round(performance.now() - this.firstRunMs),
      state: this.ending ? 'ending' : this.userPaused ? 'paused' : 'running',
    };
    if (s) for (const [k, v] of Object.entries(s)) if (typeof v === 'number') out[`exits_${k}`] = v;
    for (const [name, u] of this.uarts) out[`${name}_dropped_bytes`] = u.droppedTx;
    return out;
  }

  private saving = false;

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
    if (this.vcpus.length === 0) throw new UserError('the VM is not running yet');
    this.saving = true;
    const t0 = performance.now();
    try {
      if (!(await this.holdVcpus())) throw new HostError('a vCPU did not pause in time; nothing was saved');
      if (this.ending) throw new UserError('the VM is shutting down');
      for (const v of this.vcpuFds) v.kvmclockCtrl();
      for (const d of this.pciDevs) await d.fn.quiesce?.();
      const parts = this.collectState();
      const { ramFile } = await writeSnapshot(file, this.ram.bytes, ramDataRanges(this.ram), parts, opts.onProgress);
      const pausedMs = performance.now() - t0;
      if (thenExit) void this.finish(ExitCode.REBOOT, `suspended to ${file}`);
      return { file, ramFile, ramBytes: this.ram.size, pausedMs, totalMs: performance.now() - t0 };
    } finally {
      this.saving = false;
      for (const d of this.pciDevs) d.fn.unquiesce?.();
      this.releaseVcpus();
    }
  }

  private msrList: number[] | undefined;

  private collectState(): { config: Record<string, string>; vm: StateWriter; vcpus: StateWriter[]; devices: StateWriter } {
    this.msrList ??= readableMsrs(this.vcpuFds[0]!, this.kvm.msrIndexList());
    const vm = new StateWriter();
    saveVmState(vm, this.vm);
    const vcpus = this.vcpuFds.map((v) => { const w = new StateWriter(); saveVcpu(w, v, this.msrList!); return w; });
    const dev = new StateWriter();
    dev.u32('pciAddress', this.pci.address);
    dev.arr('pci', this.pciDevs, (w, d) => {
      w.str('slot', d.key).str('device', d.name);
      w.obj_('config', (cw) => d.fn.config.saveState!(cw));
      if (d.fn.saveState) w.obj_('state', (sw) => d.fn.saveState!(sw));
    });
    dev.arr('uarts', [...this.uarts], (w, [name, u]) => { w.str('name', name); w.obj_('state', (sw) => u.saveState(sw)); });
    dev.obj_('rtc', (w) => this.rtc!.saveState(w));
    dev.obj_('pm', (w) => this.pm!.saveState(w));
    return { config: Object.fromEntries(this.config.entries()), vm, vcpus, devices: dev };
  }

  /** Put the snapshot's state into this freshly built VM (every field checked; SnapshotError on bad input). */
  private restoreFrom(s: LoadedSnapshot): void {
    const applyVm = readVmState(s.vm, this.vm);
    const applyVcpus = s.vcpus.map((r, i) => readVcpu(r, this.vcpuFds[i]!));
    const d = s.devices;
    const pciAddress = d.u32('pciAddress');
    const pci = d.arr('pci', 256);
    const byKey = new Map(this.pciDevs.map((x) => [x.key, x]));
    if (pci.length !== this.pciDevs.length) d.fail('pci', `${pci.length} PCI functions, this VM has ${this.pciDevs.length}`);
    const pciStates = pci.map((r) => {
      const key = r.str('slot', 32), name = r.str('device', 64);
      const dev = byKey.get(key);
      if (!dev || dev.name !== name) return r.fail('slot', `${name} at ${key} is not in this VM`);
      return { r, dev };
    });
    const uarts = d.arr('uarts', 4);
    if (uarts.length !== this.uarts.size) d.fail('uarts', `${uarts.length} UARTs, this VM has ${this.uarts.size}`);
    const uartStates = uarts.map((r) => {
      const name = r.str('name', 8);
      const u = this.uarts.get(name);
      if (!u) return r.fail('name', `${name} is not in this VM`);
      return { r, u };
    });
    // KVM first (irqchip, then vCPUs), then the devices, which re-assert their interrupt lines.
    applyVm();
    applyVcpus.forEach((apply, i) => {
      try { apply(); } catch (e) { throw new SnapshotError(`vCPU ${i}: ${(e as Error).message}`); }
    });
    this.pci.address = pciAddress;
    for (const { r, dev } of pciStates) {
      dev.fn.config.restoreState!(r.obj('config'));
      if (dev.fn.restoreState) dev.fn.restoreState(r.obj('state'));
    }
    for (const { r, u } of uartStates) u.restoreState(r.obj('state'));
    this.rtc!.restoreState(d.obj('rtc'));
    this.pm!.restoreState(d.obj('pm'));
    for (const { dev } of pciStates) dev.fn.afterRestore?.();
  }

  forceReset(): void { void this.finish(ExitCode.REBOOT, 'reset by the controller'); }
  forcePoweroff(): void { void this.finish(ExitCode.POWEROFF, 'powered off by the controller'); }
  destroy(): void { void this.finish(ExitCode.ERROR, 'destroyed by the controller'); }

  get exitStats() {
    const s = this.exitServer;
    if (!s) return undefined;
    const top = s.byAddress ? [...s.byAddress].sort((a, b) => b[1] - a[1]).slice(0, 12) : undefined;
    const irqfd = this.router ? { irqfds: this.irqfds, routingTables: this.router.tablesSet } : undefined;
    return { ...s.stats, irqfd, top };
  }

  /** End the VM with `code`; idempotent. */
  async finish(code: ExitCode, message?: string): Promise<void> {
    if (this.ending) return;
    this.ending = true;
    if (message && code === ExitCode.ERROR) this.errorMessage = message;
    else if (message) log('info', message);
    // The exit server keeps serving until every vCPU has left its mailbox.
    const clean = await Promise.all(this.vcpus.map((v) => v.stop()));
    if (clean.includes(false)) log('debug', 'a vCPU did not leave KVM_RUN when kicked (halted with interrupts off?)');
    this.exitServer?.stop();
    this.poller?.stop();
    for (const f of this.pci.functions()) {
      try { f.destroy?.(); } catch (e) { log('warn', `closing a device: ${(e as Error).message}`); }
    }
    await this.closeBackends();
    this.resolveFinished(code);
  }

  private async closeBackends(): Promise<void> {
    await Promise.all(this.backends.map(async (b) => { try { await b.close(); } catch { /* closing anyway */ } }));
  }
}

type BootSource =
  | { kind: 'linux'; kernel: Buffer; initrd?: Buffer; cmdline: string }
  | { kind: 'raw'; file: string; image: Buffer; address: number };

function bootSource(c: ConfigTree): BootSource {
  const kernel = c.get('boot.kernel');
  const raw = c.get('boot.raw');
  if (kernel) {
    const image = readBootFile(kernel, 'kernel');
    if (!isLinuxKernel(image)) throw new UserError(`kernel ${kernel} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)`);
    const initrd = c.get('boot.initrd');
    return { kind: 'linux', kernel: image, initrd: initrd ? readBootFile(initrd, 'initrd') : undefined, cmdline: c.get('boot.cmdline') ?? 'console=ttyS0' };
  }
  if (raw) {
    const a = c.get('boot.raw.address') ?? '0x1000';
    const address = Number(a);
    if (!Number.isSafeInteger(address) || address < 0 || address >= 0x100000) throw new UserError(`boot.raw.address '${a}' must be below 1 MiB`);
    return { kind: 'raw', file: raw, image: readBootFile(raw, 'boot image'), address };
  }
  throw new UserError('nothing to boot: give -o boot.kernel=PATH (a Linux bzImage or vmlinux); tshyve has no firmware boot yet');
}

function readBootFile(path: string, what: string): Buffer {
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new UserError(`${what} ${path} is not a regular file`);
    return readFileSync(path);
  } catch (e) {
    if (e instanceof UserError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(`cannot read ${what} ${path}: ${code === 'ENOENT' ? 'no such file' : code ?? String(e)}`);
  }
}

/** bzImage setup header magic, or an ELF64 image. */
function isLinuxKernel(b: Buffer): boolean {
  const bz = b.length > 0x206 && b.readUInt32LE(0x202) === 0x53726448;
  const elf = b.length > 64 && b.readUInt32BE(0) === 0x7f454c46 && b[4] === 2;
  return bz || elf;
}

function toKvmSeg(s: BootSegment): KvmSegment {
  return { ...s, base: BigInt(s.base), unusable: 0 };
}

function applyBootState(v: VcpuFd, st: BootCpuState): void {
  const s: Sregs = v.getSregs();
  s.cs = toKvmSeg(st.cs);
  for (const n of ['ds', 'es', 'fs', 'gs', 'ss'] as const) s[n] = toKvmSeg(st.ds);
  if (st.tr) s.tr = toKvmSeg(st.tr);
  s.gdt = { base: BigInt(st.gdt.base), limit: st.gdt.limit };
  s.idt = { base: BigInt(st.idt.base), limit: st.idt.limit };
  s.cr0 = BigInt(st.cr0); s.cr3 = BigInt(st.cr3); s.cr4 = BigInt(st.cr4); s.efer = BigInt(st.efer);
  v.setSregs(s);
  const r = v.getRegs();
  for (const k of Object.keys(r) as (keyof typeof r)[]) r[k] = 0n;
  r.rip = BigInt(st.rip); r.rsi = BigInt(st.rsi); r.rsp = BigInt(st.rsp); r.rbp = BigInt(st.rsp); r.rflags = BigInt(st.rflags);
  v.setRegs(r);
}
