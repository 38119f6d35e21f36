/* Weight gradient of a 1x1 convolution (stride 1 or 2; cin, cout multiples of 16; NHWC, AVX-512):
 * dW[co][ci] += sum over output pixels p of dy[p][co] * x[in(p)][ci], for one thread's images.
 *
 * It is a GEMM with a long K (the pixels) and a small output (cout x cin). Register tile: 6
 * output channels (broadcast dy values) x 64 input channels (4 zmm loads of x): per pixel 4 + 6
 * loads for 24 FMAs, so the FMA ports, not the load ports, set the pace (the generic direct dW
 * tile, 16 broadcasts + 1 load per 16 FMAs, ran at 110-140 GF/s on 2 threads; BLIS, which has to
 * pack the transposed dy, at 90-140). The pixels are taken in chunks of 64 (stride 2: whole
 * output lines); each chunk is first copied into two packed panels, dy as [co/16][p][16] and x as
 * [ci/64][p][64] (vector copies; x with a lazy BN applied when pre is given), so that every
 * tile streams both sequentially (read in place, rows
 * 1-4 KB apart, 64->256@56 ran at ~160 instead of ~200 GF/s). Then the
 * tiles sweep the 64-channel x panels (outer: 16 KB, stays in L1) and the 6-, 6- and 4-channel
 * parts of every 16-channel dy block (inner), each adding its sums into dW. Results differ from the
 * other paths only in summation order (float partial sums over a chunk). */
#include <stdlib.h>

#include "rn/layers.h"

#ifdef __AVX512F__
#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

#define DW1_CHUNK 64 /* pixels per chunk (stride 2: whole lines) */

/* One chunk's segments: x rows (pixel stride xps floats) and dy rows (stride gps), cnt pixels each. */
typedef struct {
  const float *x[64];
  const float *g[64];
  int cnt[64];
  int n;
} seglist;

/* One tile over a packed chunk of np pixels: ap = the dy panel of its 16-channel block at its first
 * channel (row stride 16), bp = the x panel of its 64-channel block (row stride 16 * NV). */
AI void ptile(const float *ap, const float *bp, int np, int co0, int ci0, float *dwt, int C, const int M,
              const int NV) {
  __m512 a[6][4];
#pragma GCC unroll 6
  for (int j = 0; j < M; j++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) a[j][v] = _mm512_setzero_ps();
  for (int p = 0; p < np; p++, ap += 16, bp += 16 * NV) {
    __m512 xv[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) xv[v] = _mm512_loadu_ps(bp + 16 * v);
#pragma GCC unroll 6
    for (int j = 0; j < M; j++) {
      const __m512 gv = _mm512_set1_ps(ap[j]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) a[j][v] = _mm512_fmadd_ps(gv, xv[v], a[j][v]);
    }
  }
#pragma GCC unroll 6
  for (int j = 0; j < M; j++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      float *o = dwt + (size_t)(co0 + j) * C + ci0 + 16 * v;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[j][v]));
    }
}

AI void pchunk_nv(const float *ap, const float *bp, int np, int ci0, int Co, float *dwt, int C, const int NV) {
  for (int cb = 0; cb < Co / 16; cb++) { /* tiles of 6, 6 and 4 output channels per block of 16 */
    const float *a = ap + (size_t)cb * 16 * np;
    ptile(a, bp, np, cb * 16, ci0, dwt, C, 6, NV);
    ptile(a + 6, bp, np, cb * 16 + 6, ci0, dwt, C, 6, NV);
    ptile(a + 12, bp, np, cb * 16 + 12, ci0, dwt, C, 4, NV);
  }
}

