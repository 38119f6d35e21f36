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
 * other paths only in summation order (float partial sums over a chunk).
 *
 * Small shapes (stride 1, cin + cout <= 640: ResNet-50's layer-1 and layer-2 bottleneck 1x1s) read
 * the chunk in place instead (rn_conv_set_dw1x1_inplace): the tiles take x (cin <= 512, no lazy BN)
 * and dy (cout <= 512) rows straight from the batch, rows at most 2 KB apart, and while a chunk's
 * tiles run, every pixel step of a tile prefetches one line of the next chunk into L2. The packing
 * copies were ~25% of the kernel's time even with the chunk in L2 (the tiles alone ran at ~95% of
 * the FMA loop on one thread); reading in place without the prefetch lost up to 1.44x on 64->256
 * (the tiles walk dy column-wise, 64 rows per tile, which the hardware prefetchers miss). Paired in
 * one process, 2 threads, b32, dW only (medians of new / old time over 10-20 pairs, per run):
 * 64->64@56 0.72-0.76, 64->256@56 0.75-0.82, 256->64@56 0.80-0.86, 256->128@56 0.87-1.00,
 * 128->512@28 0.88-0.91 and 512->128@28 0.91-0.95 with the 512-channel side in place too (with
 * limits of 256 channels, that side packed: 0.93-1.13 and 0.94-0.97; the 512 limits against them,
 * paired: 0.90-1.02, median 0.93, and 0.95-0.98); larger shapes (14- and 7-wide, 1024+ channels)
 * measured 0.97-1.13, so they keep the packing. The sums are the same in the same order: bitwise
 * the same dW. */
#include <stdint.h>
#include <stdlib.h>

#include "rn/layers.h"

static int g_ip = -1; /* -1: read RN_CONV_DW1X1_IP at first use */
void rn_conv_set_dw1x1_inplace(int on) { g_ip = on != 0; }

#ifdef __AVX512F__
#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

static int use_ip(void) {
  if (g_ip < 0) {
    const char *v = getenv("RN_CONV_DW1X1_IP");
    g_ip = !(v && v[0] == '0');
  }
  return g_ip;
}

#define DW1_CHUNK 64 /* pixels per chunk (stride 2: whole lines) */

/* One chunk's segments: x rows (pixel stride xps floats) and dy rows (stride gps), cnt pixels each. */
typedef struct {
  const float *x[64];
  const float *g[64];
  int cnt[64];
  int n;
} seglist;

/* Lines still to prefetch (into L2) of the next chunk: spans [p, e), the last one first. */
typedef struct {
  const char *p[2 * 64], *e[2 * 64];
  int n;
} pfspans;

/* One tile over a chunk of np pixels: ap = the dy rows at the tile's first channel (row stride as:
 * 16 in the packed panel of its 16-channel block, cout in place), bp = the x rows at its 64-channel
 * block (row stride bsr: 16 * NV packed, cin in place). With f, every pixel step prefetches one line
 * of f's last span. */
