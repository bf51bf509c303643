/**
 * The tap backend (`backend=tapX`, or any interface name that is not a
 * registered backend type): /dev/net/tun attached to the named tap with
 * IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a 12-byte vnet header (so the guest's
 * checksum and segmentation offloads go through), and TUNSETOFFLOAD set to
 * what the guest accepted. The tap may exist already (persistent, `ip
 * tuntap add NAME mode tap`); if not, and the process may create one (root,
 * CAP_NET_ADMIN), the kernel makes it and it goes away with the VM.
 */
import { UserError } from '../../errors.js';
import { EAGAIN, O_CLOEXEC, O_NONBLOCK, O_RDWR, errno, libc } from '../../host/libc.js';
import type { IoVecs } from '../../memory/iovec.js';
import { VIRTIO_NET_HDR_SIZE, registerNetBackend, type NetBackend } from './backend.js';

// <linux/if_tun.h>
const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
/** struct ifreq: char name[IFNAMSIZ]; short flags; ... (40 bytes) */
const IFREQ_SIZE = 40;
const IFNAMSIZ = 16;

const EPERM = 1, ENOENT = 2, EBUSY = 16, EINVAL = 22;

const TUN_DEVICE = '/dev/net/tun';

/** An interface name the kernel takes: 1-15 bytes, no '/', ':' or white space. */
function checkName(name: string, what: string): void {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name) || name === '.' || name === '..') {
    throw new UserError(`${what}: '${name}' is not a tap interface name (1-15 of A-Z a-z 0-9 _ . -)`);
  }
}

export class TapBackend implements NetBackend {
  readonly vnetHdr = true;

  /** `owned`: this copy opened the fd and closes it. */
  private constructor(readonly fd: number, readonly name: string, private readonly owned: boolean) {}

  /** Attach to tap `name` (created if missing and allowed); `what` names the config key in errors. */
  static open(name: string, what = 'backend'): TapBackend {
    checkName(name, what);
    const fd = libc.open(TUN_DEVICE, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      const e = errno();
      throw new UserError(`${what}: cannot open ${TUN_DEVICE} for tap '${name}' (${e === ENOENT ? 'no tun driver here' : `errno ${e}`})`);
    }
    try {
      const ifr = Buffer.alloc(IFREQ_SIZE);
      ifr.write(name, 0, IFNAMSIZ - 1, 'latin1');
      ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, IFNAMSIZ);
      if (libc.ioctlPtr(fd, TUNSETIFF, ifr) < 0) {
        const e = errno();
        const why = e === EPERM ? 'it does not exist and cannot be created, or belongs to another user (needs CAP_NET_ADMIN)'
          : e === EBUSY ? 'it is in use by another process'
            : e === EINVAL ? 'it exists and is not a tap' : `errno ${e}`;
        throw new UserError(`${what}: cannot attach to tap '${name}': ${why}`);
      }
      const sz = Buffer.alloc(4);
      sz.writeInt32LE(VIRTIO_NET_HDR_SIZE);
      if (libc.ioctlPtr(fd, TUNSETVNETHDRSZ, sz) < 0) throw new UserError(`${what}: tap '${name}': TUNSETVNETHDRSZ failed (errno ${errno()})`);
      if (libc.ioctlInt(fd, TUNSETOFFLOAD, 0) < 0) throw new UserError(`${what}: tap '${name}': TUNSETOFFLOAD failed (errno ${errno()})`);
    } catch (e) {
      libc.close(fd);
      throw e;
    }
    return new TapBackend(fd, name, true);
  }

  /** The I/O thread's copy: the same fd, which the main thread's copy closes. */
  static over(fd: number, name: string): TapBackend {
    return new TapBackend(fd, name, false);
  }

  writev(iov: IoVecs): number {
    const n = libc.writev(this.fd, iov.buf, iov.count);
    return n < 0 ? -errno() : n;
  }

  readv(iov: IoVecs): number {
    const n = libc.readv(this.fd, iov.buf, iov.count);
    return n < 0 ? -(errno() || EAGAIN) : n;
  }

  /** TUN_F_* flags: the kernel hands the guest only packets it can take. A refusal leaves plain frames, which every guest takes. */
  setOffloads(flags: number): void {
    libc.ioctlInt(this.fd, TUNSETOFFLOAD, flags);
  }

  close(): void {
    if (this.owned) libc.close(this.fd);
  }
}

registerNetBackend('tap', {
  open: (node) => TapBackend.open(node.get('backend') ?? '', node.path ? `${node.path}.backend` : 'backend'),
  init: (b) => ({ type: 'tap', fd: b.fd, vnetHdr: true, data: (b as TapBackend).name }),
  fromInit: (init) => TapBackend.over(init.fd, String(init.data)),
});
