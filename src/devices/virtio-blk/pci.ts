/** `-s N,virtio-blk,PATH[,ro][,sectorsize=L/P][,nocache][,direct][,nodelete][,ser=ID][,legacy]` on virtio-pci. */
import { registerPciDevice } from '../../pci/device.js';
import { VirtioPci, virtioPciOptions } from '../../pci/virtio-pci.js';
import { VirtioBlk } from './device.js';
import { parseVirtioBlkOptions, virtioBlkLegacyConfig } from './index.js';

registerPciDevice({
  name: 'virtio-blk',
  legacyConfig: virtioBlkLegacyConfig,
  create: (ctx, node, bdf) => {
    const dev = new VirtioBlk({ ...parseVirtioBlkOptions(node), onError: (m) => ctx.guestError('virtio-blk', m) });
    const fn = new VirtioPci(ctx, dev, bdf, `virtio-blk@${bdf.slot}`, virtioPciOptions(node));
    fn.onDestroy = () => dev.destroy();
    return fn;
  },
});
