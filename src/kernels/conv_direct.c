/* Direct (no im2col) stride-1 convolution for channel counts that are multiples of 16, NHWC,
 * AVX-512: the CIFAR ResNets' 3x3 convolutions with 16/32/64 channels, where im2col + GEMM is
 * weak (N = cout = 16 is a narrow GEMM, and im2col multiplies the activation traffic by kh*kw).
 *
 * Each thread owns whole images. Per image the input is copied once into a zero-padded buffer
 * (its own part of ws), so the inner loops have no bounds checks. Then
 * - forward: per output line, blocks of NB pixels x NC*16 output channels live in NB*NC zmm
 *   accumulators; for every tap and input channel one weight vector per channel block and one
 *   broadcast input value per pixel (FMA with a memory broadcast). Weights are used as
 *   Wt[co/16][ky][kx][ci][co%16] (transposed and blocked once per call into ws, so each channel
 *   block's weights are one contiguous stream).
 * - dx: the same kernel on the padded dy with the flipped, transposed weights
 *   W'[ky'][kx'][co][ci] = W[co][kh-1-ky'][kw-1-kx'][ci] and padding kh-1-pad (stride 1).
 * - dW: for one tap, one 16-wide block of input channels and 16 output channels: 16 accumulators
 *   (dW[co][tap][ci..ci+16] rows, in W's own OHWI layout), swept over all pixels of the image
 *   (per pixel one input vector and 16 broadcast dy values). Thread 0 accumulates into dw, the
 *   others into partial buffers in ws, summed at the end in a fixed order.
 * Everything is in float; results differ from the GEMM path only by summation order. */
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"

#ifdef __AVX512F__
#include <immintrin.h>
#include <omp.h>

#define AI static inline __attribute__((always_inline))

static int g_direct = -1; /* -1: read RN_CONV_DIRECT at first use */

void rn_conv_set_direct(int on) { g_direct = on != 0; }
int rn_conv_direct_enabled(void) {
  if (g_direct < 0) {
    const char *e = getenv("RN_CONV_DIRECT");
    g_direct = e && *e ? atoi(e) != 0 : 1;
  }
  return g_direct && __builtin_cpu_supports("avx512f");
}

static int g_direct_max_c = 1 << 20;
void rn_conv_set_direct_max_channels(int c) { g_direct_max_c = c; }

/* Widths where the direct path wins, measured on ResNet-50 shapes, batch 32, 2 threads (GF/s,
 * direct vs GEMM path): forward 64@56 260/152, 128@28 263/187, 256@14 278/209, 512@7 233/235;
 * backward 64@56 198/170, 128@28 224/225, 256@14 228/251, 512@7 154/238 (dW over 7x7 images is
 * short per image). So forward takes every width whose tiles are wide (multiples of 8, 24+,
 * 14 as one 14-pixel tile, 7 as 7 pixels x 2 channel blocks), backward only multiples of 8 and
 * 24+. Other widths (e.g. 13: 8+4+1 tiles) are slower than GEMM. */
static int g_all_widths;
void rn_conv_set_direct_all_widths(int on) { g_all_widths = on != 0; }
static int fwd_width(int w) { return g_all_widths || w % 8 == 0 || w >= 24 || w == 14 || w == 7; }
static int bwd_width(int w) { return g_all_widths || w % 8 == 0 || w >= 24; }

int rn_conv_direct_shape(const rn_conv_desc *d) {
  return d->stride == 1 && d->cin % 16 == 0 && d->cout % 16 == 0 && d->cin <= g_direct_max_c &&
         d->cout <= g_direct_max_c && d->pad < d->kh && d->pad < d->kw && d->kh <= 7 && d->kw <= 7 &&
         !(d->kh == 1 && d->kw == 1);
}
int rn_conv_direct_bwd_ok(const rn_conv_desc *d) {
  return rn_conv_direct_enabled() && rn_conv_direct_shape(d) && bwd_width(d->ow) && bwd_width(d->w);
}
int rn_conv_direct_ok(const rn_conv_desc *d) { return rn_conv_direct_enabled() && rn_conv_direct_shape(d) && fwd_width(d->ow); }

