/**
 * `-s N,virtio-net,BACKEND[,mac=xx:xx:xx:xx:xx:xx][,mtu=N][,hostfwd=...]` on
 * virtio-pci (options.ts). The backend is opened here, at create time, so a
 * missing tap is one line at start-up; both queues are served by an I/O
 * thread of the interface's own (io-thread.ts), which polls the backend's
 * fd. The main thread's VirtioNet serves the config space and keeps the
 * MAC for snapshots; a restore opens the backend again by name and the
 * worker sets the tap's offloads from the restored features.
 */
import { UserError } from '../../errors.js';
import { registerPciDevice } from '../../pci/device.js';
import { VirtioPci } from '../../virtio/pci/transport.js';
import { IoThreadHost } from '../io-thread/index.js';
import { netBackendFactory } from './backend.js';
import './backends.js';
import { NET_COUNTERS, VirtioNet } from './device.js';
import type { NetIoThreadInit } from './io-thread.js';
import { parseNetOptions, virtioNetInfo } from './options.js';

registerPciDevice({
  ...virtioNetInfo,
  create: (ctx, node, bdf) => {
    const where = (k: string): string => (node.path ? `${node.path}.${k}` : k);
    const vmName = ctx.vmName ?? 'vm';
    const opts = parseNetOptions(node, vmName, bdf);
    const factory = netBackendFactory(opts.backend, where('backend'));
    if (!ctx.guestRam) throw new UserError(`virtio-net: needs device I/O threads (not virtio.workers=false) for ${where('backend')}`);
    const backend = factory.open(node, { vmName });
    const counters = new SharedArrayBuffer(8 * NET_COUNTERS.length);
    const onError = (m: string) => ctx.guestError('virtio-net', m);
    const mtu = opts.mtu !== undefined ? { mtu: opts.mtu } : {};
    const inner = new VirtioNet({ mac: opts.mac, ...mtu, vnetHdr: backend.vnetHdr, counters });
    let host: IoThreadHost<NetIoThreadInit> | undefined;
    try {
      host = new IoThreadHost<NetIoThreadInit>(inner, {
        worker: new URL('./io-thread.js', import.meta.url),
        init: { mac: opts.mac, ...mtu, counters, backend: factory.init(backend) },
        ram: ctx.guestRam, label: 'virtio-net', threadName: `net-io@${bdf.slot}`, onError, mainThreadState: true,
      });
      const fn = new VirtioPci(ctx, host, bdf, `virtio-net@${bdf.slot}`, {});
      const h = host;
      fn.onDestroy = () => { h.destroy(); backend.close(); };
      const prefix = node.path ? `${node.path}.` : '';
      fn.stats = () => Object.fromEntries(Object.entries(inner.stats()).map(([k, v]) => [`${prefix}${k}`, v]));
      return fn;
    } catch (e) {
      host?.destroy();
      backend.close();
      throw e;
    }
  },
});
