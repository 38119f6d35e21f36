/* The ImageNet stem: 7x7 stride-2 convolution of a 3-channel image (ResNet conv1), pad 3, cout a
 * multiple of 16; NHWC, AVX-512. Forward and dW (the stem has no dx: its input is the data).
 *
 * On the GEMM path im2col expands every output pixel into 147 values (K = 7*7*3) and BLIS runs a
 * K = 147, N = 64 GEMM: ~200 GF/s forward and ~150 dW on 2 threads (rn-bench-conv). The generic
 * direct tile (runtime C = 3) was no faster (75 GF/s on one thread). Here C = 3 is fixed, so for
 * one kernel row ky the 21 taps (kx, ci) of output pixel ox are the 21 consecutive floats at
 * 6*ox of the padded input row 2*oy + ky, and every broadcast offset is an immediate:
 * - forward: 14 pixels x 2 channel blocks of 16 (28 zmm accumulators) over all 147 taps; per tap
 *   2 weight vectors (wt[cb][k][16]) and 14 broadcasts for 28 FMAs (31 registers: 7 x 4 blocks,
 *   33 registers, spilled). One store per output vector; the BN statistics of the output in the
 *   epilogue (double).
 * - dW: per output line and kernel row, 7 taps x 4 channel blocks (28 accumulators, loaded from
 *   and stored back to the thread's blocked dW) over the line's pixels: per pixel 4 dy vectors and
 *   7 broadcasts for 28 FMAs. That is 33 registers, so GCC keeps one accumulator in memory (a load
 *   and a store per pixel); still 330-336 GF/s against 260-265 for 7 x 2 (2 threads, alternating).
 *   Per-thread blocked partials are summed into dw in a fixed order.
 * Threads own whole images (each pads its image once). Results differ from the GEMM path only in
 * summation order. RN_CONV_STEM7=0: the GEMM path (A/B). */
#include <stdlib.h>
#include <string.h>

#include "rn/layers.h"

#ifdef __AVX512F__
#include <immintrin.h>
#include <omp.h>

#define AI static inline __attribute__((always_inline))
#define SK 147 /* taps: 7 x 7 x 3 */
#define SQ 21  /* taps of one kernel row: 7 x 3 */

static int g_stem7 = -1;
int rn_conv_stem7_shape(const rn_conv_desc *d) {
  if (g_stem7 < 0) {
    const char *v = getenv("RN_CONV_STEM7");
    g_stem7 = !(v && v[0] == '0');
  }
  return g_stem7 && d->cin == 3 && d->kh == 7 && d->kw == 7 && d->stride == 2 && d->pad == 3 && d->cout % 16 == 0;
}

static size_t al16(size_t v) { return (v + 15) & ~(size_t)15; }
static size_t pad_floats(const rn_conv_desc *d) { return al16((size_t)(d->h + 6) * (d->w + 6 + 1) * 3 + 16); }
static size_t nwf(const rn_conv_desc *d) { return al16((size_t)d->cout * SK); }

/* wt (blocked weights or dW), then per thread: the padded image and a blocked dW partial */
size_t rn_conv_stem7_workspace(const rn_conv_desc *d, int threads) {
  return nwf(d) + (size_t)threads * (pad_floats(d) + nwf(d));
}

/* img[h][w][3] into pad[h+6][w+6][3] with zero borders (and a zero tail: the widest row read). */
static void pad3(const float *img, int h, int w, float *pad, size_t pf) {
  const size_t rowp = (size_t)(w + 6) * 3;
  memset(pad, 0, 3 * rowp * sizeof(float));
  for (int y = 0; y < h; y++) {
    float *r = pad + (size_t)(y + 3) * rowp;
    memset(r, 0, 9 * sizeof(float));
    memcpy(r + 9, img + (size_t)y * w * 3, (size_t)w * 3 * sizeof(float));
    memset(r + 9 + (size_t)w * 3, 0, 9 * sizeof(float));
  }
  memset(pad + (size_t)(h + 3) * rowp, 0, (pf - (size_t)(h + 3) * rowp) * sizeof(float));
}

AI void stat_acc(__m512 v, __m512d *s) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  s[0] = _mm512_add_pd(s[0], lo), s[1] = _mm512_add_pd(s[1], hi);
  s[2] = _mm512_fmadd_pd(lo, lo, s[2]), s[3] = _mm512_fmadd_pd(hi, hi, s[3]);
}

/* a + x*w with the accumulator as the destination register (no copies between tiles' FMAs) */
AI __m512 fma_acc(__m512 x, __m512 w, __m512 a) {
  __asm__("vfmadd231ps %2, %1, %0" : "+v"(a) : "v"(x), "v"(w));
  return a;
}