static size_t al16(size_t v) { return (v + 15) & ~(size_t)15; }

/* Per thread: the padded image of x (fwd, dW) or of dy (dx). */
static size_t pad_floats(const rn_conv_desc *d) {
  size_t a = (size_t)(d->h + 2 * d->pad) * (d->w + 2 * d->pad) * d->cin;
  int pq = d->kh - 1 - d->pad, pr = d->kw - 1 - d->pad;
  size_t b = (size_t)(d->oh + 2 * pq) * (d->ow + 2 * pr) * d->cout;
  return al16((a > b ? a : b) + 16);
}

size_t rn_conv_direct_workspace(const rn_conv_desc *d, int n, int threads) {
  (void)n;
  size_t nw = (size_t)d->cout * d->kh * d->kw * d->cin;
  return al16(nw) + (size_t)threads * pad_floats(d) + (size_t)(threads > 1 ? threads - 1 : 0) * al16(nw);
}

/* Copies img[hi][wi][c] into pad[(hi+2py)][(wi+2px)][c] with zero borders. */
static void pad_image(const float *img, int hi, int wi, int c, int py, int px, float *pad) {
  const int wp = wi + 2 * px;
  const size_t rowp = (size_t)wp * c;
  memset(pad, 0, (size_t)py * rowp * sizeof(float));
  for (int y = 0; y < hi; y++) {
    float *r = pad + (size_t)(y + py) * rowp;
    memset(r, 0, (size_t)px * c * sizeof(float));
    memcpy(r + (size_t)px * c, img + (size_t)y * wi * c, (size_t)wi * c * sizeof(float));
    memset(r + (size_t)(px + wi) * c, 0, (size_t)px * c * sizeof(float));
  }
  memset(pad + (size_t)(hi + py) * rowp, 0, (size_t)py * rowp * sizeof(float));
}

/* NB output pixels x NC channel blocks of 16 at output line oy, pixels ox0.., channel block cb0..
 * xp: padded input [..][wp][C]; wt: [kh][kw][C][Co]. Fixed-size arrays and constant NB, NC (and C
 * where specialised) so that the accumulators stay in registers and the broadcast offsets are
 * immediates. */
AI void tile(const float *xp, int wp, const int C, int kh, int kw, const float *wt, int Co, int oy, int ox0,
             int cb0, float *yl, int acc, const int NB, const int NC) {
  __m512 a[16];
  /* Partial sums over one kernel row (one tap when C*kw is large) are added into y: shorter
   * float accumulation chains (accuracy close to BLIS's) for the price of a few loads/stores. */
  const int per_tap = C * kw > 256;
  int first = !acc;
  for (int i = 0; i < NB * NC; i++) a[i] = _mm512_setzero_ps();
  for (int ky = 0; ky < kh; ky++) {
    const float *row = xp + ((size_t)(oy + ky) * wp + ox0) * C;
    for (int kx = 0; kx < kw; kx++) {
      if ((kx == 0 && ky > 0) || (per_tap && kx > 0))
        for (int i = 0; i < NB * NC; i++) a[i] = _mm512_setzero_ps();
      const float *r = row + (size_t)kx * C;
      /* blocked weights wt[cb][tap][ci][16]: one contiguous stream per channel block */
      const size_t bs = (size_t)kh * kw * C * 16;
      const float *wk = wt + (size_t)cb0 * bs + (size_t)(ky * kw + kx) * C * 16;
      for (int ci = 0; ci < C; ci++, r++, wk += 16) {
        __m512 w0 = _mm512_loadu_ps(wk), w1 = NC > 1 ? _mm512_loadu_ps(wk + bs) : w0;
        for (int j = 0; j < NB; j++) {
          __m512 xv = _mm512_set1_ps(r[j * C]);
          a[j * NC] = _mm512_fmadd_ps(xv, w0, a[j * NC]);
          if (NC > 1) a[j * NC + 1] = _mm512_fmadd_ps(xv, w1, a[j * NC + 1]);
        }
      }
      if (kx == kw - 1 || per_tap) {
        for (int j = 0; j < NB; j++)
          for (int c = 0; c < NC; c++) {
            float *o = yl + (size_t)(ox0 + j) * Co + (size_t)(cb0 + c) * 16;
            __m512 v = a[j * NC + c];
            if (!first) v = _mm512_add_ps(v, _mm512_loadu_ps(o));
            _mm512_storeu_ps(o, v);
          }
        first = 0;
      }
    }
  }
}

