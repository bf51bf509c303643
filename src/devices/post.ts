/**
 * Port 0x80, the POST code port (and the ISA DMA page registers' neighbour):
 * firmware and Linux write it for delays and progress codes. Writes are
 * harmless; claiming the port keeps them out of the unhandled-port log.
 */
import { registerPlatformDevice } from './platform.js';

registerPlatformDevice({
  name: 'post', kind: 'post', node: 'post',
  create: (ctx) => {
    ctx.pio.register(0x80, 1, { read: () => 0xff, write: () => {} }, 'post');
    return { saveState: () => {}, restoreState: () => {} };
  },
});
