/**
 * The virtio-blk I/O thread's entry (one thread per disk, started by
 * offload.ts): runIoThread with a VirtioBlk that opens the disk again with
 * the main thread's settings, and the request-path warm-up (warm-up.ts).
 * TSHYVE_BLK_WARMUP=N sets the warm-up's requests (0 turns it off);
 * TSHYVE_BLK_WARMUP_LOG=1 logs how long it took.
 */
import { runIoThread } from '../io-thread/runtime.js';
import { VirtioBlk, type VirtioBlkOptions } from './device.js';
import { warmUpBlkRequestPath } from './warm-up.js';

/** VirtioBlk's options as the worker gets them (structured-cloned: no backend object, no callback). */
export type BlkIoThreadInit = Omit<VirtioBlkOptions, 'backend' | 'onError'>;

/** Requests the I/O thread serves on scratch memory first. */
const WARMUP_REQUESTS = Math.max(0, Number(process.env.TSHYVE_BLK_WARMUP ?? 512) || 0);

runIoThread<BlkIoThreadInit>({
  create: (init, onError) => new VirtioBlk({ ...init, onError }),
  ...(WARMUP_REQUESTS > 0 && {
    warmUp: (_init, interrupt, stop) => {
      const w = warmUpBlkRequestPath(WARMUP_REQUESTS, interrupt, stop);
      return process.env.TSHYVE_BLK_WARMUP_LOG
        ? `warm-up: ${w.requests} requests in ${w.ms.toFixed(0)} ms${w.stopped ? ' (stopped: the guest wants the disk)' : ''}`
        : undefined;
    },
  }),
});
