/* rn-bench-kernels: the inner loops of the direct convolution (src/kernels/conv_direct.c) on one
 * thread, with their data in cache and streaming, beside an FMA loop (the peak rn-bench measures).
 * This file compiles in seconds, where conv_direct.c takes minutes, so a change to a tile's
 * register blocking or loop order can be measured here first (docs/PERF.md, "Tenth round"):
 *
 *   build/rn-bench-kernels [REPS]
 *   gcc -O3 -march=native -o /tmp/bk src/app/bench-kernels.c && /tmp/bk   (after editing a loop)
 *
 * The loops are copies of tile3's (3-wide kernels: one broadcast serves every tap of its kernel
 * row) and of the generic tile's at 1x1 (one broadcast per pixel, NC weight vectors); keep them in
 * step with conv_direct.c when its tiles change. Prints GF/s and the share of the FMA loop's. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime, when built on its own with -std=c11 */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *USAGE =
    "usage: rn-bench-kernels [REPS]\n"
    "One thread: GF/s of copies of the direct convolution's inner loops (3x3 tile3 7x2 and 7x3 tiles\n"
    "repeated in cache, tile3 over a 56x56x64 image, the 1x1 14x2 tile on one line and streaming over\n"
    "64 lines) beside an FMA loop, and each one's share of it; REPS repetitions (default 3).\n";

#ifdef __AVX512F__
#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 14 independent accumulators, 3 FMAs each per iteration (the 7 x 2 tile's dependency pattern). */
static __attribute__((noinline)) double fma_loop(long it) {
  __m512 a[14];
  for (int i = 0; i < 14; i++) a[i] = _mm512_set1_ps(0.0f);
  __m512 w = _mm512_set1_ps(1e-9f), x = _mm512_set1_ps(1e-3f);
  for (long k = 0; k < it; k++) {
    __asm__ volatile("" : "+v"(x));
#pragma GCC unroll 3
    for (int r = 0; r < 3; r++)
#pragma GCC unroll 14
      for (int i = 0; i < 14; i++) a[i] = _mm512_fmadd_ps(x, w, a[i]);
  }
  float s = 0;
  for (int i = 0; i < 14; i++) s += _mm512_reduce_add_ps(a[i]);
  return s;
}

/* One (kernel row, 32-channel) pass of a tile3 tile, NB pixels x NC channel blocks, stride 1:
 * r: input at the tile's first pixel (C floats per pixel), wk: blocked weights [cb][tap][ci][16]
 * of the row's first tap (taps ts floats apart, blocks bs apart), yo: output (Co per pixel). */
AI void pass3(const float *r, const int C, const float *wk, size_t ts, size_t bs, float *yo, int Co, int first,
              const int NB, const int NC) {
  __m512 a[24];
#pragma GCC unroll 24
  for (int i = 0; i < NB * NC; i++) a[i] = _mm512_setzero_ps();
  for (int ci = 0; ci < 32; ci++, r++, wk += 16) {
    __m512 w[3][4];
#pragma GCC unroll 3
    for (int kx = 0; kx < 3; kx++)
#pragma GCC unroll 4
      for (int c = 0; c < NC; c++) w[kx][c] = _mm512_loadu_ps(wk + kx * ts + c * bs);
#pragma GCC unroll 33
    for (int ix = 0; ix < NB + 2; ix++) {
      const __m512 xv = _mm512_set1_ps(r[(size_t)ix * C]);
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; kx++) {
        const int o = ix - kx;
        if (o >= 0 && o < NB)
#pragma GCC unroll 4
          for (int c = 0; c < NC; c++) a[o * NC + c] = _mm512_fmadd_ps(xv, w[kx][c], a[o * NC + c]);
      }
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NB; j++)
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) {
      float *o = yo + (size_t)j * Co + c * 16;
      __m512 v = a[j * NC + c];
      if (!first) v = _mm512_add_ps(v, _mm512_loadu_ps(o));
      _mm512_storeu_ps(o, v);
    }
}

/* A whole 3x3 tile (3 kernel rows x C/32 passes) at output (oy, ox), channel blocks cb.. */
AI void tile3(const float *xp, int wp, const int C, const float *wt, int Co, int oy, int ox, int cb, float *y,
              const int NB, const int NC) {
  const size_t ts = (size_t)C * 16, bs = (size_t)9 * C * 16;
  for (int ky = 0; ky < 3; ky++)
    for (int c0 = 0; c0 < C; c0 += 32)
      pass3(xp + ((size_t)(oy + ky) * wp + ox) * C + c0, C, wt + cb * bs + (size_t)ky * 3 * ts + (size_t)c0 * 16, ts,
            bs, y + (size_t)ox * Co + cb * 16, Co, ky == 0 && c0 == 0, NB, NC);
}

#define C3 64
/* The same tile over and over (weights 9*64*NC*64 bytes: in L2; x and y in L1). */
static __attribute__((noinline)) void tile3_hot(const float *xp, const float *wt, float *y, int shape) {
  if (shape == 0)
    tile3(xp, 58, C3, wt, 64, 0, 0, 0, y, 7, 2);
  else
    tile3(xp, 58, C3, wt, 64, 0, 0, 0, y, 7, 3);
}
/* Every 7 x 2 tile of a 56x56x64 image (padded input 58x58), 64 output channels: line by line,
 * channel-block pairs, then tiles (conv_line3_c's order). */
