/**
 * A virtio-net frame backend: where the device's frames go and come from,
 * as the I/O thread sees it. The thread epolls `fd` for readability and
 * moves one frame per call with `readv`/`writev`, straight between guest
 * buffers (an IoVecs of host addresses) and the backend.
 *
 * With `vnetHdr` the backend's frames carry the 12-byte virtio_net_hdr_v1
 * in front (a tap opened with IFF_VNET_HDR), and the device passes it
 * through both ways, so checksum and segmentation offloads work. Without
 * it the backend moves bare Ethernet frames: the device leaves the header
 * out of the iovecs it hands over, writes a zero header (bar num_buffers)
 * on rx, and offers the guest no offloads.
 *
 * A backend is made twice: on the main thread at create time (so a bad
 * option or a missing interface is one line at start-up; the device keeps
 * it open for the VM's life) and on the device's I/O thread from
 * `NetBackendInit` (fds are process-wide: the worker's backend uses the
 * same fd number, without closing it).
 *
 * Backend types register by name (`registerNetBackend`); the device's
 * `backend=` option picks one (netBackendFactory). tap.ts is the tap backend
 * (type 'tap', chosen by interface names tapN/vmnetN); a user-mode one plugs
 * in with one registerNetBackend('slirp', ...) in a module that
 * src/devices/all.ts loads.
 */
import type { ConfigNode } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import type { IoVecs } from '../../memory/iovec.js';

/** The virtio_net_hdr_v1 size (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers). */
export const VIRTIO_NET_HDR_SIZE = 12;

/** TUNSETOFFLOAD bits, the offloads the guest accepted (what a vnetHdr backend may hand it). */
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const TUN_F_UFO = 0x10;

export interface NetBackend {
  /** Readable when a frame (or part of one, for a stream) waits; non-blocking. */
  readonly fd: number;
  /** Frames carry the 12-byte virtio_net_hdr_v1 in front. */
  readonly vnetHdr: boolean;
  /**
   * Send one frame (with its header when vnetHdr): the whole of `iov`.
   * Returns the bytes taken, or -errno (-EAGAIN: full, the frame is dropped).
   */
  writev(iov: IoVecs): number;
  /**
   * Receive one frame (with its header when vnetHdr) into `iov`: its full
   * length, which is more than iov.bytes when the frame did not fit (the
   * device drops it, and the backend has consumed it); -EAGAIN when none
   * waits (0 is taken the same way); another -errno on error (the device
   * logs it and waits for the fd's next readability).
   */
  readv(iov: IoVecs): number;
  /** The guest's offloads (TUN_F_* bits) changed; vnetHdr backends only. */
  setOffloads?(flags: number): void;
  /** Main thread: close what it opened. The I/O thread's copy closes nothing. */
  close(): void;
}

/**
 * What the I/O thread builds its backend from (structured-cloned): the
 * backend's type, the fd the main thread's backend opened, and its own
 * fields.
 */
export interface NetBackendInit {
  type: string;
  fd: number;
  vnetHdr: boolean;
  /** backend-specific, structured-clonable */
  data?: unknown;
}

export interface NetBackendFactory {
  /**
   * Main thread, at create time: open the backend from the device's config
   * node (keys under pci.B.S.F: `backend`, and the type's own, e.g.
   * `hostfwd.0`, `hostfwd.1`, ...). Bad input, or a backend that cannot be
   * opened: UserError naming the key (one line, exit 4). `ctx.vmName`
   * names the VM (e.g. for a helper's socket or log file).
   */
  open(node: ConfigNode, ctx: { vmName: string }): NetBackend;
  /** What the I/O thread needs to build the same backend (see fromInit). */
  init(backend: NetBackend): NetBackendInit;
  /** I/O thread: the backend over the main thread's fd; its close() closes nothing. */
  fromInit(init: NetBackendInit): NetBackend;
}

const factories = new Map<string, NetBackendFactory>();

/** Make backend type `name` available to `-s N,virtio-net,NAME` / `pci.B.S.F.backend=NAME`. */
export function registerNetBackend(name: string, factory: NetBackendFactory): void {
  factories.set(name, factory);
}

/**
 * The backend type `backend` names: a registered type by its name, else a
 * tap interface when it starts with `tap` or `vmnet` (bhyve's rule: `tap0`,
 * `vmnet1`). Anything else: UserError naming the key (`what`).
 */
export function netBackendFactory(backend: string, what = 'backend'): NetBackendFactory {
  const type = factories.has(backend) ? backend : /^(tap|vmnet)/.test(backend) ? 'tap' : undefined;
  const f = type === undefined ? undefined : factories.get(type);
  if (!f) {
    throw new UserError(`${what}: unknown network backend '${backend}' (a tap interface tapN/vmnetN, or one of: ${[...factories.keys()].filter((k) => k !== 'tap').join(', ') || 'none'})`);
  }
  return f;
}
