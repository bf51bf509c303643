/**
 * The table of network backends: importing this registers every backend
 * type by name, on the main thread (pci.ts) and on the I/O thread
 * (io-thread.ts) alike. One line per backend.
 */
import './tap.js';
import './passt.js';
