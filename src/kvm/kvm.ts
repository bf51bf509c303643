/**
 * Typed wrappers over /dev/kvm: the system, a VM and a vCPU. Each method is
 * one ioctl; failures throw KvmError with the errno. Nothing above this
 * layer builds an ioctl number or a KVM struct by hand.
 */
import { KvmError, HostError } from '../errors.js';
import {
  KVM, CAP, type CpuidEntry, type Regs, type Sregs, type MsrEntry, type GsiRoute, encodeGsiRouting,
  decodeCpuid, encodeCpuid, decodeRegs, encodeRegs, decodeSregs, encodeSregs, encodeMsrs, decodeMsrs,
} from './abi.js';
import { libc, errno, view, isMapFailed, EINTR, O_RDWR, O_CLOEXEC, PROT_READ, PROT_WRITE, MAP_SHARED } from '../host/libc.js';

function check(op: string, r: number): number {
  if (r < 0) throw new KvmError(op, errno());
  return r;
}

export class Kvm {
  private constructor(readonly fd: number) {}

  static open(path = '/dev/kvm'): Kvm {
    const fd = libc.open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      const e = errno();
      if (e === 2) throw new HostError(`${path} does not exist: KVM is not available on this host (load kvm-intel or kvm-amd, or use a machine with virtualization)`, 'ENOKVM');
      if (e === 13) throw new HostError(`no permission to open ${path}: run as root or add this user to the kvm group`, 'EACCES');
      throw new HostError(`cannot open ${path}: errno ${e}`);
    }
    const v = libc.ioctlInt(fd, KVM.GET_API_VERSION, 0);
    if (v !== 12) {
      libc.close(fd);
      throw new HostError(`${path} reports KVM API version ${v}, tshyve needs 12`);
    }
    return new Kvm(fd);
  }

  checkExtension(cap: number): number {
    return Math.max(0, libc.ioctlInt(this.fd, KVM.CHECK_EXTENSION, cap));
  }

  vcpuMmapSize(): number {
    return check('KVM_GET_VCPU_MMAP_SIZE', libc.ioctlInt(this.fd, KVM.GET_VCPU_MMAP_SIZE, 0));
  }

  supportedCpuid(): CpuidEntry[] {
    const max = 256;
    const b = Buffer.alloc(8 + max * 40);
    b.writeUInt32LE(max, 0);
    check('KVM_GET_SUPPORTED_CPUID', libc.ioctlPtr(this.fd, KVM.GET_SUPPORTED_CPUID, b));
    return decodeCpuid(b);
  }

  /** The MSRs KVM can save and restore for a vCPU (KVM_GET_MSR_INDEX_LIST). */
  msrIndexList(): number[] {
    const probe = Buffer.alloc(4);
    libc.ioctlPtr(this.fd, KVM.GET_MSR_INDEX_LIST, probe); // E2BIG, with the count filled in
    const n = probe.readUInt32LE(0);
    const b = Buffer.alloc(4 + n * 4);
    b.writeUInt32LE(n, 0);
    check('KVM_GET_MSR_INDEX_LIST', libc.ioctlPtr(this.fd, KVM.GET_MSR_INDEX_LIST, b));
    return Array.from({ length: b.readUInt32LE(0) }, (_, i) => b.readUInt32LE(4 + i * 4));
  }

  createVm(): Vm {
    // Creating a VM can take long enough for a signal (a child exiting) to interrupt it.
    let fd: number;
    do fd = libc.ioctlInt(this.fd, KVM.CREATE_VM, 0); while (fd < 0 && errno() === EINTR);
    return new Vm(this, check('KVM_CREATE_VM', fd));
  }

  close(): void { libc.close(this.fd); }
}

export class Vm {
  constructor(readonly kvm: Kvm, readonly fd: number) {}

  setUserMemoryRegion(slot: number, gpa: number, size: number, hostAddr: bigint, flags = 0): void {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(slot, 0); b.writeUInt32LE(flags, 4);
    b.writeBigUInt64LE(BigInt(gpa), 8); b.writeBigUInt64LE(BigInt(size), 16); b.writeBigUInt64LE(hostAddr, 24);
    check('KVM_SET_USER_MEMORY_REGION', libc.ioctlPtr(this.fd, KVM.SET_USER_MEMORY_REGION, b));
  }

  /**
   * The slot's pages written since the last call (one bit per page, in
   * `bitmap`, at least ceil(pages / 64) * 8 bytes), and KVM starts logging
   * them anew: the slot must have been registered with MEM_LOG_DIRTY_PAGES.
   */
  getDirtyLog(slot: number, bitmap: Buffer): void {
    const b = Buffer.alloc(16);
    b.writeUInt32LE(slot, 0);
    b.writeBigUInt64LE(libc.bufferAddress(bitmap), 8);
    check('KVM_GET_DIRTY_LOG', libc.ioctlPtr(this.fd, KVM.GET_DIRTY_LOG, b));
  }

