/* The machine's FMA peak right now: every thread runs independent chains of register-only
 * fused multiply-adds (12 accumulators, more than latency x ports), timed together. The host's
 * clock and its other tenants move this figure from run to run (docs/PERF.md), so benchmarks
 * measure it in the same run as the figures they compare with it. */
#include <omp.h>

#include "rn/core.h"
#include "rn/kernels.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#ifdef __AVX512F__
typedef __m512 vec;
#define VW 16
#define SET1 _mm512_set1_ps
#define ADD _mm512_add_ps
#define FMA1(a) __asm__ volatile("vfmadd132ps %1, %2, %0" : "+v"(a) : "v"(b), "v"(c))
#else
typedef __m256 vec;
#define VW 8
#define SET1 _mm256_set1_ps
#define ADD _mm256_add_ps
#define FMA1(a) __asm__ volatile("vfmadd132ps %1, %2, %0" : "+x"(a) : "x"(b), "x"(c))
#endif

/* a = a * 0.5 + 1 converges to 2: no overflow, no denormals. */
static float chains(long n) {
  vec a0 = SET1(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0,
      a11 = a0;
  const vec b = SET1(0.5f), c = SET1(1.0f);
  for (long i = 0; i < n; i++) {
    FMA1(a0); FMA1(a1); FMA1(a2); FMA1(a3); FMA1(a4); FMA1(a5);
    FMA1(a6); FMA1(a7); FMA1(a8); FMA1(a9); FMA1(a10); FMA1(a11);
  }
  vec s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
  s = ADD(s, ADD(ADD(a8, a9), ADD(a10, a11)));
  float f[VW];
  __builtin_memcpy(f, &s, sizeof f);
  return f[0];
}

double rn_fma_peak_gflops(int threads) {
  if (threads < 1) threads = 1;
  long n = 1 << 20;
  double best = 0;
  /* until one repetition takes ~50 ms, then 12 more: the host's slow spells last up to a few
   * hundred ms, and a peak measured inside one inflates every "% of peak" (3 repetitions of 50 ms
   * once gave 234 GF/s, below a GEMM measured a second later) */
  for (int rep = 0, timed = 0; timed < 12 && rep < 40; rep++) {
    volatile float sink = 0;
    double t0 = rn_now();
#pragma omp parallel num_threads(threads)
    {
      float v = chains(n);
      if (v != 2.0f) sink = v; /* keeps the result alive */
    }
    double t = rn_now() - t0;
    (void)sink;
    double g = (double)threads * n * 12 * VW * 2 / t * 1e-9;
    if (g > best) best = g;
    if (t < 0.05) n *= 2;
    else timed++;
  }
  return best;
}
#else
double rn_fma_peak_gflops(int threads) {
  (void)threads;
  return 0;
}
#endif
