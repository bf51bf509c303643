/**
 * The table of device models: importing this registers every PCI device
 * emulation by name, so `-s N,NAME` and `pci.B.S.F.device=NAME` find it,
 * and every platform device, so `-l NAME,...` and the VM builder do.
 */
import '../pci/bridges.js';
import './virtio-rnd.js';
import './virtio-blk/pci.js';
import './virtio-console/pci.js';
import './virtio-net/pci.js';
import './nvme/pci.js';
// Platform (LPC/ISA) devices, in the order they are built and saved.
import './uart16550.js';
import './rtc.js';
import './acpi-pm.js';
import './post.js';
