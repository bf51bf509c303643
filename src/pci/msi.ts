/** What a PCI device needs of the VM for MSI delivery through KVM irqfds (the VM's MsiRouter makes them). */

/** One MSI-X vector's irqfd. */
export interface MsiVector {
  readonly gsi: number;
  /** the eventfd bound to the GSI (a worker may write it directly) */
  readonly fd: number;
  /** Point the GSI at this MSI message (sets the routing table only if it changed). */
  route(address: bigint, data: number): void;
  /** Inject the routed MSI. */
  signal(): void;
  close(): void;
}