static void pchunk(const seglist *s, size_t xps, size_t gps, int C, int Co, float *dwt, float *ap, float *bp,
                   const rn_conv_pre *pre) {
  int np = 0;
  for (int q = 0; q < s->n; q++) np += s->cnt[q];
  int p = 0;
  for (int q = 0; q < s->n; q++)
    for (int i = 0; i < s->cnt[q]; i++, p++) {
      const float *g = s->g[q] + (size_t)i * gps, *x = s->x[q] + (size_t)i * xps;
      for (int co0 = 0; co0 < Co; co0 += 16) _mm512_storeu_ps(ap + ((size_t)co0 * np + (size_t)p * 16), _mm512_loadu_ps(g + co0));
      for (int ci0 = 0; ci0 < C; ci0 += 64) {
        const int w = C - ci0 < 64 ? C - ci0 : 64;
        float *o = bp + (size_t)ci0 * np + (size_t)p * w;
        if (!pre)
          for (int c = 0; c < w; c += 16) _mm512_storeu_ps(o + c, _mm512_loadu_ps(x + ci0 + c));
        else /* a lazy BN's output: [relu](x * sc + sh), the BN's own instructions (same bits) */
          for (int c = 0; c < w; c += 16) {
            __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(x + ci0 + c), _mm512_loadu_ps(pre->sc + ci0 + c),
                                       _mm512_loadu_ps(pre->sh + ci0 + c));
            if (pre->relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
            _mm512_storeu_ps(o + c, v);
          }
      }
    }
  int ci0 = 0;
  for (; ci0 + 64 <= C; ci0 += 64) pchunk_nv(ap, bp + (size_t)ci0 * np, np, ci0, Co, dwt, C, 4);
  switch ((C - ci0) / 16) {
    case 3: pchunk_nv(ap, bp + (size_t)ci0 * np, np, ci0, Co, dwt, C, 3); break;
    case 2: pchunk_nv(ap, bp + (size_t)ci0 * np, np, ci0, Co, dwt, C, 2); break;
    case 1: pchunk_nv(ap, bp + (size_t)ci0 * np, np, ci0, Co, dwt, C, 1); break;
    default: break;
  }
}

/* The chunk that starts at `pos` (stride 1: a pixel index; stride 2: an output line index). */
static size_t make_chunk(const rn_conv_desc *d, const float *x, const float *dy, size_t g0, size_t pos, size_t end,
                         seglist *s) {
  const int C = d->cin, Co = d->cout, oh = d->oh, ow = d->ow;
  s->n = 0;
  if (d->stride == 1) { /* the images' pixels are one contiguous run in x and in dy (dy from pixel g0) */
    s->x[0] = x + pos * C;
    s->g[0] = dy + (pos - g0) * Co;
    s->cnt[0] = (int)(end - pos < (size_t)DW1_CHUNK ? end - pos : (size_t)DW1_CHUNK);
    s->n = 1;
    return pos + (size_t)s->cnt[0];
  }
  /* stride 2: whole output lines (fewer than DW1_CHUNK + ow pixels), x read at every other pixel
   * of every other line */
  const int lines = (DW1_CHUNK + ow - 1) / ow;
  for (; pos < end && s->n < lines; pos++, s->n++) {
    const size_t img = pos / (size_t)oh, oy = pos % (size_t)oh;
    s->x[s->n] = x + (img * d->h * d->w + oy * d->stride * d->w) * C;
    s->g[s->n] = dy + pos * ow * Co;
    s->cnt[s->n] = ow;
  }
  return pos;
}

static size_t max_pixels(const rn_conv_desc *d) { return (size_t)DW1_CHUNK + (d->stride == 1 ? 0 : (size_t)d->ow); }

size_t rn_conv_dw1x1_pack_floats(const rn_conv_desc *d) { return max_pixels(d) * (size_t)(d->cin + d->cout) + 32; }

/* Chunks from position p0 to p1 (stride 1: pixels; stride 2: output lines); dy holds the rows from
 * position g0 on (stride 1; 0 for stride 2). */
static void dw1x1_range(const rn_conv_desc *d, size_t p0, size_t p1, const float *x, const float *dy, size_t g0,
                        float *dwt, float *pack, const rn_conv_pre *pre) {
  const int C = d->cin, Co = d->cout;
  const size_t xps = (size_t)d->stride * C;
  float *ap = pack, *bp = pack + max_pixels(d) * (size_t)Co + 16;
  seglist s;
  for (size_t pos = p0; pos < p1;) {
    pos = make_chunk(d, x, dy, g0, pos, p1, &s);
    pchunk(&s, xps, (size_t)Co, C, Co, dwt, ap, bp, pre);
  }
}

void rn_conv_dw1x1(const rn_conv_desc *d, int i0, int i1, const float *x, const float *dy, float *dwt, float *pack,
                   const rn_conv_pre *pre) {
  const size_t per = d->stride == 1 ? (size_t)d->oh * d->ow : (size_t)d->oh;
  dw1x1_range(d, (size_t)i0 * per, (size_t)i1 * per, x, dy, 0, dwt, pack, pre);
}

void rn_conv_dw1x1_pixels(const rn_conv_desc *d, size_t p0, size_t p1, const float *x, const float *dyp, float *dwt,
                          float *pack, const rn_conv_pre *pre) {
  RN_ASSERT(d->stride == 1 && p0 <= p1);
  dw1x1_range(d, p0, p1, x, dyp, p0, dwt, pack, pre);
}

#endif
