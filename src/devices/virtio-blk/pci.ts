/**
 * `-s N,virtio-blk,PATH[,ro][,format=raw|qcow2][,sectorsize=L/P][,nocache][,direct][,nodelete][,ser=ID][,legacy][,worker=false]`
 * on virtio-pci. In a VM the queue is served by an I/O thread per disk
 * (offload.ts, io-thread.ts); `worker=false` (or `-o virtio.workers=false`) keeps it on
 * the main thread.
 */
import { registerPciDevice } from '../../pci/device.js';
import { diskCheckpointHook } from '../block/index.js';
import { VirtioPci, virtioPciOptions } from '../../virtio/pci/transport.js';
import { VirtioBlk } from './device.js';
import { parseVirtioBlkOptions } from './index.js';
import { virtioBlkInfo } from './info.js';
import { offloadVirtioBlk } from './offload.js';

registerPciDevice({
  ...virtioBlkInfo,
  create: (ctx, node, bdf) => {
    const onError = (m: string) => ctx.guestError('virtio-blk', m);
    const opts = parseVirtioBlkOptions(node);
    const useWorker = ctx.guestRam !== undefined && ctx.bindIoeventfd !== undefined && node.getBool('worker', true);
    if (ctx.storageGate && !useWorker) throw new Error('virtio-blk: built before its storage gate without an I/O thread');
    // with a worker, the worker's instance of the image does the I/O; this one serves the config
    const dev = new VirtioBlk({ ...opts, onError, passive: useWorker });
    const thread = useWorker ? offloadVirtioBlk(dev, opts, ctx.guestRam!, onError, `blk-io@${bdf.slot}`, ctx.storageGate) : undefined;
    const model = thread ?? dev;
    const fn = new VirtioPci(ctx, model, bdf, `virtio-blk@${bdf.slot}`, virtioPciOptions(node));
    fn.onDestroy = () => model.destroy();
    fn.disk = diskCheckpointHook(dev, thread);
    return fn;
  },
});