AI void ptile(const float *ap, size_t as, const float *bp, size_t bsr, int np, int co0, int ci0, float *dwt, int C,
              const int M, const int NV, pfspans *f) {
  __m512 a[6][4];
  const char *pc = NULL, *pe = NULL;
  if (f && f->n > 0) pc = f->p[f->n - 1], pe = f->e[f->n - 1];
#pragma GCC unroll 6
  for (int j = 0; j < M; j++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) a[j][v] = _mm512_setzero_ps();
  for (int p = 0; p < np; p++, ap += as, bp += bsr) {
    if (pc < pe) {
      _mm_prefetch(pc, _MM_HINT_T1);
      pc += 64;
    }
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
  if (f && f->n > 0) {
    if (pc >= pe) f->n--;
    else f->p[f->n - 1] = pc;
  }
}

/* All tiles of one x block; the dy block cb starts at ap + cb * acb. */
AI void pchunk_nv(const float *ap, size_t as, size_t acb, const float *bp, size_t bsr, int np, int ci0, int Co,
                  float *dwt, int C, const int NV, pfspans *f) {
  for (int cb = 0; cb < Co / 16; cb++) { /* tiles of 6, 6 and 4 output channels per block of 16 */
    const float *a = ap + (size_t)cb * acb;
    ptile(a, as, bp, bsr, np, cb * 16, ci0, dwt, C, 6, NV, f);
    ptile(a + 6, as, bp, bsr, np, cb * 16 + 6, ci0, dwt, C, 6, NV, f);
    ptile(a + 12, as, bp, bsr, np, cb * 16 + 12, ci0, dwt, C, 4, NV, f);
  }
}

/* One chunk: packs what is not read in place (xin: x rows, gin: dy rows; stride 1 only, one
 * segment), then runs every tile over it, prefetching f's lines (NULL: none). */
static void pchunk(const seglist *s, size_t xps, size_t gps, int C, int Co, float *dwt, float *ap, float *bp,
                   const rn_conv_pre *pre, int xin, int gin, pfspans *f) {
  int np = 0;
  for (int q = 0; q < s->n; q++) np += s->cnt[q];
  int p = 0;
  if (!xin || !gin)
    for (int q = 0; q < s->n; q++)
      for (int i = 0; i < s->cnt[q]; i++, p++) {
        const float *g = s->g[q] + (size_t)i * gps, *x = s->x[q] + (size_t)i * xps;
        if (!gin)
          for (int co0 = 0; co0 < Co; co0 += 16)
            _mm512_storeu_ps(ap + ((size_t)co0 * np + (size_t)p * 16), _mm512_loadu_ps(g + co0));
        if (!xin)
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
  /* dy block cb at a + cb * acb, rows as apart; x block ci0 at b + ci0 * bcb, rows bsr apart (0:
   * 16 * NV, the packed panel's) */
  const float *a = gin ? s->g[0] : ap, *b = xin ? s->x[0] : bp;
  const size_t as = gin ? (size_t)Co : 16, acb = gin ? 16 : (size_t)16 * np;
  const size_t bcb = xin ? 1 : (size_t)np, bsr = xin ? (size_t)C : 0;
  int ci0 = 0;
#define RN_NV(NV) pchunk_nv(a, as, acb, b + (size_t)ci0 * bcb, bsr ? bsr : 16 * NV, np, ci0, Co, dwt, C, NV, f)
  for (; ci0 + 64 <= C; ci0 += 64) RN_NV(4);
  switch ((C - ci0) / 16) {
    case 3: RN_NV(3); break;
    case 2: RN_NV(2); break;
    case 1: RN_NV(1); break;
    default: break;
  }
#undef RN_NV
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
  /* in place (see the top): x rows if cin <= 512 and no lazy BN, dy rows if cout <= 512 */
  const int ip = use_ip() && d->stride == 1 && C + Co <= 640;
  const int xin = ip && C <= 512 && !pre, gin = ip && Co <= 512;
  if (p0 >= p1) return;
  seglist s[2];
  pfspans f;
  int cur = 0;
  size_t end = make_chunk(d, x, dy, g0, p0, p1, &s[0]); /* the current chunk ends at end */
  for (;;) {
    size_t nend = end;
    f.n = 0;
    if (end < p1) {
      nend = make_chunk(d, x, dy, g0, end, p1, &s[1 - cur]);
      const seglist *t = &s[1 - cur];
      for (int q = 0; ip && q < t->n; q++) { /* its x and dy rows, prefetched while this one runs */
        f.p[f.n] = (const char *)((uintptr_t)t->x[q] & ~(uintptr_t)63);
        f.e[f.n++] = (const char *)(t->x[q] + (size_t)(t->cnt[q] - 1) * xps + C);
        f.p[f.n] = (const char *)((uintptr_t)t->g[q] & ~(uintptr_t)63);
        f.e[f.n++] = (const char *)(t->g[q] + (size_t)t->cnt[q] * Co);
      }
    }
    pchunk(&s[cur], xps, (size_t)Co, C, Co, dwt, ap, bp, pre, xin, gin, ip ? &f : NULL);
    if (end >= p1) break;
    cur = 1 - cur, end = nend;
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