static __attribute__((noinline)) void tile3_image(const float *xp, const float *wt, float *y) {
  for (int oy = 0; oy < 56; oy++)
    for (int cb = 0; cb < 4; cb += 2)
      for (int ox = 0; ox < 56; ox += 7) tile3(xp, 58, C3, wt, 64, oy, ox, cb, y + (size_t)oy * 56 * 64, 7, 2);
}

/* The generic tile at 1x1: NB pixels x NC blocks, all C input channels, weights [cb][ci][16]. */
AI void tile1(const float *x, const int C, const float *wt, float *y, int Co, const int NB, const int NC) {
  __m512 a[28];
#pragma GCC unroll 28
  for (int i = 0; i < NB * NC; i++) a[i] = _mm512_setzero_ps();
  const size_t bs = (size_t)C * 16;
  for (int ci = 0; ci < C; ci++, wt += 16) {
    __m512 w[4];
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) w[c] = _mm512_loadu_ps(wt + c * bs);
#pragma GCC unroll 14
    for (int j = 0; j < NB; j++) {
      const __m512 xv = _mm512_set1_ps(x[(size_t)j * C + ci]);
#pragma GCC unroll 4
      for (int c = 0; c < NC; c++) a[j * NC + c] = _mm512_fmadd_ps(xv, w[c], a[j * NC + c]);
    }
  }
#pragma GCC unroll 14
  for (int j = 0; j < NB; j++)
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) _mm512_storeu_ps(y + (size_t)j * Co + c * 16, a[j * NC + c]);
}
#define CI1 256
#define CO1 64
#define W1 56
/* One 56-pixel line of a 256 -> 64 1x1 convolution in 14 x 2 tiles (conv_line_c's order). */
static __attribute__((noinline)) void line1(const float *x, const float *wt, float *y) {
  for (int cb = 0; cb < CO1 / 16; cb += 2)
    for (int ox = 0; ox < W1; ox += 14)
      tile1(x + (size_t)ox * CI1, CI1, wt + (size_t)cb * CI1 * 16, y + (size_t)ox * CO1 + cb * 16, CO1, 14, 2);
}

static float *filled(size_t n, int mod) {
  float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
  if (!p) {
    fprintf(stderr, "rn-bench-kernels: out of memory (%zu floats)\n", n);
    exit(1);
  }
  for (size_t i = 0; i < n; i++) p[i] = (float)(i % (size_t)mod) * 0.01f;
  return p;
}

int main(int argc, char **argv) {
  if (argc > 2 || (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")))) {
    fputs(USAGE, argc > 2 ? stderr : stdout);
    return argc > 2;
  }
  const int reps = argc > 1 ? atoi(argv[1]) : 3;
  if (reps < 1) {
    fprintf(stderr, "rn-bench-kernels: REPS must be a positive integer, got '%s'\n%s", argv[1], USAGE);
    return 1;
  }
  float *xp = filled((size_t)58 * 58 * C3, 7), *wt = filled((size_t)9 * C3 * 64, 5), *y = filled((size_t)56 * 56 * 64, 3);
  const int nlines = 64; /* 3.6 MB of x for the streaming 1x1 case */
  float *x1 = filled((size_t)nlines * W1 * CI1, 7), *w1 = filled((size_t)CI1 * CO1, 5);
  float *y1 = filled((size_t)nlines * W1 * CO1, 3);
  double sink = 0;
  printf("one thread, GF/s (share of the FMA loop)\n");
  for (int r = 0; r < reps; r++) {
    const long it = 20000000;
    double t = now();
    sink += fma_loop(it);
    const double peak = 2.0 * 16 * 42 * (double)it / (now() - t) / 1e9;
    double g[5];
    for (int s = 0; s < 2; s++) {
      const int m = 100000, nc = s ? 3 : 2;
      t = now();
      for (int i = 0; i < m; i++) tile3_hot(xp, wt, y, s);
      g[s] = 2.0 * 9 * C3 * 16 * 7 * nc * (double)m / (now() - t) / 1e9;
    }
    t = now();
    for (int i = 0; i < 10; i++) tile3_image(xp, wt, y);
    g[2] = 2.0 * 9 * C3 * 64 * 56 * 56 * 10 / (now() - t) / 1e9;
    const int m1 = 3000;
    t = now();
    for (int i = 0; i < m1; i++) line1(x1, w1, y1);
    g[3] = 2.0 * W1 * CI1 * CO1 * m1 / (now() - t) / 1e9;
    t = now();
    for (int i = 0; i < m1; i++) line1(x1 + (size_t)(i % nlines) * W1 * CI1, w1, y1 + (size_t)(i % nlines) * W1 * CO1);
    g[4] = 2.0 * W1 * CI1 * CO1 * m1 / (now() - t) / 1e9;
    printf("FMA loop %.1f | tile3 7x2 hot %.1f (%.0f%%), 7x3 hot %.1f (%.0f%%), 56x56x64 image %.1f (%.0f%%) | "
           "1x1 14x2 256->64 one line %.1f (%.0f%%), streaming %.1f (%.0f%%)\n",
           peak, g[0], 100 * g[0] / peak, g[1], 100 * g[1] / peak, g[2], 100 * g[2] / peak, g[3], 100 * g[3] / peak,
           g[4], 100 * g[4] / peak);
  }
  free(xp), free(wt), free(y), free(x1), free(w1), free(y1);
  return sink == 12345.0; /* keeps the FMA loop's result live */
}
#else
int main(void) {
  fputs("rn-bench-kernels: needs AVX-512 (built without __AVX512F__)\n", stderr);
  fputs(USAGE, stderr);
  return 1;
}
#endif