/* Output pixels ox0..ox0+NB of line oy, channel blocks cb0..cb0+NC. */
AI void ftile(const float *xp, size_t rowp, const float *wt, int Co, int oy, int ox0, int cb0, float *yl,
              double *st, const int NB, const int NC) {
  __m512 a[28];
#pragma GCC unroll 28
  for (int i = 0; i < NB * NC; i++) a[i] = _mm512_setzero_ps();
  for (int ky = 0; ky < 7; ky++) {
    const float *r = xp + (size_t)(2 * oy + ky) * rowp + (size_t)6 * ox0;
    const float *wk = wt + ((size_t)cb0 * SK + (size_t)ky * SQ) * 16;
    /* Not unrolled across kx: r[6*j + q] is the same float for (j, q + 6) and (j + 1, q), and with
     * all 21 taps unrolled GCC kept such broadcasts alive across taps and spilled the tile. */
#pragma GCC unroll 1
    for (int q = 0; q < SQ; q++) {
      __m512 w[2];
#pragma GCC unroll 2
      for (int c = 0; c < NC; c++) w[c] = _mm512_loadu_ps(wk + ((size_t)c * SK + q) * 16);
#pragma GCC unroll 14
      for (int j = 0; j < NB; j++) {
        const __m512 xv = _mm512_set1_ps(r[6 * j + q]);
#pragma GCC unroll 2
        for (int c = 0; c < NC; c++) a[j * NC + c] = fma_acc(xv, w[c], a[j * NC + c]);
      }
    }
  }
  for (int c = 0; c < NC; c++) {
    __m512d s[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int j = 0; j < NB; j++) {
      _mm512_storeu_ps(yl + (size_t)(ox0 + j) * Co + (size_t)(cb0 + c) * 16, a[j * NC + c]);
      if (st) stat_acc(a[j * NC + c], s);
    }
    if (st) {
      double *p1 = st + (cb0 + c) * 16, *p2 = p1 + Co;
      _mm512_storeu_pd(p1, _mm512_add_pd(_mm512_loadu_pd(p1), s[0]));
      _mm512_storeu_pd(p1 + 8, _mm512_add_pd(_mm512_loadu_pd(p1 + 8), s[1]));
      _mm512_storeu_pd(p2, _mm512_add_pd(_mm512_loadu_pd(p2), s[2]));
      _mm512_storeu_pd(p2 + 8, _mm512_add_pd(_mm512_loadu_pd(p2 + 8), s[3]));
    }
  }
}

AI void fline_nc(const float *xp, size_t rowp, const float *wt, int Co, int oy, int ow, int cb, float *yl, double *st,
                 const int NC) {
  int ox = 0;
  for (; ox + 14 <= ow; ox += 14) ftile(xp, rowp, wt, Co, oy, ox, cb, yl, st, 14, NC);
  for (; ox + 7 <= ow; ox += 7) ftile(xp, rowp, wt, Co, oy, ox, cb, yl, st, 7, NC);
  for (; ox + 4 <= ow; ox += 4) ftile(xp, rowp, wt, Co, oy, ox, cb, yl, st, 4, NC);
  for (; ox < ow; ox++) ftile(xp, rowp, wt, Co, oy, ox, cb, yl, st, 1, NC);
}

static int threads_for(int n, int threads) {
  int t = threads > n ? n : threads;
  return t < 1 ? 1 : t;
}

void rn_conv_stem7_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                           int threads, double *stats) {
  const int Co = d->cout, ncb = Co / 16;
  const size_t pf = pad_floats(d), rowp = (size_t)(d->w + 6) * 3;
  float *wt = ws, *pads = ws + nwf(d);
  for (int co = 0; co < Co; co++) /* wt[co/16][k][co%16] = w[co][k] */
    for (int k = 0; k < SK; k++) wt[((size_t)(co / 16) * SK + k) * 16 + co % 16] = w[(size_t)co * SK + k];
  const int T = threads_for(n, threads);
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    float *xp = pads + (size_t)t * (pf + nwf(d));
    for (int i = n * t / nt; i < n * (t + 1) / nt; i++) {
      pad3(x + (size_t)i * d->h * d->w * 3, d->h, d->w, xp, pf);
      double *st = stats ? stats + (size_t)i * 2 * Co : NULL;
      if (st) memset(st, 0, 2 * (size_t)Co * sizeof(double));
      float *yi = y + (size_t)i * d->oh * d->ow * Co;
      for (int oy = 0; oy < d->oh; oy++) {
        float *yl = yi + (size_t)oy * d->ow * Co;
        int cb = 0;
        for (; cb + 2 <= ncb; cb += 2) fline_nc(xp, rowp, wt, Co, oy, d->ow, cb, yl, st, 2);
        for (; cb < ncb; cb++) fline_nc(xp, rowp, wt, Co, oy, d->ow, cb, yl, st, 1);
      }
    }
  }
}

