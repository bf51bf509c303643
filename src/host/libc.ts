/**
 * The thin FFI layer: the handful of libc calls tshyve needs, typed.
 * Loaded once per thread (vCPU workers load it too). Everything else in
 * the project reaches the kernel through src/kvm/.
 */
import { writeFileSync } from 'node:fs';
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');
const passwd = koffi.struct('tshyve_passwd', {
  pw_name: 'char *', pw_passwd: 'char *', pw_uid: 'uint32_t', pw_gid: 'uint32_t', pw_gecos: 'char *', pw_dir: 'char *', pw_shell: 'char *',
});
const fcntl = lib.func('int fcntl(int fd, int cmd, ...)') as (fd: number, cmd: number, type: 'int', arg: number) => number;

export const libc = {
  open: lib.func('int open(const char *path, int flags)') as (path: string, flags: number) => number,
  close: lib.func('int close(int fd)') as (fd: number) => number,
  // *at(): names resolved in a directory held open, so the directory cannot be swapped under a save.
  openat: lib.func('int openat(int dirfd, const char *path, int flags, unsigned int mode)') as (dirfd: number, path: string, flags: number, mode: number) => number,
  renameat: lib.func('int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)') as (
    olddirfd: number, oldpath: string, newdirfd: number, newpath: string) => number,
  unlinkat: lib.func('int unlinkat(int dirfd, const char *path, int flags)') as (dirfd: number, path: string, flags: number) => number,
  /** ioctl with a pointer argument (a Buffer the kernel reads and/or writes). */
  ioctlPtr: lib.func('int ioctl(int fd, unsigned long req, void *arg)') as (fd: number, req: number, arg: Buffer | null) => number,
  /** ioctl with an integer argument. */
  ioctlInt: lib.func('int ioctl(int fd, unsigned long req, unsigned long arg)') as (fd: number, req: number, arg: number) => number,
  mmap: lib.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)') as (
    addr: null, len: number, prot: number, flags: number, fd: number, off: number) => unknown,
  munmap: lib.func('int munmap(void *addr, size_t len)') as (addr: unknown, len: number) => number,
  memfdCreate: lib.func('int memfd_create(const char *name, unsigned int flags)') as (name: string, flags: number) => number,
  ftruncate: lib.func('int ftruncate(int fd, int64_t len)') as (fd: number, len: number) => number,
  eventfd: lib.func('int eventfd(unsigned int initval, int flags)') as (init: number, flags: number) => number,
  gettid: lib.func('int gettid(void)') as () => number,
  tgkill: lib.func('int tgkill(int tgid, int tid, int sig)') as (tgid: number, tid: number, sig: number) => number,
  madvise: lib.func('int madvise(void *addr, size_t len, int advice)') as (addr: unknown, len: number, advice: number) => number,
  read: lib.func('long read(int fd, void *buf, size_t n)') as (fd: number, buf: Buffer, n: number) => number,
  write: lib.func('long write(int fd, const void *buf, size_t n)') as (fd: number, buf: Buffer, n: number) => number,
  /** iov: a Buffer of struct iovec { u64 base; u64 len } holding raw host addresses */
  preadv: lib.func('long preadv(int fd, void *iov, int iovcnt, int64_t offset)') as (fd: number, iov: Buffer, n: number, off: number) => number,
  pwritev: lib.func('long pwritev(int fd, void *iov, int iovcnt, int64_t offset)') as (fd: number, iov: Buffer, n: number, off: number) => number,
  /** iov as for preadv: one datagram/frame per call on a tap or a packet socket */
  readv: lib.func('long readv(int fd, void *iov, int iovcnt)') as (fd: number, iov: Buffer, n: number) => number,
  writev: lib.func('long writev(int fd, const void *iov, int iovcnt)') as (fd: number, iov: Buffer, n: number) => number,
  /** sv: a Buffer of two ints, the pair's fds */
  socketpair: lib.func('int socketpair(int domain, int type, int protocol, void *sv)') as (domain: number, type: number, proto: number, sv: Buffer) => number,
  recv: lib.func('long recv(int fd, void *buf, size_t n, int flags)') as (fd: number, buf: Buffer | null, n: number, flags: number) => number,
  shutdown: lib.func('int shutdown(int fd, int how)') as (fd: number, how: number) => number,
  epollCreate1: lib.func('int epoll_create1(int flags)') as (flags: number) => number,
  epollCtl: lib.func('int epoll_ctl(int epfd, int op, int fd, void *event)') as (epfd: number, op: number, fd: number, ev: Buffer | null) => number,
  epollWait: lib.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)') as (epfd: number, events: Buffer, max: number, timeout: number) => number,
  fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as (fd: number, mode: number, offset: number, len: number) => number,
  // memset(p, 0, 0) returns p: declared with an integer first argument, it
  // turns an address this process already maps into a pointer koffi can view.
  memsetAddr: lib.func('void *memset(uintptr_t s, int c, size_t n)') as (addr: bigint, c: number, n: number) => unknown,
  /** A Buffer's native address (memset returns its first argument; Buffer.alloc memory does not move). */
  bufferAddress: ((f: (b: Buffer, c: number, n: number) => number | bigint) => (b: Buffer): bigint => BigInt(f(b, 0, 0)))(
    lib.func('uintptr_t memset(void *s, int c, size_t n)') as (b: Buffer, c: number, n: number) => number | bigint),
  lseek: lib.func('int64_t lseek(int fd, int64_t off, int whence)') as (fd: number, off: number, whence: number) => number,
  /** fcntl with an int argument (F_GETFL takes 0). */
  fcntlInt: (fd: number, cmd: number, arg: number): number => fcntl(fd, cmd, 'int', arg),
  // The sandbox's reserve of TCP sockets (src/host/sandbox/reserve.ts): made before lock-down, connected after it.
  socket: lib.func('int socket(int domain, int type, int protocol)') as (domain: number, type: number, proto: number) => number,
  /** addr: a struct sockaddr_in or sockaddr_in6 */
  connect: lib.func('int connect(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Buffer, len: number) => number,
  /** fds: a Buffer of struct pollfd { int fd; short events; short revents; } */
  poll: lib.func('int poll(void *fds, unsigned long n, int timeout)') as (fds: Buffer, n: number, timeout: number) => number,
  setsockopt: lib.func('int setsockopt(int fd, int level, int name, const void *val, uint32_t len)') as (
    fd: number, level: number, name: number, val: Buffer, len: number) => number,
  inetPton: lib.func('int inet_pton(int af, const char *src, void *dst)') as (af: number, src: string, dst: Buffer) => number,
  getsockopt: lib.func('int getsockopt(int fd, int level, int name, void *val, void *len)') as (fd: number, level: number, name: number, val: Buffer, len: Buffer) => number,
  posixFadvise: lib.func('int posix_fadvise(int fd, int64_t offset, int64_t len, int advice)') as (fd: number, offset: number, len: number, advice: number) => number,
  // The sandbox's calls (src/host/sandbox/). glibc's set*id() and setgroups() change every thread, not just the caller.
  prctl: lib.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)') as (
    option: number, a2: number, a3: number, a4: number, a5: number) => number,
  /** gids: a Buffer of n u32 */
  setgroups: lib.func('int setgroups(size_t n, const void *gids)') as (n: number, gids: Buffer) => number,
  setresgid: lib.func('int setresgid(uint32_t r, uint32_t e, uint32_t s)') as (r: number, e: number, s: number) => number,
  setresuid: lib.func('int setresuid(uint32_t r, uint32_t e, uint32_t s)') as (r: number, e: number, s: number) => number,
  getpwnam: ((f: (name: string) => unknown) => (name: string): { uid: number; gid: number } | undefined => {
    const p = f(name);
    if (p === null) return undefined;
    const pw = koffi.decode(p, passwd) as { pw_uid: number; pw_gid: number };
    return { uid: pw.pw_uid, gid: pw.pw_gid };
  })(lib.func('void *getpwnam(const char *name)') as (name: string) => unknown),
  /**
   * A raw system call with up to six integer arguments (a pointer is a
   * Buffer's address: libc.bufferAddress); -1 and errno on failure.
   */
  syscall: ((f: (...a: unknown[]) => number | bigint) => (nr: number, ...args: (number | bigint)[]): number =>
    Number(f(nr, ...args.flatMap((a) => ['int64_t', a]))))(lib.func('long syscall(long nr, ...)') as (...a: unknown[]) => number | bigint),
};

