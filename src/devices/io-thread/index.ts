/**
 * One I/O thread per device, for any virtio device model: host.ts on the
 * main thread (IoThreadHost, a VirtioDevice with a VirtioOffload), runtime.ts
 * on the worker (runIoThread, called by the device's entry module).
 */
export { IoThreadHost, type IoThreadHostOptions } from './host.js';
export type { IoThreadModel, SharedGuestRam } from './protocol.js';