/* One output line: all pixels, channel blocks [cb_begin, ncb). */
AI void conv_line_c(const float *xp, int wp, const int C, int kh, int kw, const float *wt, int Co, int oy, int ow,
                    float *yl, int acc, int cb_begin, int ncb) {
  int cb = cb_begin;
  if (ow % 14 == 0) { /* 14, 28 (ResNet-50 layer3, layer2): 14-pixel tiles, no tails */
    for (; cb < ncb; cb++)
      for (int ox = 0; ox < ow; ox += 14) tile(xp, wp, C, kh, kw, wt, Co, oy, ox, cb, yl, acc, 14, 1);
    return;
  }
  if (ow == 7) { /* ResNet-50 layer4: 7 pixels x 2 channel blocks */
    for (; cb + 2 <= ncb; cb += 2) tile(xp, wp, C, kh, kw, wt, Co, oy, 0, cb, yl, acc, 7, 2);
    for (; cb < ncb; cb++) tile(xp, wp, C, kh, kw, wt, Co, oy, 0, cb, yl, acc, 7, 1);
    return;
  }
  /* Two channel blocks at a time (8 pixels x 2 blocks = 16 accumulators) when the line is short. */
  if (ow < 16)
    for (; cb + 2 <= ncb; cb += 2) {
      int ox = 0;
      for (; ox + 8 <= ow; ox += 8) tile(xp, wp, C, kh, kw, wt, Co, oy, ox, cb, yl, acc, 8, 2);
      for (; ox + 4 <= ow; ox += 4) tile(xp, wp, C, kh, kw, wt, Co, oy, ox, cb, yl, acc, 4, 2);
      for (; ox < ow; ox++) tile(xp, wp, C, kh, kw, wt, Co, oy, ox, cb, yl, acc, 1, 2);
    }
  for (; cb < ncb; cb++) {
    int ox = 0;
    for (; ox + 16 <= ow; ox += 16) tile(xp, wp, C, kh, kw, wt, Co, oy, ox, cb, yl, acc, 16, 1);
    for (; ox + 8 <= ow; ox += 8) tile(xp, wp, C, kh, kw, wt, Co, oy, ox, cb, yl, acc, 8, 1);
    for (; ox + 4 <= ow; ox += 4) tile(xp, wp, C, kh, kw, wt, Co, oy, ox, cb, yl, acc, 4, 1);
    for (; ox < ow; ox++) tile(xp, wp, C, kh, kw, wt, Co, oy, ox, cb, yl, acc, 1, 1);
  }
}

/* All output lines of one image, two channel blocks at a time over all lines, so that the
 * weights of those blocks (9*C*128 bytes: 590 KB at C = 512) stay in L2 instead of all weights
 * (9.4 MB at 512 channels) streaming from memory for every line. */
AI void conv_plane_c(const float *xp, int wp, const int C, int kh, int kw, const float *wt, int Co, int oh, int ow,
                     float *y, int acc) {
  const int ncb = Co / 16;
  for (int cb = 0; cb < ncb; cb += 2)
    for (int oy = 0; oy < oh; oy++)
      conv_line_c(xp, wp, C, kh, kw, wt, Co, oy, ow, y + (size_t)oy * ow * Co, acc, cb, cb + 2 < ncb ? cb + 2 : ncb);
}