  setTssAddr(addr: number): void { check('KVM_SET_TSS_ADDR', libc.ioctlInt(this.fd, KVM.SET_TSS_ADDR, addr)); }

  setIdentityMapAddr(addr: number): void {
    const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(addr));
    check('KVM_SET_IDENTITY_MAP_ADDR', libc.ioctlPtr(this.fd, KVM.SET_IDENTITY_MAP_ADDR, b));
  }

  createIrqchip(): void { check('KVM_CREATE_IRQCHIP', libc.ioctlInt(this.fd, KVM.CREATE_IRQCHIP, 0)); }

  createPit2(): void {
    const b = Buffer.alloc(64); b.writeUInt32LE(1, 0); // KVM_PIT_SPEAKER_DUMMY: port 0x61 handled in kernel
    check('KVM_CREATE_PIT2', libc.ioctlPtr(this.fd, KVM.CREATE_PIT2, b));
  }

  private readonly irqBuf = Buffer.alloc(8);
  irqLine(gsi: number, level: boolean): void {
    this.irqBuf.writeUInt32LE(gsi, 0); this.irqBuf.writeUInt32LE(level ? 1 : 0, 4);
    check('KVM_IRQ_LINE', libc.ioctlPtr(this.fd, KVM.IRQ_LINE, this.irqBuf));
  }

  private readonly msiBuf = Buffer.alloc(32);
  signalMsi(address: bigint, data: number): number {
    const b = this.msiBuf;
    b.writeUInt32LE(Number(address & 0xffffffffn), 0); b.writeUInt32LE(Number(address >> 32n), 4);
    b.writeUInt32LE(data >>> 0, 8); b.writeUInt32LE(0, 12);
    return libc.ioctlPtr(this.fd, KVM.SIGNAL_MSI, b);
  }

  /** Replace the whole GSI routing table (include the irqchip routes: see defaultIrqchipRoutes). */
  setGsiRouting(routes: readonly GsiRoute[]): void {
    check('KVM_SET_GSI_ROUTING', libc.ioctlPtr(this.fd, KVM.SET_GSI_ROUTING, encodeGsiRouting(routes)));
  }

  /** Bind eventfd `fd` to `gsi`: a write to it injects the GSI's route without a user-space exit. */
  irqfd(fd: number, gsi: number, deassign = false): void {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(fd, 0); b.writeUInt32LE(gsi, 4); b.writeUInt32LE(deassign ? 1 : 0, 8);
    check('KVM_IRQFD', libc.ioctlPtr(this.fd, KVM.IRQFD, b));
  }

  /** Register an eventfd signalled by guest writes to addr (PIO when pio). */
  ioeventfd(fd: number, addr: bigint, len: number, opts: { pio?: boolean; datamatch?: bigint; deassign?: boolean } = {}): void {
    const b = Buffer.alloc(64);
    let flags = 0;
    if (opts.datamatch !== undefined) { flags |= 1; b.writeBigUInt64LE(opts.datamatch, 0); }
    if (opts.pio) flags |= 2;
    if (opts.deassign) flags |= 4;
    b.writeBigUInt64LE(addr, 8); b.writeUInt32LE(len, 16); b.writeInt32LE(fd, 20); b.writeUInt32LE(flags, 24);
    check('KVM_IOEVENTFD', libc.ioctlPtr(this.fd, KVM.IOEVENTFD, b));
  }

  createVcpu(id: number): number {
    return check('KVM_CREATE_VCPU', libc.ioctlInt(this.fd, KVM.CREATE_VCPU, id));
  }

  /** Raw state blobs for save/restore of the in-kernel devices. */
  getIrqchip(chip: number): Buffer {
    const b = Buffer.alloc(520); b.writeUInt32LE(chip, 0);
    check('KVM_GET_IRQCHIP', libc.ioctlPtr(this.fd, KVM.GET_IRQCHIP, b));
    return b;
  }
  setIrqchip(b: Buffer): void { check('KVM_SET_IRQCHIP', libc.ioctlPtr(this.fd, KVM.SET_IRQCHIP, b)); }
  getPit2(): Buffer { const b = Buffer.alloc(112); check('KVM_GET_PIT2', libc.ioctlPtr(this.fd, KVM.GET_PIT2, b)); return b; }
  setPit2(b: Buffer): void { check('KVM_SET_PIT2', libc.ioctlPtr(this.fd, KVM.SET_PIT2, b)); }
  getClock(): Buffer { const b = Buffer.alloc(48); check('KVM_GET_CLOCK', libc.ioctlPtr(this.fd, KVM.GET_CLOCK, b)); return b; }
  setClock(b: Buffer): void { check('KVM_SET_CLOCK', libc.ioctlPtr(this.fd, KVM.SET_CLOCK, b)); }

  close(): void { libc.close(this.fd); }
}

/**
 * vCPU ioctls other than KVM_RUN (which the vCPU's own thread issues).
 * Usable from any thread of the process.
 */
export class VcpuFd {
  constructor(readonly fd: number) {}

