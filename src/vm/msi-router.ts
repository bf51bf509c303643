/**
 * MSI delivery through KVM irqfds: each MSI-X vector that wants one gets a
 * GSI above the IOAPIC pins, an MSI route for it in the VM's GSI routing
 * table, and an eventfd bound to that GSI. Signalling the vector is then an
 * 8-byte write to the eventfd, from any thread, with no ioctl.
 *
 * KVM_SET_GSI_ROUTING replaces the whole table, so the router keeps it: the
 * kernel's default irqchip routes followed by every MSI route, and sets it
 * again only when a route actually changes (the guest reprogrammed a
 * vector), never per interrupt.
 */
import { defaultIrqchipRoutes, IOAPIC_PINS, type GsiRoute } from '../kvm/abi.js';

import type { MsiVector } from '../pci/msi.js';

export type { MsiVector };

export class MsiRouter {
  private readonly routes = new Map<number, { address: bigint; data: number }>();
  private readonly freeGsis: number[] = [];
  private next: number;
  /** KVM_SET_GSI_ROUTING calls made, for tests and stats */
  tablesSet = 0;

  /** `apply` sets the full table (Vm.setGsiRouting); `limit` is KVM_CAP_IRQ_ROUTING's GSI count. */
  constructor(private readonly apply: (routes: readonly GsiRoute[]) => void, private readonly limit = 1024, base = IOAPIC_PINS) {
    this.next = base;
  }

  /** A free GSI for an MSI route (no route until setRoute). */
  alloc(): number {
    const g = this.freeGsis.pop();
    if (g !== undefined) return g;
    if (this.next >= this.limit) throw new Error(`no free GSI for an MSI route (KVM allows ${this.limit})`);
    return this.next++;
  }

  /** Give a GSI back, dropping its route. */
  release(gsi: number): void {
    if (this.routes.delete(gsi)) this.commit();
    this.freeGsis.push(gsi);
  }

  /** Route `gsi` to an MSI; returns whether the table had to be set. */
  setRoute(gsi: number, address: bigint, data: number): boolean {
    const cur = this.routes.get(gsi);
    const d = data >>> 0;
    if (cur && cur.address === address && cur.data === d) return false;
    this.routes.set(gsi, { address, data: d });
    this.commit();
    return true;
  }

  /** The table as it is set in KVM: default irqchip routes, then MSI routes by GSI. */
  table(): GsiRoute[] {
    const msi: GsiRoute[] = [...this.routes].sort((a, b) => a[0] - b[0])
      .map(([gsi, r]) => ({ gsi, kind: 'msi', address: r.address, data: r.data }));
    return [...defaultIrqchipRoutes(), ...msi];
  }

  private commit(): void {
    this.apply(this.table());
    this.tablesSet++;
  }
}
