/**
 * Level 2: the irqfd ioctls on this host's /dev/kvm. A VM with the in-kernel
 * irqchip takes a GSI routing table (the default irqchip routes plus an MSI
 * route), binds an eventfd to the MSI's GSI, accepts a signal through it and
 * unbinds it. What the guest would see is the lab's job (its virtio tests).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { kvmUnavailable } from './helpers.js';
import { Kvm, CAP } from '../src/kvm/kvm.js';
import { createEventfd, signalEventfd } from '../src/host/eventfd.js';
import { defaultIrqchipRoutes } from '../src/kvm/abi.js';
import { libc } from '../src/host/libc.js';
import { MsiRouter } from '../src/vm/msi-router.js';

function skipReason(): string | undefined {
  const no = kvmUnavailable();
  if (no) return no;
  const k = Kvm.open();
  try {
    if (k.checkExtension(CAP.IRQFD) === 0) return 'this host\'s KVM lacks KVM_CAP_IRQFD';
    if (k.checkExtension(CAP.IRQ_ROUTING) === 0) return 'this host\'s KVM lacks KVM_CAP_IRQ_ROUTING';
  } finally {
    k.close();
  }
  return undefined;
}

test('KVM_SET_GSI_ROUTING with the default routes and MSI routes, KVM_IRQFD assign/signal/deassign', { skip: skipReason() }, () => {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const fd = createEventfd();
  try {
    vm.createIrqchip();
    const router = new MsiRouter((t) => vm.setGsiRouting(t), kvm.checkExtension(CAP.IRQ_ROUTING));
    const gsi = router.alloc();
    assert.equal(gsi, 24);
    vm.irqfd(fd, gsi);
    assert.equal(router.setRoute(gsi, 0xfee00000n, 0x4030), true);
    assert.equal(router.setRoute(gsi, 0xfee00000n, 0x4031), true);
    assert.equal(router.tablesSet, 2);
    assert.equal(signalEventfd(fd), true, 'eventfd write accepted');
    vm.irqfd(fd, gsi, true);
    router.release(gsi);
    // the default table alone is also accepted (what the VM started with)
    assert.doesNotThrow(() => vm.setGsiRouting(defaultIrqchipRoutes()));
    // an MSI GSI beyond the host's limit is refused by KVM, not silently taken
    assert.throws(() => vm.setGsiRouting([{ gsi: 1 << 20, kind: 'msi', address: 0xfee00000n, data: 0 }]), /KVM_SET_GSI_ROUTING/);
  } finally {
    libc.close(fd);
    vm.close();
    kvm.close();
  }
});