  getRegs(): Regs { const b = Buffer.alloc(144); check('KVM_GET_REGS', libc.ioctlPtr(this.fd, KVM.GET_REGS, b)); return decodeRegs(b); }
  setRegs(r: Regs): void { check('KVM_SET_REGS', libc.ioctlPtr(this.fd, KVM.SET_REGS, encodeRegs(r))); }
  getSregs(): Sregs { const b = Buffer.alloc(312); check('KVM_GET_SREGS', libc.ioctlPtr(this.fd, KVM.GET_SREGS, b)); return decodeSregs(b); }
  setSregs(s: Sregs): void { check('KVM_SET_SREGS', libc.ioctlPtr(this.fd, KVM.SET_SREGS, encodeSregs(s))); }
  setCpuid(entries: CpuidEntry[]): void { check('KVM_SET_CPUID2', libc.ioctlPtr(this.fd, KVM.SET_CPUID2, encodeCpuid(entries))); }
  setMsrs(entries: MsrEntry[]): number {
    return check('KVM_SET_MSRS', libc.ioctlPtr(this.fd, KVM.SET_MSRS, encodeMsrs(entries)));
  }
  getMsrs(indexes: number[]): MsrEntry[] {
    const b = encodeMsrs(indexes.map((index) => ({ index, data: 0n })));
    const n = check('KVM_GET_MSRS', libc.ioctlPtr(this.fd, KVM.GET_MSRS, b));
    return decodeMsrs(b, n);
  }
  getFpu(): Buffer { const b = Buffer.alloc(416); check('KVM_GET_FPU', libc.ioctlPtr(this.fd, KVM.GET_FPU, b)); return b; }
  setFpu(b: Buffer): void { check('KVM_SET_FPU', libc.ioctlPtr(this.fd, KVM.SET_FPU, b)); }
  getLapic(): Buffer { const b = Buffer.alloc(1024); check('KVM_GET_LAPIC', libc.ioctlPtr(this.fd, KVM.GET_LAPIC, b)); return b; }
  setLapic(b: Buffer): void { check('KVM_SET_LAPIC', libc.ioctlPtr(this.fd, KVM.SET_LAPIC, b)); }
  getMpState(): number { const b = Buffer.alloc(4); check('KVM_GET_MP_STATE', libc.ioctlPtr(this.fd, KVM.GET_MP_STATE, b)); return b.readUInt32LE(0); }
  setMpState(s: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(s); check('KVM_SET_MP_STATE', libc.ioctlPtr(this.fd, KVM.SET_MP_STATE, b)); }
  getVcpuEvents(): Buffer { const b = Buffer.alloc(64); check('KVM_GET_VCPU_EVENTS', libc.ioctlPtr(this.fd, KVM.GET_VCPU_EVENTS, b)); return b; }
  setVcpuEvents(b: Buffer): void { check('KVM_SET_VCPU_EVENTS', libc.ioctlPtr(this.fd, KVM.SET_VCPU_EVENTS, b)); }
  getXsave(): Buffer { const b = Buffer.alloc(4096); check('KVM_GET_XSAVE', libc.ioctlPtr(this.fd, KVM.GET_XSAVE, b)); return b; }
  setXsave(b: Buffer): void { check('KVM_SET_XSAVE', libc.ioctlPtr(this.fd, KVM.SET_XSAVE, b)); }
  getXcrs(): Buffer { const b = Buffer.alloc(392); check('KVM_GET_XCRS', libc.ioctlPtr(this.fd, KVM.GET_XCRS, b)); return b; }
  setXcrs(b: Buffer): void { check('KVM_SET_XCRS', libc.ioctlPtr(this.fd, KVM.SET_XCRS, b)); }
  getDebugRegs(): Buffer { const b = Buffer.alloc(128); check('KVM_GET_DEBUGREGS', libc.ioctlPtr(this.fd, KVM.GET_DEBUGREGS, b)); return b; }
  setDebugRegs(b: Buffer): void { check('KVM_SET_DEBUGREGS', libc.ioctlPtr(this.fd, KVM.SET_DEBUGREGS, b)); }
  /** Queue external interrupt `vector` (no in-kernel irqchip); false when KVM still holds one. */
  interrupt(vector: number): boolean { const b = Buffer.alloc(4); b.writeUInt32LE(vector); return libc.ioctlPtr(this.fd, KVM.INTERRUPT, b) === 0; }
  nmi(): void { check('KVM_NMI', libc.ioctlInt(this.fd, KVM.NMI, 0)); }
  /** Tell a kvmclock guest it was paused, so its watchdogs do not call the gap a lockup. */
  kvmclockCtrl(): boolean { return libc.ioctlInt(this.fd, KVM.KVMCLOCK_CTRL, 0) === 0; }
}

/** Map a vCPU's struct kvm_run. */
export function mapKvmRun(vcpuFd: number, size: number): DataView {
  const p = libc.mmap(null, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpuFd, 0);
  if (isMapFailed(p)) throw new KvmError('mmap kvm_run', errno());
  return new DataView(view(p, size));
}

export { CAP };
