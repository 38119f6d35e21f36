/* Naive direct convolution (double accumulation): the reference the GEMM path is tested against.
 * Written as gathers so nothing is allocated; slow, for tests only. */
#include "rn/layers.h"

void rn_ref_conv_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y) {
  const int cin = d->cin, cout = d->cout, kh = d->kh, kw = d->kw, s = d->stride, p = d->pad;
  const int h = d->h, wd = d->w, oh = d->oh, ow = d->ow;
  for (int i = 0; i < n; i++)
    for (int oy = 0; oy < oh; oy++)
      for (int ox = 0; ox < ow; ox++)
        for (int co = 0; co < cout; co++) {
          double acc = 0;
          for (int ky = 0; ky < kh; ky++) {
            int iy = oy * s - p + ky;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < kw; kx++) {
              int ix = ox * s - p + kx;
              if (ix < 0 || ix >= wd) continue;
              const float *xp = x + (((size_t)i * h + iy) * wd + ix) * cin;
              const float *wp = w + (((size_t)co * kh + ky) * kw + kx) * cin;
              for (int ci = 0; ci < cin; ci++) acc += (double)xp[ci] * wp[ci];
            }
          }
          y[(((size_t)i * oh + oy) * ow + ox) * cout + co] = (float)acc;
        }
}

void rn_ref_conv_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                          float *dx, float *dw) {
  const int cin = d->cin, cout = d->cout, kh = d->kh, kw = d->kw, s = d->stride, p = d->pad;
  const int h = d->h, wd = d->w, oh = d->oh, ow = d->ow;
  if (dx)
    for (int i = 0; i < n; i++)
      for (int iy = 0; iy < h; iy++)
        for (int ix = 0; ix < wd; ix++)
          for (int ci = 0; ci < cin; ci++) {
            double acc = 0;
            for (int ky = 0; ky < kh; ky++) {
              int t = iy + p - ky;
              if (t < 0 || t % s || t / s >= oh) continue;
              int oy = t / s;
              for (int kx = 0; kx < kw; kx++) {
                int u = ix + p - kx;
                if (u < 0 || u % s || u / s >= ow) continue;
                int ox = u / s;
                const float *dp = dy + (((size_t)i * oh + oy) * ow + ox) * cout;
                for (int co = 0; co < cout; co++)
                  acc += (double)dp[co] * w[(((size_t)co * kh + ky) * kw + kx) * cin + ci];
              }
            }
            dx[(((size_t)i * h + iy) * wd + ix) * cin + ci] = (float)acc;
          }
  if (dw)
    for (int co = 0; co < cout; co++)
      for (int ky = 0; ky < kh; ky++)
        for (int kx = 0; kx < kw; kx++)
          for (int ci = 0; ci < cin; ci++) {
            double acc = 0;
            for (int i = 0; i < n; i++)
              for (int oy = 0; oy < oh; oy++) {
                int iy = oy * s - p + ky;
                if (iy < 0 || iy >= h) continue;
                for (int ox = 0; ox < ow; ox++) {
                  int ix = ox * s - p + kx;
                  if (ix < 0 || ix >= wd) continue;
                  acc += (double)dy[(((size_t)i * oh + oy) * ow + ox) * cout + co] *
                         x[(((size_t)i * h + iy) * wd + ix) * cin + ci];
                }
              }
            dw[(((size_t)co * kh + ky) * kw + kx) * cin + ci] = (float)acc;
          }
}
