/**
 * The table of device models: importing this registers every PCI device
 * emulation by name, so `-s N,NAME` and `pci.B.S.F.device=NAME` find it,
 * and every platform device, so `-l NAME,...` and the VM builder do.
 * The virtio and NVMe models are registered lazily (pci/device.ts:
 * LazyPciDevice): a VM imports only those it uses.
 */
import '../pci/bridges.js';
import { registerPciDevice } from '../pci/device.js';
import { virtioBlkInfo } from './virtio-blk/info.js';
import { virtioConsoleInfo } from './virtio-console/config.js';
import { virtioNetInfo } from './virtio-net/options.js';
import { nvmeInfo } from './nvme/options.js';
// Platform (LPC/ISA) devices, in the order they are built and saved.
import './uart16550.js';
import './rtc.js';
import './acpi-pm.js';
import './post.js';
import './firmware.js';
import './fw-cfg/index.js';

registerPciDevice({ name: 'virtio-rnd', load: () => import('./virtio-rnd.js') });
registerPciDevice({ ...virtioBlkInfo, load: () => import('./virtio-blk/pci.js') });
registerPciDevice({ ...virtioConsoleInfo, load: () => import('./virtio-console/pci.js') });
registerPciDevice({ ...virtioNetInfo, load: () => import('./virtio-net/pci.js') });
registerPciDevice({ ...nvmeInfo, load: () => import('./nvme/pci.js') });
