/*
 * The migration bench's guest tool (bench/lab-migration.ts), built static
 * by bench/guest-tools.ts and added to the reference guest's initrd.
 *   gapclock          read CLOCK_MONOTONIC every 200 us; once a second,
 *                     print "GAP <ms>" when the largest gap between two
 *                     reads in that second was 5 ms or more
 *   gapclock dirty N  keep writing every page of N MiB (a pass, then 20 ms of sleep)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int dirty(size_t mib) {
  size_t n = mib << 20;
  volatile unsigned char *p = malloc(n);
  if (!p) return 1;
  for (unsigned v = 1;; v++) {
    for (size_t i = 0; i < n; i += 4096) p[i] = (unsigned char)v;
    usleep(20000);
  }
}

int main(int argc, char **argv) {
  if (argc > 2 && strcmp(argv[1], "dirty") == 0) return dirty((size_t)atoi(argv[2]));
  setvbuf(stdout, NULL, _IOLBF, 0);
  const struct timespec nap = { 0, 200000 };
  double prev = now_ms(), window = prev, largest = 0;
  for (;;) {
    nanosleep(&nap, NULL);
    double t = now_ms(), gap = t - prev;
    prev = t;
    if (gap > largest) largest = gap;
    if (t - window >= 1000) {
      if (largest >= 5) printf("GAP %.1f\n", largest);
      largest = 0;
      window = t;
    }
  }
}
