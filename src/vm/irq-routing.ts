/**
 * A VM's eventfd plumbing between KVM and the devices: ioeventfds (guest
 * writes that wake a device without a vCPU exit to user space), irqfds and
 * the MSI routes they follow (an interrupt is an eventfd write).
 */
import { CAP, type Kvm, type Vm } from '../kvm/kvm.js';
import { createEventfd, signalEventfd } from '../host/eventfd.js';
import { EventfdPoller } from '../host/eventfd-poller.js';
import { libc } from '../host/libc.js';
import type { ConfigTree } from '../config/tree.js';
import { log } from '../log.js';
import { MsiRouter, type MsiVector } from './msi-router.js';

export interface IoeventfdOptions { pio?: boolean; datamatch?: number }

export class IrqRouting {
  private poller: EventfdPoller | undefined;
  private router: MsiRouter | undefined | false;
  /** irqfds made, for exitStats */
  private irqfds = 0;
  /** queue notifications that came through ioeventfds to this thread (no exit): activity for the halt check */
  notifies = 0;

  /** `inKernelIrqchip` false (x86.irqchip=user): KVM has no irqchip to route to, so no irqfds */
  constructor(private readonly kvm: Kvm, private readonly vm: Vm, private readonly config: ConfigTree, private readonly inKernelIrqchip = true) {}

  /**
   * Bind eventfd `fd` as a KVM ioeventfd for writes of `len` bytes at `addr`.
   * `onRemove` runs after it is unbound (it closes an fd made for it).
   * Undefined when the host cannot.
   */
  bindIoeventfd(fd: number, addr: number, len: number, opts: IoeventfdOptions = {}, onRemove?: () => void): { remove(): void } | undefined {
    const kopts = { pio: opts.pio, datamatch: opts.datamatch === undefined ? undefined : BigInt(opts.datamatch) };
    try {
      this.vm.ioeventfd(fd, BigInt(addr), len, kopts);
    } catch (e) {
      log('debug', `no ioeventfd at 0x${addr.toString(16)}: ${(e as Error).message}`);
      return undefined;
    }
    return {
      remove: () => {
        try { this.vm.ioeventfd(fd, BigInt(addr), len, { ...kopts, deassign: true }); } catch { /* already gone */ }
        onRemove?.();
      },
    };
  }

  /** An ioeventfd this thread polls: `onWrite` runs here on each guest write. */
  addIoeventfd(addr: number, len: number, onWrite: () => void, opts: IoeventfdOptions = {}): { remove(): void } | undefined {
    this.poller ??= new EventfdPoller();
    const efd = this.poller.add(() => { this.notifies++; onWrite(); });
    const bound = this.bindIoeventfd(efd.fd, addr, len, opts, () => efd.close());
    if (!bound) efd.close();
    return bound;
  }

  /** The VM's MSI router when irqfds can be used (host caps and `virtio.irqfd`), else undefined. */
  irqfdRouter(): MsiRouter | undefined {
    if (this.router === undefined) {
      const gsis = this.kvm.checkExtension(CAP.IRQ_ROUTING);
      const ok = this.inKernelIrqchip && this.config.getBool('virtio.irqfd', true) && this.kvm.checkExtension(CAP.IRQFD) > 0 && gsis > 0;
      this.router = ok ? new MsiRouter((t) => this.vm.setGsiRouting(t), gsis) : false;
      if (!ok) log('debug', 'MSI through KVM_SIGNAL_MSI (no irqfd)');
    }
    return this.router || undefined;
  }

  /** An MSI vector of its own: a GSI, its irqfd and its route. */
  msiVector(): MsiVector | undefined {
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

  /** irqfd counts for exitStats, when irqfds are in use. */
  get stats(): { irqfds: number; routingTables: number } | undefined {
    return this.router ? { irqfds: this.irqfds, routingTables: this.router.tablesSet } : undefined;
  }

  /** Stop polling (VM teardown). */
  stop(): void { this.poller?.stop(); }
}
