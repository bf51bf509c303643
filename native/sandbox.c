/*
 * tshyve's sandbox: the two pieces that cannot be done from JavaScript
 * through koffi, kept as thin as possible (everything else, the BPF program
 * included, is built in src/host/sandbox/).
 *
 * 1. tshyve_all_threads(): run a sequence of system calls on every thread
 *    of the process (one signal per thread for the whole sequence: each
 *    round costs a listing of the threads and a wait for every one). Credentials (capabilities, the bounding set) and Landlock
 *    domains belong to a thread, and node has started a dozen threads
 *    (libuv's pool, V8's workers, worker_threads) before any JavaScript
 *    runs. glibc reaches every thread for setuid() the same way: with its
 *    SIGSETXID signal, which no thread can block. Its handler is borrowed
 *    for the call and given back; nothing else uses it meanwhile (tshyve
 *    calls no set*id() while this runs).
 *
 * 2. tshyve_sigsys_install(): the SIGSYS handler for SECCOMP_RET_TRAP. It
 *    reports a refused system call once (one line, write(2) only), then
 *    either makes the call fail with EPERM or ends the process at once.
 *
 * Built by node-gyp (binding.gyp) and loaded with koffi: no N-API.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define SIGSETXID (SIGRTMIN_KERNEL + 1)
#define SIGRTMIN_KERNEL 32
#define MAX_THREADS 4096

/* The kernel's struct sigaction (rt_sigaction is called raw: glibc refuses its own signals). */
struct ksigaction {
  void (*handler)(int, siginfo_t *, void *);
  unsigned long flags;
  void (*restorer)(void);
  unsigned long mask;
};
#define SA_RESTORER_K 0x04000000

#define MAX_CALLS 128

/* The calls each thread makes, in order: number and six arguments each. */
static long calls[MAX_CALLS][7];
static int ncalls;
static atomic_int answered, failed, first_errno;
static pid_t done_tids[MAX_THREADS];
static atomic_int ndone;

/* The calls in order, up to the first that fails (its -1, errno set). */
static long run_call(void) {
  long r = 0;
  for (int i = 0; i < ncalls && r >= 0; i++) {
    const long *c = calls[i];
    r = syscall(c[0], c[1], c[2], c[3], c[4], c[5], c[6]);
  }
  return r;
}

static void record(long r) {
  if (r < 0) {
    int e = errno, zero = 0;
    atomic_compare_exchange_strong(&first_errno, &zero, e);
    atomic_fetch_add(&failed, 1);
  }
  int i = atomic_fetch_add(&ndone, 1);
  if (i < MAX_THREADS) done_tids[i] = (pid_t)syscall(SYS_gettid);
}

static void on_broadcast(int sig, siginfo_t *si, void *uc) {
  (void)sig; (void)uc;
  int saved = errno;
  if (si->si_code == SI_TKILL && si->si_pid == getpid()) {
    record(run_call());
    atomic_fetch_add(&answered, 1);
  }
  errno = saved;
}

static int seen(pid_t tid) {
  int n = atomic_load(&ndone);
  for (int i = 0; i < n && i < MAX_THREADS; i++) if (done_tids[i] == tid) return 1;
  return 0;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/*
 * Kernel threads that run in the process (KVM's kvm-nx-lpage-recovery,
 * io_uring and vhost workers: PF_USER_WORKER, PF_IO_WORKER) take no
 * signals and run no user code: they are left alone.
 */
static int is_kernel_worker(pid_t tid) {
  char path[64], buf[512];
  int n = 0;
  const char *pre = "/proc/self/task/";
  for (const char *p = pre; *p; p++) path[n++] = *p;
  char digits[16];
  int d = 0;
  for (pid_t v = tid; v > 0 && d < 15; v /= 10) digits[d++] = (char)('0' + v % 10);
  while (d > 0) path[n++] = digits[--d];
  for (const char *p = "/stat"; *p; p++) path[n++] = *p;
  path[n] = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  long len = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (len <= 0) return 0;
  buf[len] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  /* after the name: " state ppid pgrp session tty_nr tpgid flags": the flags follow the 7th space */
  for (int field = 0; field < 7 && p; field++) p = strchr(p + 1, ' ');
  if (!p) return 0;
  unsigned long flags = strtoul(p + 1, NULL, 10);
  return (flags & (0x4000 /* PF_USER_WORKER */ | 0x10 /* PF_IO_WORKER */)) != 0;
}

/* Signal every thread not yet done; returns how many were signalled, -1 on error. */
static int signal_rest(pid_t pid) {
  int dfd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return -1;
  char buf[4096];
  int sent = 0;
  for (;;) {
    long n = syscall(SYS_getdents64, dfd, buf, sizeof buf);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      unsigned short reclen = *(unsigned short *)(buf + off + 16);
      const char *name = buf + off + 19;
      off += reclen;
      if (name[0] < '0' || name[0] > '9') continue;
      pid_t tid = 0;
      for (const char *p = name; *p; p++) tid = tid * 10 + (*p - '0');
      if (seen(tid) || is_kernel_worker(tid)) continue;
      if (syscall(SYS_tgkill, pid, tid, SIGSETXID) == 0) sent++;
    }
  }
  close(dfd);
  return sent;
}

