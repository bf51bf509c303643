/*
 * randio: 4 KiB random O_DIRECT reads or writes over a block device, with a
 * queue depth, for a fixed time; the reference guest's stand-in for fio
 * (Debian's fio links the Ceph and GlusterFS clients, see bench/README.md).
 * Linux AIO through raw syscalls (no libaio), so a static glibc build is all
 * it needs. Built into the guest initrd by lab/build-guest.sh.
 *
 *   randio DEVICE read|write SECONDS [DEPTH]
 *
 * prints one line: "RANDIO read|write IOPS MIBS" (requests completed within
 * the time, per second; MiB/s).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BS 4096
#define MAX_DEPTH 256

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void) { /* xorshift64* */
  rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
  return rng * 0x2545f4914f6cdd1dull;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) { fprintf(stderr, "randio: %s: %s\n", what, strerror(errno)); exit(1); }

int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: randio DEVICE read|write SECONDS [DEPTH]\n"); return 2; }
  int writing = strcmp(argv[2], "write") == 0;
  double secs = atof(argv[3]);
  int depth = argc > 4 ? atoi(argv[4]) : 32;
  if ((!writing && strcmp(argv[2], "read") != 0) || secs <= 0 || depth < 1 || depth > MAX_DEPTH) {
    fprintf(stderr, "randio: bad arguments\n"); return 2;
  }
  int fd = open(argv[1], (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
  if (fd < 0) die(argv[1]);
  off_t size = lseek(fd, 0, SEEK_END);
  if (size < BS) die("device size");
  uint64_t blocks = (uint64_t)size / BS;
  rng ^= (uint64_t)getpid() << 17 ^ (uint64_t)(now() * 1e9);

  char *buf;
  if (posix_memalign((void **)&buf, BS, (size_t)depth * BS)) die("memory");
  memset(buf, writing ? 0x5a : 0, (size_t)depth * BS);
  aio_context_t ctx = 0;
  if (syscall(SYS_io_setup, depth, &ctx) < 0) die("io_setup");
  struct iocb cbs[MAX_DEPTH], *ptrs[MAX_DEPTH];
  struct io_event ev[MAX_DEPTH];
  for (int i = 0; i < depth; i++) {
    memset(&cbs[i], 0, sizeof cbs[i]);
    cbs[i].aio_fildes = (uint32_t)fd;
    cbs[i].aio_lio_opcode = writing ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;
    cbs[i].aio_buf = (uint64_t)(uintptr_t)(buf + (size_t)i * BS);
    cbs[i].aio_nbytes = BS;
    cbs[i].aio_data = (uint64_t)i;
  }

  uint64_t done = 0;
  int inflight = 0, n = depth;
  for (int i = 0; i < depth; i++) ptrs[i] = &cbs[i];
  double t0 = now(), end = t0 + secs, t = t0;
  for (;;) {
    for (int i = 0; i < n; i++) ptrs[i]->aio_offset = (int64_t)(next_rand() % blocks) * BS;
    if (n > 0) {
      long s = syscall(SYS_io_submit, ctx, (long)n, ptrs);
      if (s != n) die("io_submit");
      inflight += n;
    }
    long got = syscall(SYS_io_getevents, ctx, 1L, (long)depth, ev, NULL);
    if (got < 0) { if (errno == EINTR) { n = 0; continue; } die("io_getevents"); }
    t = now();
    n = 0;
    for (long i = 0; i < got; i++) {
      if ((int64_t)ev[i].res != BS) { errno = ev[i].res < 0 ? (int)-(int64_t)ev[i].res : EIO; die("request"); }
      inflight--;
      if (t < end) { done++; ptrs[n++] = &cbs[ev[i].data]; }
    }
    if (t >= end && inflight == 0) break;
  }
  double el = end - t0;
  printf("RANDIO %s %.0f %.1f\n", argv[2], done / el, done * (double)BS / el / (1 << 20));
  return 0;
}
