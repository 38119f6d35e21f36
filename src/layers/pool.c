/* Max pool k x k / stride / pad over NHWC. Padding never wins: only real input pixels are
 * candidates (every window holds at least one since pad <= k/2). Ties keep the first pixel in
 * window order; NaN wins and sticks (as PyTorch). argmax holds the flat index h*w*c in the sample. */
#include <math.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"

rn_status rn_pool_desc_init(rn_pool_desc *d, int c, int h, int w, int k, int stride, int pad, rn_err *e) {
  memset(d, 0, sizeof *d);
  if (c < 1 || h < 1 || w < 1 || k < 1 || stride < 1 || pad < 0 || pad > k / 2 || h + 2 * pad < k ||
      w + 2 * pad < k || (int64_t)h * w * c > INT32_MAX)
    return rn_err_set(e, RN_EINVAL, "maxpool: impossible shape c=%d input=%dx%d kernel=%d stride=%d pad=%d "
                      "(needs pad <= kernel/2 and kernel <= padded input)", c, h, w, k, stride, pad);
  d->c = c, d->h = h, d->w = w, d->k = k, d->stride = stride, d->pad = pad;
  d->oh = (h + 2 * pad - k) / stride + 1;
  d->ow = (w + 2 * pad - k) / stride + 1;
  return RN_OK;
}

/* v = x, or with pre [relu](x * sc + sh) per channel (a lazy BN's output, with the instructions of
 * its affine pass: FMA, then 0 > v ? 0 : v, so the same bits). */
static inline __attribute__((always_inline)) float pool_in(const float *xp, int j, const rn_conv_pre *pre) {
  if (!pre) return xp[j];
  const float v = fmaf(xp[j], pre->sc[j], pre->sh[j]);
  return pre->relu && 0.0f > v ? 0.0f : v;
}

#if defined(__AVX512F__)
#include <immintrin.h>
static inline __attribute__((always_inline)) __m512 pool_in16(const float *xp, int j, const rn_conv_pre *pre) {
  const __m512 x = _mm512_loadu_ps(xp);
  if (!pre) return x;
  const __m512 v = _mm512_fmadd_ps(x, _mm512_loadu_ps(pre->sc + j), _mm512_loadu_ps(pre->sh + j));
  return pre->relu ? _mm512_max_ps(_mm512_setzero_ps(), v) : v; /* 0 > v ? 0 : v (NaN, -0 stay) */
}
#endif

static inline __attribute__((always_inline)) void maxpool_fwd(const rn_pool_desc *d, int n, const float *x, float *y,
                                                               int32_t *argmax, const rn_conv_pre *pre) {
  const int c = d->c, h = d->h, w = d->w, k = d->k, s = d->stride, p = d->pad, oh = d->oh, ow = d->ow;
  const int64_t lines = (int64_t)n * oh;
  int T = rn_blas_threads();
  if (lines * ow * c * k * k < 65536) T = 1;
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t l = 0; l < lines; l++) {
    int64_t i = l / oh;
    int oy = (int)(l - i * oh);
    const float *xi = x + (size_t)i * h * w * c;
    int y0 = oy * s - p, y1 = y0 + k;
    if (y0 < 0) y0 = 0;
    if (y1 > h) y1 = h;
    for (int ox = 0; ox < ow; ox++) {
      int x0 = ox * s - p, x1 = x0 + k;
      if (x0 < 0) x0 = 0;
      if (x1 > w) x1 = w;
      float *yr = y + ((size_t)l * ow + ox) * c;
      int32_t *ar = argmax + ((size_t)l * ow + ox) * c;
      int32_t base = (int32_t)(((size_t)y0 * w + x0) * c);
      const float *xr = xi + base;
#if defined(__AVX512F__)
      if (c % 16 == 0) { /* the same comparisons, 16 channels at a time */
        for (int j = 0; j < c; j += 16) {
          __m512 m = pool_in16(xr + j, j, pre);
          __m512i a = _mm512_add_epi32(_mm512_set1_epi32(base + j), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
          for (int iy = y0; iy < y1; iy++)
            for (int ix = x0; ix < x1; ix++) {
              if (iy == y0 && ix == x0) continue;
              const int32_t b = (int32_t)(((size_t)iy * w + ix) * c) + j;
              const __m512 v = pool_in16(xi + b, j, pre);
              const __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
              m = _mm512_mask_blend_ps(take, m, v);
              a = _mm512_mask_blend_epi32(take, a, _mm512_add_epi32(_mm512_set1_epi32(b), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)));
            }
          _mm512_storeu_ps(yr + j, m);
          _mm512_storeu_si512(ar + j, a);
        }
        continue;
      }
#endif
      for (int j = 0; j < c; j++) yr[j] = pool_in(xr, j, pre), ar[j] = base + j;
      for (int iy = y0; iy < y1; iy++)
        for (int ix = x0; ix < x1; ix++) {
          if (iy == y0 && ix == x0) continue;
          int32_t b = (int32_t)(((size_t)iy * w + ix) * c);
          const float *xp = xi + b;
          for (int j = 0; j < c; j++) {
            float v = pool_in(xp, j, pre);
            int take = (v > yr[j]) | (v != v);
            yr[j] = take ? v : yr[j];
            ar[j] = take ? b + j : ar[j];
          }
        }
    }
  }
}