/*
 * Every thread makes the calls. Returns the number of threads that made
 * them (this one included), or -errno: the first failure, or -ETIMEDOUT
 * when a thread did not answer.
 */
static long broadcast(void) {
  atomic_store(&answered, 0); atomic_store(&failed, 0); atomic_store(&first_errno, 0); atomic_store(&ndone, 0);
  struct ksigaction act = { on_broadcast, SA_SIGINFO | SA_RESTART, 0, 0 }, old;
  /* glibc's own handler has SA_RESTORER set: keep its restorer for ours. */
  if (syscall(SYS_rt_sigaction, SIGSETXID, NULL, &old, 8) != 0) return -errno;
  act.flags |= old.flags & SA_RESTORER_K;
  act.restorer = old.restorer;
  if (syscall(SYS_rt_sigaction, SIGSETXID, &act, NULL, 8) != 0) return -errno;
  record(run_call());
  pid_t pid = getpid();
  long deadline = now_ms() + 5000;
  int sent = 0, result = 0;
  /* Until a listing finds no thread left: one started meanwhile is signalled in the next round. */
  for (;;) {
    int n = signal_rest(pid);
    if (n < 0) { result = -EIO; break; }
    if (n == 0) break;
    sent += n;
    while (atomic_load(&answered) < sent && now_ms() < deadline) {
      struct timespec ts = { 0, 200000 };
      nanosleep(&ts, NULL);
    }
    if (atomic_load(&answered) < sent) { result = -ETIMEDOUT; break; }
  }
  syscall(SYS_rt_sigaction, SIGSETXID, &old, NULL, 8);
  if (result < 0) return result;
  if (atomic_load(&failed) > 0) return -atomic_load(&first_errno);
  return atomic_load(&ndone);
}

/* `n` calls of seven longs each (number, six arguments), made in order on every thread; see broadcast(). */
long tshyve_all_threads(const long *seq, long n) {
  if (n < 1 || n > MAX_CALLS) return -EINVAL;
  memcpy(calls, seq, (size_t)n * sizeof calls[0]);
  ncalls = (int)n;
  return broadcast();
}

/* ---- SIGSYS: the report of a refused system call ---- */

#define MAX_NR 512
static char names[MAX_NR][24];
static atomic_uchar reported[MAX_NR];
static int kill_mode;

static size_t append(char *buf, size_t at, const char *s) {
  while (*s && at < 200) buf[at++] = *s++;
  return at;
}

static void on_sigsys(int sig, siginfo_t *si, void *ucv) {
  (void)sig;
  int saved = errno;
  int nr = si->si_syscall;
  ucontext_t *uc = ucv;
  if (nr < 0 || nr >= MAX_NR || !atomic_exchange(&reported[nr], 1) || kill_mode) {
    char line[256], num[16];
    int len = 0, v = nr < 0 ? 0 : nr;
    do { num[len++] = (char)('0' + v % 10); v /= 10; } while (v && len < 15);
    char digits[16];
    for (int i = 0; i < len; i++) digits[i] = num[len - 1 - i];
    digits[len] = 0;
    size_t at = append(line, 0, "tshyve: sandbox: refused system call ");
    at = append(line, at, nr >= 0 && nr < MAX_NR && names[nr][0] ? names[nr] : "?");
    at = append(line, at, " (");
    at = append(line, at, digits);
    at = append(line, at, kill_mode ? "): ending tshyve (-o sandbox.violation=error makes it fail with EPERM instead)\n" : "): it fails with EPERM\n");
    (void)!write(2, line, at);
  }
  if (kill_mode) syscall(SYS_exit_group, 4);
  uc->uc_mcontext.gregs[REG_RAX] = -EPERM;
  errno = saved;
}

/* names: "NR name\n" lines. kill: end the process on a refusal instead of EPERM. */
int tshyve_sigsys_install(const char *table, int kill) {
  kill_mode = kill;
  for (const char *p = table; *p;) {
    int nr = 0;
    while (*p >= '0' && *p <= '9') nr = nr * 10 + (*p++ - '0');
    if (*p == ' ') p++;
    int i = 0;
    while (*p && *p != '\n') {
      if (nr < MAX_NR && i < 23) names[nr][i++] = *p;
      p++;
    }
    if (*p == '\n') p++;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  return sigaction(SIGSYS, &sa, NULL) == 0 ? 0 : -errno;
}