/* dWb[cb0..+NC][ky*21 + q0 .. +7][16] += sum over the pixels of line oy of dy * x (7 taps q0..q0+6
 * of kernel row ky). */
AI void wtile(const float *xp, size_t rowp, const float *dyl, int Co, int oy, int ow, int ky, int q0, int cb0,
              float *dwb, const int NC) {
  __m512 a[7][4];
  float *base = dwb + ((size_t)cb0 * SK + (size_t)ky * SQ + q0) * 16;
#pragma GCC unroll 7
  for (int j = 0; j < 7; j++)
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) a[j][c] = _mm512_loadu_ps(base + ((size_t)c * SK + j) * 16);
  const float *r = xp + (size_t)(2 * oy + ky) * rowp + q0;
  const float *g = dyl + (size_t)cb0 * 16;
  for (int ox = 0; ox < ow; ox++, r += 6, g += Co) {
    __m512 gv[4];
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) gv[c] = _mm512_loadu_ps(g + c * 16);
#pragma GCC unroll 7
    for (int j = 0; j < 7; j++) {
      const __m512 xv = _mm512_set1_ps(r[j]);
#pragma GCC unroll 4
      for (int c = 0; c < NC; c++) a[j][c] = fma_acc(xv, gv[c], a[j][c]);
    }
  }
#pragma GCC unroll 7
  for (int j = 0; j < 7; j++)
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) _mm512_storeu_ps(base + ((size_t)c * SK + j) * 16, a[j][c]);
}

void rn_conv_stem7_backward(const rn_conv_desc *d, int n, const float *x, const float *dy, float *dw, float *ws,
                            int threads) {
  const int Co = d->cout, ncb = Co / 16;
  const size_t pf = pad_floats(d), rowp = (size_t)(d->w + 6) * 3, nw = (size_t)Co * SK;
  float *pads = ws + nwf(d);
  const int T = threads_for(n, threads);
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    float *xp = pads + (size_t)t * (pf + nwf(d)), *dwb = xp + pf;
    memset(dwb, 0, nw * sizeof(float));
    for (int i = n * t / nt; i < n * (t + 1) / nt; i++) {
      pad3(x + (size_t)i * d->h * d->w * 3, d->h, d->w, xp, pf);
      const float *dyi = dy + (size_t)i * d->oh * d->ow * Co;
      for (int oy = 0; oy < d->oh; oy++) {
        const float *dyl = dyi + (size_t)oy * d->ow * Co;
        for (int ky = 0; ky < 7; ky++)
          for (int q0 = 0; q0 < SQ; q0 += 7) {
            int cb = 0;
            for (; cb + 4 <= ncb; cb += 4) wtile(xp, rowp, dyl, Co, oy, d->ow, ky, q0, cb, dwb, 4);
            for (; cb < ncb; cb++) wtile(xp, rowp, dyl, Co, oy, d->ow, ky, q0, cb, dwb, 1);
          }
      }
    }
#pragma omp barrier
    /* dw[co][k] += the partials of threads 0..nt-1 in order, rows of dw split across threads */
    for (int co = Co * t / nt; co < Co * (t + 1) / nt; co++)
      for (int k = 0; k < SK; k++) {
        float s = 0.0f;
        const size_t off = pf + ((size_t)(co / 16) * SK + k) * 16 + co % 16;
        for (int u = 0; u < nt; u++) s += pads[(size_t)u * (pf + nwf(d)) + off];
        dw[(size_t)co * SK + k] += s;
      }
  }
}

#else /* no AVX-512: never chosen */

int rn_conv_stem7_shape(const rn_conv_desc *d) {
  (void)d;
  return 0;
}
size_t rn_conv_stem7_workspace(const rn_conv_desc *d, int threads) {
  (void)d, (void)threads;
  return 0;
}
void rn_conv_stem7_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                           int threads, double *stats) {
  (void)d, (void)n, (void)x, (void)w, (void)y, (void)ws, (void)threads, (void)stats;
  abort();
}
void rn_conv_stem7_backward(const rn_conv_desc *d, int n, const float *x, const float *dy, float *dw, float *ws,
                            int threads) {
  (void)d, (void)n, (void)x, (void)dy, (void)dw, (void)ws, (void)threads;
  abort();
}
#endif
