/**
 * The table of device models: importing this registers every PCI device
 * emulation by name, so `-s N,NAME` and `pci.B.S.F.device=NAME` find it.
 */
import '../pci/bridges.js';
import './virtio-rnd.js';
import './virtio-blk/pci.js';
import './virtio-console/pci.js';
