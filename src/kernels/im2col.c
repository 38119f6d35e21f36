/* im2col / col2im over NHWC activations, on a chunk of output rows.
 *
 * Row m = (img*oh + oy)*ow + ox of the column matrix holds the receptive field of that output
 * pixel as kh*kw contiguous cin-vectors: col[r][(ky*kw + kx)*cin + ci]. For one ky the kw taps are
 * contiguous in the input (whatever the stride), so a row is built from kh memcpy calls plus zeros
 * for the padding.
 *
 * col2im is a gather: each thread owns whole input lines (img, iy) and sums, for every pixel of
 * its lines, the dcol entries of the chunk's rows that read that pixel. No atomics, no races, and
 * the order of the sum is fixed (deterministic whatever the thread count). */
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"

/* Below this many floats of work a parallel region costs more than it saves. */
#define PAR_MIN_FLOATS 32768

static int nthreads_for(size_t work) {
  int t = rn_blas_threads();
  return work < PAR_MIN_FLOATS ? 1 : (t < 1 ? 1 : t);
}

/* One column row r (output pixel m0 + r). */
static inline void im2col_row(const rn_conv_desc *d, const float *x, int64_t m0, int r, float *col) {
  const int cin = d->cin, kh = d->kh, kw = d->kw, s = d->stride, p = d->pad;
  const int h = d->h, w = d->w, oh = d->oh, ow = d->ow;
  const size_t K = (size_t)kh * kw * cin, rowk = (size_t)kw * cin;
  const int64_t ohw = (int64_t)oh * ow;
  {
    int64_t m = m0 + r;
    int64_t img = m / ohw;
    int rem = (int)(m - img * ohw);
    int oy = rem / ow, ox = rem - (rem / ow) * ow;
    const float *xi = x + (size_t)img * h * w * cin;
    float *c = col + (size_t)r * K;
    int iy0 = oy * s - p, ix0 = ox * s - p;
    int kx_lo = ix0 < 0 ? -ix0 : 0;
    int kx_hi = w - ix0 < kw ? w - ix0 : kw;
    for (int ky = 0; ky < kh; ky++) {
      float *ck = c + (size_t)ky * rowk;
      int iy = iy0 + ky;
      if (iy < 0 || iy >= h || kx_lo >= kx_hi) {
        memset(ck, 0, rowk * sizeof(float));
        continue;
      }
      if (kx_lo > 0) memset(ck, 0, (size_t)kx_lo * cin * sizeof(float));
      memcpy(ck + (size_t)kx_lo * cin, xi + ((size_t)iy * w + (ix0 + kx_lo)) * cin,
             (size_t)(kx_hi - kx_lo) * cin * sizeof(float));
      if (kx_hi < kw) memset(ck + (size_t)kx_hi * cin, 0, (size_t)(kw - kx_hi) * cin * sizeof(float));
    }
  }
}

void rn_im2col_rows(const rn_conv_desc *d, const float *x, int64_t m0, int rows, float *col) {
  const size_t K = (size_t)d->kh * d->kw * d->cin;
  const int T = nthreads_for((size_t)rows * K);
#pragma omp parallel for num_threads(T) schedule(static)
  for (int r = 0; r < rows; r++) im2col_row(d, x, m0, r, col);
}

void rn_im2col_rows_serial(const rn_conv_desc *d, const float *x, int64_t m0, int rows, float *col) {
  for (int r = 0; r < rows; r++) im2col_row(d, x, m0, r, col);
}

/* One input line g of dx. */
static inline void col2im_line(const rn_conv_desc *d, const float *dcol, int64_t m0, int rows, float *dx,
                               int64_t g, int64_t fresh_from) {
  const int cin = d->cin, kh = d->kh, kw = d->kw, s = d->stride, p = d->pad;
  const int h = d->h, w = d->w, oh = d->oh, ow = d->ow;
  const size_t K = (size_t)kh * kw * cin;
  const int64_t m1 = m0 + rows;
  {
    int64_t img = g / h;
    int iy = (int)(g - img * h);
    float *dl = dx + (size_t)g * w * cin;
    const int fresh = g >= fresh_from;
    /* Taps ky that reach this line from an output line inside the chunk. */
    int kys[64], oys[64], nky = 0; /* kh <= 64 asserted by the caller */
    for (int ky = 0; ky < kh; ky++) {
      int t = iy + p - ky;
      if (t < 0 || t % s) continue;
      int oy = t / s;
      if (oy >= oh) continue;
      int64_t lm0 = (img * oh + oy) * (int64_t)ow; /* first row of that output line */
      if (lm0 + ow <= m0 || lm0 >= m1) continue;
      kys[nky] = ky, oys[nky] = oy, nky++;
    }
    for (int ix = 0; ix < w; ix++) {
      float *dp = dl + (size_t)ix * cin;
      if (fresh) memset(dp, 0, (size_t)cin * sizeof(float));
      if (!nky) continue;
      /* taps kx = kx0, kx0 + s, ... reach ix from output column ox = (ix + p - kx) / s */
      int u0 = ix + p, kx0 = u0 % s, kx_end = u0 + 1 < kw ? u0 + 1 : kw;
      int ox_hi = ow - 1;
      for (int a = 0; a < nky; a++) {
        int64_t lm0 = (img * oh + oys[a]) * (int64_t)ow;
        const float *srow = dcol + ((size_t)kys[a] * kw) * cin;
        for (int kx = kx0; kx < kx_end; kx += s) {
          int ox = (u0 - kx) / s;
          if (ox > ox_hi) continue;
          int64_t m = lm0 + ox;
          if (m < m0 || m >= m1) continue;
          const float *src = srow + (size_t)(m - m0) * K + (size_t)kx * cin;
          for (int c = 0; c < cin; c++) dp[c] += src[c];
        }
      }
    }
  }
}

void rn_col2im_rows(const rn_conv_desc *d, const float *dcol, int64_t m0, int rows, float *dx,
                    int64_t g_begin, int64_t g_end, int64_t fresh_from) {
  if (g_end <= g_begin) return;
  const int T = nthreads_for((size_t)(g_end - g_begin) * d->w * d->cin * (size_t)(d->kh * d->kw > 1 ? 2 : 1));
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t g = g_begin; g < g_end; g++) col2im_line(d, dcol, m0, rows, dx, g, fresh_from);
}

void rn_col2im_rows_serial(const rn_conv_desc *d, const float *dcol, int64_t m0, int rows, float *dx,
                           int64_t g_begin, int64_t g_end, int64_t fresh_from) {
  for (int64_t g = g_begin; g < g_end; g++) col2im_line(d, dcol, m0, rows, dx, g, fresh_from);
}
