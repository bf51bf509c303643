/**
 * The system calls tshyve and node make, as measured by
 * scripts/measure-syscalls.mjs (strace over the host-KVM tests and a lab
 * boot), most frequent first (the filter tests them in this order).
 * Generated: edit by measuring again, or add a call by hand with the reason.
 */
export const ALLOWED: readonly string[] = [
  'recvfrom', 'futex', 'read', 'writev', 'write', 'readv', 'statx', 'epoll_pwait', 'ioctl', 'mprotect', 'close',
  'openat', 'mmap', 'madvise', 'munmap', 'rt_sigprocmask', 'brk', 'getpid', 'rt_sigaction', 'epoll_ctl', 'fcntl',
  'rseq', 'set_robust_list', 'geteuid', 'newfstatat', 'clone3', 'pread64', 'getuid', 'fstat', 'capget', 'getegid',
  'getgid', 'exit', 'pwritev', 'prlimit64', 'access', 'getsockopt', 'preadv', 'pipe2', 'getsockname', 'gettid',
  'shutdown', 'eventfd2', 'epoll_create1', 'socketpair', 'readlink', 'uname', 'socket', 'connect', 'rt_sigreturn',
  'getrandom', 'fsync', 'ftruncate', 'memfd_create', 'accept4', 'wait4', 'getcwd', 'sched_getaffinity', 'clone',
  'tgkill', 'unlink', 'exit_group', 'set_tid_address', 'sysinfo', 'lseek', 'arch_prctl', 'mkdir', 'pkey_alloc',
  'getdents64', 'rmdir', 'epoll_wait', 'bind', 'listen', 'link', 'sched_yield', 'copy_file_range', 'renameat',
  'pwrite64', 'kill', 'setsockopt', 'dup2', 'symlink', 'fdatasync', 'getpeername',
  // by hand: x86.irqchip=user's APIC timers (src/host/thread-timer.ts), one per vCPU thread
  'timer_create', 'timer_settime', 'timer_delete',
];