export const errno = (): number => koffi.errno();
export const address = (p: unknown): bigint => koffi.address(p);
/** An ArrayBuffer over native memory (an mmap); valid until unmapped. */
export const view = (p: unknown, len: number): ArrayBuffer => koffi.view(p, len);
/** A view of `len` bytes at `addr`, memory this process has mapped (another thread's mapping of guest RAM). */
export const viewAt = (addr: bigint, len: number): ArrayBuffer => koffi.view(libc.memsetAddr(addr, 0, 0), len);

export const O_WRONLY = 1;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOFOLLOW = 0o400000;
/** a handle on the name only: enough to fstat what it names, even a symlink, without opening it */
export const O_PATH = 0o10000000;
export const ENOENT = 2;
export const EEXIST = 17;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const ENXIO = 6;
export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_ANONYMOUS = 0x20;
export const MFD_CLOEXEC = 1;
export const MADV_HUGEPAGE = 14;
export const MADV_DONTFORK = 10;
export const MADV_DONTNEED = 4;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EINTR = 4;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;
export const EAGAIN = 11;
/** The signal used to kick a vCPU thread out of KVM_RUN. */
export const SIG_KICK = 12; // SIGUSR2

/**
 * Name the calling thread (at most 15 bytes), as `top -H`, `ps -T` and
 * taskset see it; best effort. Writing /proc/thread-self/comm names the
 * thread that writes, which is what a worker thread wants.
 */
export function setThreadName(name: string): void {
  try {
    writeFileSync('/proc/thread-self/comm', name.slice(0, 15));
  } catch {
    // not Linux, or /proc is not mounted: names are only for people
  }
}

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;

/** The process at the other end of a connected unix socket, as the kernel saw it at connect(). */
export interface PeerCredentials { pid: number; uid: number; gid: number }

/** SO_PEERCRED of a unix socket; undefined when the kernel will not say (not a unix socket, bad fd). */
export function peerCredentials(fd: number): PeerCredentials | undefined {
  const ucred = Buffer.alloc(12); // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
  const len = Buffer.alloc(4);
  len.writeUInt32LE(ucred.length);
  if (libc.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, ucred, len) !== 0 || len.readUInt32LE() !== ucred.length) return undefined;
  return { pid: ucred.readInt32LE(0), uid: ucred.readUInt32LE(4), gid: ucred.readUInt32LE(8) };
}

export function isMapFailed(p: unknown): boolean {
  return p === null || address(p) === 0xffffffffffffffffn;
}
