/**
 * The sandbox's reserve of TCP sockets, for a migration to HOST,PORT: a
 * capability in Capsicum's sense. Made at lock-down while socket() still
 * allows AF_INET/AF_INET6, unconnected; the seccomp filter refuses any new
 * one after. A migration takes one per attempt (a failed attempt uses it
 * up) and connects it: Landlock leaves TCP connect alone, and nothing else
 * in the process holds such a socket. Landlock refuses binding a TCP port,
 * but listen() would take an ephemeral one without asking it: each reserved
 * socket carries a locked socket filter that drops connection requests, so
 * listening gets nothing. docs/security.md says why this is not a way out.
 */
import { isIP } from 'node:net';
import { constants } from 'node:os';
import { UserError } from '../../errors.js';
import { errno, libc } from '../libc.js';
import { encode, type Insn } from './bpf.js';

const AF_INET = 2, AF_INET6 = 10;
const SOCK_STREAM = 1, SOCK_NONBLOCK = 0o4000, SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1, SO_ERROR = 4, SO_ATTACH_FILTER = 26, SO_LOCK_FILTER = 44;
const POLLOUT = 4;
const EINPROGRESS = 115;
/** sockets of each family: a few failed attempts (a destination not listening yet) and the one that works */
export const RESERVED_PER_FAMILY = 3;

/**
 * The socket filter: a TCP socket's filter sees its segments from the TCP
 * header on, before a listening socket would answer them; a SYN without ACK
 * (someone connecting in) is dropped, whatever else (the connect's SYN-ACK,
 * the destination's data) is kept.
 */
const NO_INCOMING: Insn[] = [
  { code: 0x30 /* ld b [k] */, jt: 0, jf: 0, k: 13 /* the flags */ },
  { code: 0x54 /* and k */, jt: 0, jf: 0, k: 0x12 /* SYN|ACK */ },
  { code: 0x15 /* jeq k */, jt: 0, jf: 1, k: 0x02 /* SYN */ },
  { code: 0x06 /* ret k */, jt: 0, jf: 0, k: 0 },
  { code: 0x06, jt: 0, jf: 0, k: 0xffffffff },
];

const errnoName = (e: number): string => Object.entries(constants.errno).find(([, v]) => v === e)?.[0] ?? `errno ${e}`;

export class SocketReserve {
  private constructor(private readonly free: Record<4 | 6, number[]>) {}

  /** Made before lock-down; a family this host has no sockets of (IPv6 turned off) is left empty. */
  static make(): SocketReserve {
    const make = (family: 4 | 6): number[] =>
      Array.from({ length: RESERVED_PER_FAMILY }, () => reservedSocket(family)).filter((fd): fd is number => fd !== undefined);
    return new SocketReserve({ 4: make(4), 6: make(6) });
  }

  /**
   * Connect a reserved socket to `host` (an IP address: a name cannot be
   * looked up once locked down) and `port`, without blocking the event
   * loop; resolves with the connected fd, now the caller's. UserError when
   * none is left or HOST is a name; any other Error's message is the errno.
   */
  async connect(host: string, port: number, timeoutMs: number): Promise<number> {
    const v = isIP(host);
    if (v === 0) throw new UserError(`the sandbox lets a migration connect to an IP address only (no name lookups once the VM runs): ${host} is a name`);
    const family = v === 4 ? 4 : 6;
    const addr = sockaddr(family, host, port);
    const fd = this.free[family].shift();
    if (fd === undefined) {
      throw new UserError(`the sandbox's reserve of IPv${family} sockets for migrations is used up (${RESERVED_PER_FAMILY} per VM, one per attempt): migrate to unix:PATH, or start the VM with -o sandbox=off`);
    }
    try {
      if (libc.connect(fd, addr, addr.length) < 0 && errno() !== EINPROGRESS) throw new Error(errnoName(errno()));
      await writable(fd, timeoutMs);
      const err = Buffer.alloc(4), len = Buffer.alloc(4);
      len.writeUInt32LE(4);
      if (libc.getsockopt(fd, SOL_SOCKET, SO_ERROR, err, len) < 0) throw new Error(errnoName(errno()));
      if (err.readInt32LE() !== 0) throw new Error(errnoName(err.readInt32LE()));
      return fd;
    } catch (e) {
      libc.close(fd);
      throw e;
    }
  }
}

/** One socket of the reserve, its filter locked on; undefined when this host makes none of the family. */
export function reservedSocket(family: 4 | 6): number | undefined {
  const fd = libc.socket(family === 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return undefined;
  if (!noIncoming(fd)) {
    const e = errno();
    libc.close(fd);
    throw new Error(`sandbox: cannot put the filter on a reserved socket: ${errnoName(e)}`);
  }
  return fd;
}

/** Attach NO_INCOMING and lock it (no detaching or replacing it after). */
function noIncoming(fd: number): boolean {
  const code = encode(NO_INCOMING);
  const prog = Buffer.alloc(16); // struct sock_fprog { u16 len; struct sock_filter *filter; }
  prog.writeUInt16LE(NO_INCOMING.length, 0);
  prog.writeBigUInt64LE(libc.bufferAddress(code), 8);
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  return libc.setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, prog, prog.length) === 0 && libc.setsockopt(fd, SOL_SOCKET, SO_LOCK_FILTER, one, 4) === 0;
}

/** struct sockaddr_in or sockaddr_in6 (the port in network order). */
function sockaddr(family: 4 | 6, host: string, port: number): Buffer {
  const b = Buffer.alloc(family === 4 ? 16 : 28);
  b.writeUInt16LE(family === 4 ? AF_INET : AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  const raw = Buffer.alloc(16);
  if (libc.inetPton(family === 4 ? AF_INET : AF_INET6, host, raw) !== 1) throw new UserError(`migration address ${host}: not an address this host can connect to`);
  raw.copy(b, family === 4 ? 4 : 8, 0, family === 4 ? 4 : 16);
  return b;
}

/** Poll without waiting, every 10 ms, until the connect finished (or failed: POLLERR comes with POLLOUT's check). */
async function writable(fd: number, timeoutMs: number): Promise<void> {
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(POLLOUT, 4);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    pfd.writeInt16LE(0, 6);
    if (libc.poll(pfd, 1, 0) > 0) return;
    if (Date.now() >= deadline) throw new Error(`no answer within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
