/**
 * Warm up the virtio-blk request path before the guest's first request.
 *
 * V8 optimizes a function after it has run for a while. The descriptor walk
 * loops and is optimized within a request or two, but the code that runs
 * once per request (queueNotify, popChain, handle, execute, pushUsed, the
 * backend's readv/writev) needs some hundreds of requests: a guest's first
 * hundreds of megabytes go through V8's interpreter and baseline tiers,
 * several times slower (bench/README.md). Under TCG that is most of a
 * benchmark boot; on any host it is the first seconds of a disk.
 *
 * So the I/O thread first serves small requests of its own: the same code
 * (VirtioBlk, Virtqueue, GuestMemory, FileBlockBackend, IoVecs) over a
 * scratch RAM standing in for guest RAM and a scratch memfd for the disk, with
 * the chain shapes Linux sends (indirect tables, EVENT_IDX, reads and writes,
 * a few long chains). Nothing of the guest or its disk is touched. Small
 * requests cost little in the slow tiers, and a function's progress towards
 * optimization counts its own runs, not the size of the I/O.
 */
import { setFlagsFromString } from 'node:v8';
import { createGuestRam } from '../../memory/ram.js';
import { libc, MFD_CLOEXEC } from '../../host/libc.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import type { VirtioInterrupt } from '../../virtio/device.js';
import { SplitQueueDriver } from '../../virtio/driver-queue.js';
import { VirtioBlk, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from './device.js';
import { FileBlockBackend } from '../block/index.js';
import { requestHeader } from './request.js';

/** Scratch "guest RAM" and "disk" sizes: room for the rings and the longest chain below. */
const RAM_BYTES = 4 << 20;
const DISK_BYTES = 2 << 20;
const PAGE = 4096;

export interface WarmUpResult { requests: number; ms: number; stopped: boolean }

/**
 * Serve `requests` requests on scratch memory through a VirtioBlk like the
 * guest's. `interrupt` should be the object the real device will use (so the
 * call sites see it), in a state where signalling does nothing. `stop` is
 * asked every few requests: true ends the warm-up early (the guest wants the
 * disk; its own requests finish the job). Throws when the host refuses a
 * memfd; the caller goes on without warming up.
 */
export function warmUpBlkRequestPath(requests: number, interrupt: VirtioInterrupt, stop: () => boolean = () => false): WarmUpResult {
  const t0 = performance.now();
  const restore = eagerTiering();
  try {
    const r = serve(requests, interrupt, stop);
    return { ...r, ms: performance.now() - t0 };
  } finally {
    restore();
  }
}

/**
 * V8's tiering thresholds, lowered while the warm-up runs so that a few
 * hundred requests are enough, then set back. They are process-wide, so the
 * window is kept short; a threshold the user set (node's command line,
 * NODE_OPTIONS, TSHYVE_V8_FLAGS) is left alone, and so is a V8 whose
 * defaults are not the ones below. Returns the function that restores them.
 */
function eagerTiering(): () => void {
  if (!process.versions.v8.startsWith(DEFAULTS_FOR_V8)) return () => {};
  const given = [...process.execArgv, process.env.NODE_OPTIONS ?? '', process.env.TSHYVE_V8_FLAGS ?? ''].join(' ');
  const set = (flags: [string, number][]) => {
    const s = flags.filter(([name]) => !given.includes(`--${name}`) && !given.includes(`--${name.replace(/-/g, '_')}`))
      .map(([name, v]) => `--${name}=${v}`).join(' ');
    if (s) setFlagsFromString(s);
  };
  set(EAGER);
  return () => set(DEFAULTS);
}

/** During the warm-up: a tier-up check every 2 KB of bytecode run (not 66 KB), and 10 calls after a type change (not 500). */
const EAGER: [string, number][] = [['interrupt-budget', 2048], ['minimum-invocations-after-ic-update', 10]];
/** Node 20's V8 (11.3) defaults, from `node --v8-options`. */
const DEFAULTS_FOR_V8 = '11.3.';
const DEFAULTS: [string, number][] = [['interrupt-budget', 67584], ['minimum-invocations-after-ic-update', 500]];

function serve(requests: number, interrupt: VirtioInterrupt, stop: () => boolean): { requests: number; stopped: boolean } {
  const ram = createGuestRam(RAM_BYTES, { hugePages: false });
  const diskFd = libc.memfdCreate('tshyve-blk-warmup-disk', MFD_CLOEXEC);
  let dev: VirtioBlk | undefined;
  let backend: FileBlockBackend | undefined;
  try {
    if (diskFd < 0 || libc.ftruncate(diskFd, DISK_BYTES) < 0) throw new Error('no scratch memfd for the warm-up');
    const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
    backend = FileBlockBackend.open({ path: `/proc/self/fd/${diskFd}`, label: 'virtio-blk warm-up' });
    dev = new VirtioBlk({ path: 'warm-up', backend });
    const drv = new SplitQueueDriver(mem, 256);
    const q = drv.makeQueue({ maxChainLen: dev.queueMaxChainLen(0) ?? 256, eventIdx: true, indirectDesc: true });
    dev.activate([q], mem, interrupt, dev.features);
    // The chains, built once and published again and again: 2 and 8 scattered
    // pages each way (the common case), and 254 pages (a 1 MiB request) each way.
    const chain = (type: number, pages: number, sector: number): number => {
      const data = new Array<number>(pages).fill(PAGE);
      return drv.addChain(type === VIRTIO_BLK_T_IN
        ? { readable: [requestHeader(type, sector)], writable: [...data, 1] }
        : { readable: [requestHeader(type, sector), ...data], writable: [1] }, { indirect: true, gap: 64, publish: false });
    };
    const small = [chain(VIRTIO_BLK_T_IN, 2, 0), chain(VIRTIO_BLK_T_OUT, 2, 16), chain(VIRTIO_BLK_T_IN, 8, 64), chain(VIRTIO_BLK_T_OUT, 8, 128)];
    const large = [chain(VIRTIO_BLK_T_IN, 254, 1024), chain(VIRTIO_BLK_T_OUT, 254, 1024)];
    // Mostly one request per notify, as a guest with one request in flight
    // sends; now and then a batch, and a long pair, so those branches have
    // been seen too.
    let done = 0, stopped = false;
    for (let round = 0; done < requests; round++) {
      if (round % 16 === 15 && stop()) { stopped = true; break; }
      const heads = round % 32 === 16 ? large : round % 8 === 4 ? small : [small[round % small.length]!];
      for (const h of heads) drv.publish(h);
      dev.queueNotify(0);
      q.needsNotification();
      done += heads.length;
    }
    if (q.error) throw q.error;
    return { requests: done, stopped };
  } finally {
    dev?.destroy();
    backend?.close(); // given to the device, so not closed by it
    if (diskFd >= 0) libc.close(diskFd);
    libc.munmap(ram.host, ram.size);
    ram.close();
  }
}
