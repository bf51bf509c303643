/**
 * Where the interrupt controllers live (x86.irqchip), and the device
 * thread's side of user mode: the local APIC pages the vCPU threads serve,
 * the IOAPIC on the MMIO bus, an absent 8259 PIC, and MSIs and GSI lines
 * into them. User mode exists for nested hosts whose outer hypervisor
 * cannot take a guest's CR8 writes under KVM's in-kernel local APIC
 * (lab/firmware-notes.md): without it, KVM intercepts them.
 */
import type { Bus } from '../bus/bus.js';
import type { ConfigTree } from '../config/tree.js';
import { UserError } from '../errors.js';
import { log } from '../log.js';
import { Ioapic } from '../x86/apic/ioapic.js';
import { resetLapicPage } from '../x86/apic/lapic.js';
import { newLapicPage, REG } from '../x86/apic/lapic-page.js';
import { ApicRouter } from '../x86/apic/router.js';
import { IOAPIC_ADDR, IOAPIC_SIZE } from '../x86/layout.js';
import { apicKicker } from '../vcpu/apic-kick.js';
import type { VcpuWorkerData } from '../vcpu/mailbox.js';
import type { HostReport } from './host-check.js';

export type IrqchipMode = 'kernel' | 'user';

/**
 * x86.irqchip: kernel, user, or auto (user for firmware on a virtualized
 * host CPU); `why`: the line auto's choice is logged with once the VM is built.
 */
export function irqchipMode(config: ConfigTree, host: Pick<HostReport, 'hypervisor'>, firmware: boolean): { mode: IrqchipMode; why?: string } {
  const v = config.get('x86.irqchip') ?? 'auto';
  if (v === 'kernel' || v === 'user') return { mode: v };
  if (v !== 'auto') throw new UserError(`invalid value for x86.irqchip: '${v}' (expected kernel, user or auto)`);
  if (firmware && host.hypervisor) {
    return {
      mode: 'user',
      why: 'interrupt controllers in user space (x86.irqchip=auto): this host CPU is itself virtualized (hypervisor flag) and the guest '
        + 'runs firmware, whose CR8 writes under KVM\'s in-kernel local APIC can crash a nested host; x86.irqchip=kernel overrides',
    };
  }
  log('debug', `interrupt controllers in KVM (x86.irqchip=auto): ${firmware ? 'the host CPU is not virtualized' : 'no firmware (bootrom)'}`);
  return { mode: 'kernel' };
}

/** The 8259 PIC's ports answer 0: Linux's probe (0xff written to the mask, read back) finds no PIC. */
const absentPic = { read: () => 0, write: () => {} };

export class UserIrqchip {
  readonly pages: SharedArrayBuffer[];
  readonly router: ApicRouter;
  readonly ioapic: Ioapic;

  constructor(private readonly vcpuFds: number[], runSize: number, mmio: Bus, pio: Bus) {
    const pages = vcpuFds.map((_, i) => {
      const w = newLapicPage();
      resetLapicPage(w, i);
      // as a BIOS leaves them (and as setupVcpus sets KVM's): LINT0 ExtINT, LINT1 NMI
      Atomics.store(w, REG.LVT_LINT0 >> 2, 0x700);
      Atomics.store(w, REG.LVT_LINT1 >> 2, 0x400);
      return w;
    });
    this.pages = pages.map((w) => w.buffer as SharedArrayBuffer);
    this.router = new ApicRouter(pages, apicKicker(pages, vcpuFds, runSize, -1));
    this.ioapic = new Ioapic(this.router);
    mmio.register(IOAPIC_ADDR, IOAPIC_SIZE, this.ioapic, 'ioapic');
    pio.register(0x20, 2, absentPic, 'pic-master');
    pio.register(0xa0, 2, absentPic, 'pic-slave');
  }

  /** What each vCPU thread is given (VcpuWorkerData.apic). */
  get workerData(): NonNullable<VcpuWorkerData['apic']> { return { pages: this.pages, vcpuFds: this.vcpuFds }; }
}