static void conv_plane(const float *xp, int wp, int C, int kh, int kw, const float *wt, int Co, int oh, int ow,
                       float *y, int acc) {
  switch (C) {
    case 16: conv_plane_c(xp, wp, 16, kh, kw, wt, Co, oh, ow, y, acc); break;
    case 32: conv_plane_c(xp, wp, 32, kh, kw, wt, Co, oh, ow, y, acc); break;
    case 64: conv_plane_c(xp, wp, 64, kh, kw, wt, Co, oh, ow, y, acc); break;
    case 128: conv_plane_c(xp, wp, 128, kh, kw, wt, Co, oh, ow, y, acc); break;
    case 256: conv_plane_c(xp, wp, 256, kh, kw, wt, Co, oh, ow, y, acc); break;
    case 512: conv_plane_c(xp, wp, 512, kh, kw, wt, Co, oh, ow, y, acc); break;
    default: conv_plane_c(xp, wp, C, kh, kw, wt, Co, oh, ow, y, acc); break;
  }
}

static int threads_for(int n, int threads) {
  int t = threads;
  if (t > n) t = n;
  return t < 1 ? 1 : t;
}

void rn_conv_direct_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                            int threads) {
  const int C = d->cin, Co = d->cout, kh = d->kh, kw = d->kw, K = kh * kw * C;
  const size_t nw = (size_t)Co * K, pf = pad_floats(d);
  float *wt = ws, *pads = ws + al16(nw);
  /* wt[co/16][tap][ci][co%16] = w[co][tap][ci] (k = tap*C + ci) */
  for (int co = 0; co < Co; co++)
    for (int k = 0; k < K; k++) wt[((size_t)(co / 16) * K + k) * 16 + co % 16] = w[(size_t)co * K + k];
  const int T = threads_for(n, threads);
  const int wp = d->w + 2 * d->pad;
#pragma omp parallel num_threads(T)
  {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    float *xp = pads + (size_t)t * pf;
    for (int i = n * t / nt; i < n * (t + 1) / nt; i++) {
      pad_image(x + (size_t)i * d->h * d->w * C, d->h, d->w, C, d->pad, d->pad, xp);
      float *yi = y + (size_t)i * d->oh * d->ow * Co;
      conv_plane(xp, wp, C, kh, kw, wt, Co, d->oh, d->ow, yi, 0);
    }
  }
}

/* dW[co0..co0+16)[tap][cb*16..+16) += sum over the image's pixels (padded x, dy of the image). */
static void dw_block(const float *xp, int wp, int C, const float *dyi, int Co, int oh, int ow, int ky, int kx,
                     int cb, int co0, float *dwt, int K, int kw) {
  __m512 a[16];
  const size_t off = (size_t)(ky * kw + kx) * C + (size_t)cb * 16;
  /* Partial sums over groups of lines (>= 256 pixels) are added into dW: shorter float chains. */
  const int lines = ow >= 256 ? 1 : 256 / ow;
  for (int oy0 = 0; oy0 < oh; oy0 += lines) {
    for (int j = 0; j < 16; j++) a[j] = _mm512_setzero_ps();
    for (int oy = oy0; oy < oy0 + lines && oy < oh; oy++) {
      const float *xr = xp + ((size_t)(oy + ky) * wp + kx) * C + (size_t)cb * 16;
      const float *dr = dyi + (size_t)oy * ow * Co + co0;
      for (int ox = 0; ox < ow; ox++) {
        __m512 xv = _mm512_loadu_ps(xr + (size_t)ox * C);
        const float *g = dr + (size_t)ox * Co;
        for (int j = 0; j < 16; j++) a[j] = _mm512_fmadd_ps(_mm512_set1_ps(g[j]), xv, a[j]);
      }
    }
    for (int j = 0; j < 16; j++) {
      float *o = dwt + (size_t)(co0 + j) * K + off;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[j]));
    }
  }
}

