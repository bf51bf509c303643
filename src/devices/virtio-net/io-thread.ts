/**
 * The virtio-net I/O thread's entry (one thread per interface, started by
 * pci.ts): runIoThread with a VirtioNet over the backend the main thread
 * opened (the same fd; backend.ts). The thread serves both queues and
 * waits on the backend's fd for frames to receive.
 */
import { runIoThread } from '../io-thread/runtime.js';
import { netBackendFactory, type NetBackendInit } from './backend.js';
import { VirtioNet } from './device.js';
import './backends.js';

/** What the worker builds its VirtioNet from (structured-cloned). */
export interface NetIoThreadInit {
  mac: Uint8Array;
  mtu?: number;
  counters: SharedArrayBuffer;
  backend: NetBackendInit;
}

runIoThread<NetIoThreadInit>({
  create: (init, onError) => new VirtioNet({
    mac: init.mac, ...(init.mtu !== undefined && { mtu: init.mtu }), counters: init.counters, onError,
    backend: netBackendFactory(init.backend.type).fromInit(init.backend),
  }),
});