void rn_maxpool_forward(const rn_pool_desc *d, int n, const float *x, float *y, int32_t *argmax) {
  maxpool_fwd(d, n, x, y, argmax, NULL);
}

void rn_maxpool_forward_pre(const rn_pool_desc *d, int n, const float *x, float *y, int32_t *argmax,
                            const rn_conv_pre *pre) {
  maxpool_fwd(d, n, x, y, argmax, pre);
}

void rn_maxpool_backward(const rn_pool_desc *d, int n, const int32_t *argmax, const float *dy, float *dx, int acc) {
  rn_maxpool_backward_masked(d, n, argmax, dy, NULL, dx, acc);
}

/* The backward as a gather: every input element is written once, as the sum of the gradients of
 * the windows whose argmax it is, added in the windows' order (oy, then ox, ascending), starting
 * from 0 (or dx with acc). That is the order and the arithmetic of the scatter
 * (memset(dx, 0); dx[argmax[o]] += dy[o] for o ascending), so the bits are the scatter's, but dx is
 * not cleared in a pass of its own and then read back and written again per window: one write of dx
 * and one read of dy and argmax (from cache, 2.25 windows per pixel for ResNet's 3/2/1). A masked
 * window (y <= 0) adds 0.0f, as the scatter does. */
static inline __attribute__((always_inline)) void pool_bwd_line(const rn_pool_desc *d, const int32_t *a,
                                                                const float *g, const float *ym, float *dr, int iy,
                                                                int acc, const int has_mask) {
  const int c = d->c, w = d->w, k = d->k, s = d->stride, p = d->pad, oh = d->oh, ow = d->ow;
  /* windows oy with oy*s - p <= iy <= oy*s - p + k - 1 */
  int oy0 = iy + p - k + 1 <= 0 ? 0 : (iy + p - k + 1 + s - 1) / s, oy1 = (iy + p) / s;
  if (oy1 > oh - 1) oy1 = oh - 1;
  /* the window range of ix, kept without a division per pixel: ox1 = (ix + p) / s, ox0 = the
   * smallest ox with ox*s - p + k - 1 >= ix (clamped to 0) */
  int q1 = p / s, r1 = p % s, ox0 = 0;
  for (int ix = 0; ix < w; ix++, (++r1 == s ? (r1 = 0, q1++) : 0)) {
    while (ox0 * s - p + k - 1 < ix) ox0++;
    const int ox1 = q1 > ow - 1 ? ow - 1 : q1;
    const int32_t flat = (int32_t)(((size_t)iy * w + ix) * c);
    float *di = dr + (size_t)ix * c;
    int j = 0;
#if defined(__AVX512F__)
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; j + 16 <= c; j += 16) {
      const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(flat + j), lane);
      __m512 v = acc ? _mm512_loadu_ps(di + j) : _mm512_setzero_ps();
      for (int oy = oy0; oy <= oy1; oy++)
        for (int ox = ox0; ox <= ox1; ox++) {
          const size_t o = ((size_t)oy * ow + ox) * c + j;
          const __mmask16 hit = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(a + o), idx);
          __m512 gv = _mm512_loadu_ps(g + o);
          if (has_mask) gv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(ym + o), _mm512_setzero_ps(), _CMP_GT_OQ), gv);
          v = _mm512_mask_add_ps(v, hit, v, gv);
        }
      _mm512_storeu_ps(di + j, v);
    }
#endif
    for (; j < c; j++) {
      float v = acc ? di[j] : 0.0f;
      for (int oy = oy0; oy <= oy1; oy++)
        for (int ox = ox0; ox <= ox1; ox++) {
          const size_t o = ((size_t)oy * ow + ox) * c + j;
          if (a[o] != flat + j) continue;
          v += has_mask ? (ym[o] > 0.0f ? g[o] : 0.0f) : g[o];
        }
      di[j] = v;
    }
  }
}

void rn_maxpool_backward_masked(const rn_pool_desc *d, int n, const int32_t *argmax, const float *dy, const float *y,
                                float *dx, int acc) {
  const size_t in = (size_t)d->h * d->w * d->c, out = (size_t)d->oh * d->ow * d->c;
  const int64_t lines = (int64_t)n * d->h;
  int T = rn_blas_threads();
  if ((size_t)n * (in + out) < 65536) T = 1;
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t l = 0; l < lines; l++) {
    const int64_t i = l / d->h;
    const int iy = (int)(l - i * d->h);
    float *dr = dx + (size_t)i * in + (size_t)iy * d->w * d->c;
    const int32_t *a = argmax + (size_t)i * out;
    const float *g = dy + (size_t)i * out;
    if (y) pool_bwd_line(d, a, g, y + (size_t)i * out, dr, iy, acc, 1);
    else pool_bwd_line(d, a, g, NULL, dr, iy, acc, 0);
  }
}