void rn_conv_direct_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                             float *dx, int acc, float *dw, float *ws, int threads) {
  const int C = d->cin, Co = d->cout, kh = d->kh, kw = d->kw, K = kh * kw * C;
  const size_t nw = (size_t)Co * K, pf = pad_floats(d);
  const int T = threads_for(n, threads);
  float *wt = ws, *pads = ws + al16(nw), *part = pads + (size_t)T * pf;
  const int pq = kh - 1 - d->pad, pr = kw - 1 - d->pad; /* padding of the dx convolution */
  if (dx) /* blocked: wt[ci/16][ky'][kx'][co][ci%16] = w[co][kh-1-ky'][kw-1-kx'][ci] */
    for (int ky = 0; ky < kh; ky++)
      for (int kx = 0; kx < kw; kx++)
        for (int co = 0; co < Co; co++) {
          const float *src = w + (size_t)co * K + (size_t)((kh - 1 - ky) * kw + (kw - 1 - kx)) * C;
          for (int cb = 0; cb < C / 16; cb++)
            memcpy(wt + (((size_t)cb * kh * kw + (size_t)(ky * kw + kx)) * Co + co) * 16, src + (size_t)cb * 16,
                   16 * sizeof(float));
        }
#pragma omp parallel num_threads(T)
  {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    float *xp = pads + (size_t)t * pf;
    float *dwt = t == 0 ? dw : part + (size_t)(t - 1) * al16(nw);
    if (dw && t > 0) memset(dwt, 0, nw * sizeof(float));
    for (int i = n * t / nt; i < n * (t + 1) / nt; i++) {
      const float *dyi = dy + (size_t)i * d->oh * d->ow * Co;
      if (dw) {
        pad_image(x + (size_t)i * d->h * d->w * C, d->h, d->w, C, d->pad, d->pad, xp);
        const int wp = d->w + 2 * d->pad;
        for (int ky = 0; ky < kh; ky++)
          for (int kx = 0; kx < kw; kx++)
            for (int cb = 0; cb < C / 16; cb++)
              for (int co0 = 0; co0 < Co; co0 += 16) dw_block(xp, wp, C, dyi, Co, d->oh, d->ow, ky, kx, cb, co0, dwt, K, kw);
      }
      if (dx) {
        pad_image(dyi, d->oh, d->ow, Co, pq, pr, xp);
        const int wp = d->ow + 2 * pr;
        float *dxi = dx + (size_t)i * d->h * d->w * C;
        conv_plane(xp, wp, Co, kh, kw, wt, C, d->h, d->w, dxi, acc);
      }
    }
    if (dw && nt > 1) {
#pragma omp barrier
      size_t j0 = nw * (size_t)t / (size_t)nt, j1 = nw * (size_t)(t + 1) / (size_t)nt;
      for (int u = 1; u < nt; u++) {
        const float *p = part + (size_t)(u - 1) * al16(nw);
#pragma omp simd
        for (size_t j = j0; j < j1; j++) dw[j] += p[j];
      }
    }
  }
}

#else /* no AVX-512 at compile time: the direct path is never chosen */

void rn_conv_set_direct(int on) { (void)on; }
void rn_conv_set_direct_max_channels(int c) { (void)c; }
void rn_conv_set_direct_all_widths(int on) { (void)on; }
int rn_conv_direct_bwd_ok(const rn_conv_desc *d) {
  (void)d;
  return 0;
}
int rn_conv_direct_enabled(void) { return 0; }
int rn_conv_direct_ok(const rn_conv_desc *d) {
  (void)d;
  return 0;
}
int rn_conv_direct_shape(const rn_conv_desc *d) {
  (void)d;
  return 0;
}
size_t rn_conv_direct_workspace(const rn_conv_desc *d, int n, int threads) {
  (void)d, (void)n, (void)threads;
  return 0;
}
void rn_conv_direct_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                            int threads) {
  (void)d, (void)n, (void)x, (void)w, (void)y, (void)ws, (void)threads;
  RN_ASSERT(0 && "direct convolution needs AVX-512 at compile time");
}
void rn_conv_direct_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                             float *dx, int acc, float *dw, float *ws, int threads) {
  (void)d, (void)n, (void)x, (void)w, (void)dy, (void)dx, (void)acc, (void)dw, (void)ws, (void)threads;
  RN_ASSERT(0 && "direct convolution needs AVX-512 at compile time");
}
#endif
