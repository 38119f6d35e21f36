/* Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution: see include/rn/wino.h.
 *
 * 1-D transforms of F(2,3) (F(4,3)'s are with its code below): input B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], kernel
 * G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], output A^T = [1 1 1 0; 0 1 -1 -1]; the 2-D ones
 * apply them to rows, then columns. Every transform works on 16 channels at once (one zmm per tile
 * position), NHWC making each pixel's channels contiguous.
 *
 * Buffers in ws (floats), with P = 16 (F(2,3)) or 36 (F(4,3)) positions: U [P][cout][cin] (the
 * transformed kernels; dU in the dW pass), then V and M, each [P][TC][max(cin, cout)]: a chunk of
 * TC tiles' transformed inputs and products (position xi at xi*TC*c, tile i of the chunk at row
 * i); after them (part_offset) each thread's per-image partial sums of the epilogues (the next BN's
 * statistics, dx's BN sums). One parallel region per call; per chunk the threads transform their
 * share of the tiles, meet, run the GEMMs of their share of the P positions (rn_sgemm_serial),
 * meet, and transform the products back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/wino.h"

#define SMALL_MAXC 64 /* the small-channel path's largest cin/cout (below) */
static int g_wino = -1; /* -1: read RN_CONV_WINO at first use */
static int g_min_c = -1; /* -1: read RN_CONV_WINO_MINC at first use; 0: the automatic rule */
static int g_chunk; /* tiles per chunk; 0: automatic */

void rn_conv_set_wino(int on) { g_wino = on != 0; }
void rn_conv_set_wino_min_channels(int c) { g_min_c = c <= 0 ? 0 : c < 16 ? 16 : c; }
void rn_conv_set_wino_chunk(int tiles) { g_chunk = tiles > 0 ? tiles : 0; }
static int g_wino_bn = -1; /* -1: read RN_WINO_BN at first use */
void rn_conv_set_wino_bn(int on) { g_wino_bn = on != 0; }
int rn_conv_wino_bn(void) {
  if (g_wino_bn < 0) {
    const char *e = getenv("RN_WINO_BN");
    g_wino_bn = !(e && e[0] == '0');
  }
  return g_wino_bn;
}

static int wino_on(void) {
  if (g_wino < 0) {
    const char *e = getenv("RN_CONV_WINO");
    g_wino = !(e && e[0] == '0');
  }
  return g_wino;
}

/* The automatic rule (rn-bench --ab wino / wino-small, rn-bench-conv, 2 threads):
 * - with the small-channel path (below), every 16+ channel layer on images of at most 32x32:
 *   CIFAR's 16@32, 32@16 and 64@8 run 1.4-1.5x, 2.1x and 2.4x the direct kernel, and the
 *   ResNet-20/56 steps 26%/34% faster; and 64 channels on larger images (ResNet-18/34/50's
 *   64@56) with F(2,3): 1.7x the direct kernel. F(4,3) runs 2.4x there, but its larger rounding
 *   (~1e-5 against ~1e-6), carried into every later layer, flips more ReLU/max-pool decisions
 *   than float32 rounding does: the 224-pixel ResNet-18 parity test then falls just outside
 *   PyTorch float32's envelope (1.24x its limit; F(2,3): 0.34x; scripts/torch_parity.py).
 * - otherwise 128+ channels (ResNet-50 layers 2-4: 1.4-2.5x the direct kernel), or 64+ on images
 *   of at most 16x16 (the chunked path's rule; wide_min_channels). The chunked path lost on 64@56:
 *   its transformed tiles (2.25x the activations) no longer stayed in cache. */
static int small_path(const rn_conv_desc *d);
static int wide_min_channels(const rn_conv_desc *d) { return d->oh * d->ow <= 256 ? 64 : 128; }
static int min_channels(const rn_conv_desc *d) {
  if (g_min_c < 0) {
    const char *e = getenv("RN_CONV_WINO_MINC");
    rn_conv_set_wino_min_channels(e && atoi(e) > 0 ? atoi(e) : 0);
  }
  if (g_min_c > 0) return g_min_c;
  if (small_path(d)) return d->oh * d->ow <= 1024 ? 16 : 64;
  return wide_min_channels(d);
}

int rn_conv_wino_shape(const rn_conv_desc *d) {
#ifdef __AVX512F__
  const int mc = min_channels(d);
  return d->kh == 3 && d->kw == 3 && d->stride == 1 && d->pad == 1 && d->cin % 16 == 0 && d->cout % 16 == 0 &&
         d->cin >= mc && d->cout >= mc && __builtin_cpu_supports("avx512f");
#else
  (void)d;
  return 0;
#endif
}

int rn_conv_wino_ok(const rn_conv_desc *d) { return wino_on() && rn_conv_wino_shape(d); }

static int cmax(const rn_conv_desc *d) { return d->cin > d->cout ? d->cin : d->cout; }

/* Output tile size: F(2x2,3x3) or F(4x4,3x3) (RN_WINO_M=2|4 forces one; automatic: 4 where the
 * 4-wide tiles span at most 8/7 of the width (multiples of 4, and 7, 11, 14, ...: ResNet-50's
 * 256@14 runs 1.15-1.2x F(2,3)'s there, layer 3's five 3x3 layers 15% faster in the step), else
 * 2; 2 also for the small path's 64@56, above). */
static int g_m = -1;
void rn_conv_set_wino_tile(int m) { g_m = m == 2 || m == 4 ? m : 0; }
int rn_conv_wino_tile(const rn_conv_desc *d) {
  if (g_m < 0) {
    const char *e = getenv("RN_WINO_M");
    g_m = e && (atoi(e) == 2 || atoi(e) == 4) ? atoi(e) : 0;
  }
  if (g_m) return g_m;
  if (cmax(d) <= SMALL_MAXC && d->oh * d->ow > 1024) return 2; /* 64@56: F(2,3) (rule above) */
  const int pw = (d->ow + 3) / 4 * 4; /* the 4-wide tiles' span */
  return 7 * pw <= 8 * d->ow ? 4 : 2;
}
static int npos(const rn_conv_desc *d) {
  const int a = rn_conv_wino_tile(d) + 2;
  return a * a;
}
static int64_t ntiles(const rn_conv_desc *d, int n) {
  const int m = rn_conv_wino_tile(d);
  return (int64_t)n * ((d->oh + m - 1) / m) * ((d->ow + m - 1) / m);
}

/* Most tiles per chunk for n images: about RN_WINO_CHUNK_MB (default 8 MB) per buffer, at least
 * 256 tiles (GEMMs of fewer rows repack U too often), at most all. Non-increasing as n falls, so
 * a workspace planned for the batch serves every smaller n. */
static int chunk_cap(const rn_conv_desc *d, int n) {
  int64_t tc = g_chunk;
  if (tc <= 0) {
    static size_t mb;
    if (!mb) {
      const char *e = getenv("RN_WINO_CHUNK_MB");
      mb = e && atoi(e) > 0 ? (size_t)atoi(e) : 8;
    }
    tc = (int64_t)((mb << 20) / ((size_t)npos(d) * sizeof(float) * (size_t)cmax(d)));
    if (tc < 256) tc = 256;
  }
  const int64_t nt = ntiles(d, n);
  if (tc > nt) tc = nt;
  return (int)(tc < 1 ? 1 : tc);
}

/* Tiles per chunk of a call: chunk_cap split into equal chunks (no short last one, e.g. 113 + 15
 * tiles for 512@7), so never more than chunk_cap. */
static int chunk_tiles(const rn_conv_desc *d, int n) {
  int64_t tc = chunk_cap(d, n);
  if (g_chunk <= 0) {
    const int64_t nt = ntiles(d, n), k = (nt + tc - 1) / tc;
    tc = (nt + k - 1) / k;
  }
  return (int)tc;
}

/* Small channel counts (cin and cout <= 64, e.g. CIFAR's 16@32, 32@16, 64@8): BLIS's packing and
 * edge handling cost more than the products themselves there, and a chunk shared by the threads
 * leaves the cache between the passes. Instead each thread takes groups of SG tiles (V and M of
 * a group: at most 36 x 48 x 64 floats = 442 KB each, in L2; forward and dx: a share per thread
 * with work stealing, core_small), multiplies them with register-blocked AVX-512 loops (prod, dw_prod) and
 * transforms them back while they are hot; no barrier per chunk. dW: each thread sums its static
 * share of the tiles into its own dU, added up at the end.
 * RN_WINO_SMALL=0 or rn_conv_set_wino_small(0): the chunked BLIS path for them too (A/B). */
#define SG 48 /* tiles per group: a multiple of every row block (16, 12, 8, 6) */
static int g_small = -1;
void rn_conv_set_wino_small(int on) { g_small = on != 0; }
static int small_path(const rn_conv_desc *d) {
  if (g_small < 0) {
    const char *e = getenv("RN_WINO_SMALL");
    g_small = !(e && e[0] == '0');
  }
  return g_small && cmax(d) <= SMALL_MAXC;
}

/* The chunked path's buffers for rn_ukr (below, "products on BLIS's micro-kernel"). */
#define WKC 256 /* tiles per K block of the dW products */
static int al32(int c) { return (c + 31) & ~31; }
/* floats of the packed kernels: forward Up [P][al32(cout)][cin], dx [P][al32(cin)][cout] */
static size_t upk_floats(const rn_conv_desc *d) {
  const size_t f = (size_t)al32(d->cout) * d->cin, x = (size_t)al32(d->cin) * d->cout;
  return (size_t)npos(d) * (f > x ? f : x);
}
/* the U slot of the chunked path: BLIS's U / dU [P][cout][cin] or the packed kernels */
static size_t u_slot(const rn_conv_desc *d) {
  const size_t uf = (size_t)npos(d) * d->cin * d->cout, up = upk_floats(d);
  return ((uf > up ? uf : up) + 15) / 16 * 16;
}
/* per thread: the dW A panels [al32(cin)][WKC] and one 12-column panel */
static size_t pk_floats(const rn_conv_desc *d) {
  const int c = cmax(d);
  return ((size_t)al32(c) * WKC + 12 * (size_t)(c > WKC ? c : WKC) + 15) / 16 * 16;
}
/* The workspace without the epilogue's partial sums (below). */
static size_t base_workspace(const rn_conv_desc *d, int n, int threads) {
  const size_t P = (size_t)npos(d), uf = P * (size_t)d->cin * d->cout;
  size_t r = 0;
  if (small_path(d)) { /* U slots (forward: U and its transpose; dW: one dU per thread), V and M per thread */
    const size_t T = threads < 1 ? 1 : (size_t)threads;
    r = (T > 2 ? T : 2) * uf + T * 2 * P * SG * (size_t)cmax(d) + 16;
  }
  /* the chunked path's too where it would take the shape with the small path off (rn-bench --ab
   * wino-small switches at run time on the same plan) */
  const int mc = g_min_c > 0 ? g_min_c : wide_min_channels(d);
  if (!small_path(d) || (d->cin >= mc && d->cout >= mc)) {
    const size_t T = threads < 1 ? 1 : (size_t)threads;
    const size_t c = u_slot(d) + 2 * P * (size_t)chunk_cap(d, n) * (size_t)cmax(d) + T * pk_floats(d) + 16;
    if (c > r) r = c;
  }
  return r;
}

/* The small path's epilogue sums go to one slot per group of SG tiles (group g: tiles [g SG,
 * (g+1) SG), whichever thread runs it), [images the group touches][2][C] doubles; at most
 * group_images of them. */
static int64_t ngroups(const rn_conv_desc *d, int n) { return (ntiles(d, n) + SG - 1) / SG; }
static int64_t group_images(const rn_conv_desc *d) { return (SG - 1) / ntiles(d, 1) + 2; }

/* After the base workspace (rounded up to 16 floats): the epilogue's partial channel sums
 * (forward statistics or dx's BN sums: 2 x cmax doubles per image): the chunked path's per thread
 * and image, added up at the end in thread order; the small path's per group (above), added up in
 * group order. Both parts are non-increasing as n falls, so a plan for the batch serves any n. */
static size_t part_offset(const rn_conv_desc *d, int n, int threads) {
  return (base_workspace(d, n, threads) + 15) / 16 * 16;
}
size_t rn_conv_wino_workspace(const rn_conv_desc *d, int n, int threads) {
  const size_t T = threads < 1 ? 1 : (size_t)threads, pt = T * (size_t)n;
  const size_t pg = (size_t)ngroups(d, n) * (size_t)group_images(d), parts = pt > pg ? pt : pg;
  return part_offset(d, n, threads) + parts * 2 * (size_t)cmax(d) * (sizeof(double) / sizeof(float));
}

#ifdef __AVX512F__
#include <immintrin.h>
#include <omp.h>

#define AI static inline __attribute__((always_inline))
typedef __m512 V16;
#define ADD _mm512_add_ps
#define SUB _mm512_sub_ps
#define MUL _mm512_mul_ps

/* The input transforms' prologue: with pre (not NULL) the input x is a lazy BN's input and they
 * read [relu](x * sc + sh) (the BN's own instructions: FMA, then max(0, v), so the bits of its
 * output), zeros in the padding (in_value below).
 * The output transforms' epilogue (wep; NULL: none), per thread:
 * - stats (forward): the sum and the sum of squares of every output value, per image and channel,
 *   into part (the direct kernel's stat_add: double, from the values stored);
 * - bn (dx): the BN backward sums of rn_bn_sums into part (as the direct kernel's dx epilogue);
 *   with bn->store_masked the masked gradient is stored (ep_value below).
 * part: this thread's [n][2][C] doubles (C = the output's channels), zeroed per call; or (the
 * small path) the current group's slot, whose first image is img0. */
typedef struct {
  int stats;
  const rn_bn_sums *bn;
  double *part;
  int64_t img0;
} wep;

/* One output vector v (final value) of channels [c0, c0+16) at p in the output tensor y: the
 * statistics or BN sums into s[4] (flushed per tile and channel block); returns the value to store
 * (bn's mask and x are at the same offset from their tensors' start as p from y's). */
AI V16 ep_value(const wep *ep, V16 v, const float *p, const float *y, int c0, __m512d *s) {
  if (ep->stats) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    s[0] = _mm512_add_pd(s[0], lo);
    s[1] = _mm512_add_pd(s[1], hi);
    s[2] = _mm512_fmadd_pd(lo, lo, s[2]);
    s[3] = _mm512_fmadd_pd(hi, hi, s[3]);
    return v;
  }
  const rn_bn_sums *bn = ep->bn;
  const size_t off = (size_t)(p - y);
  const V16 xv = _mm512_loadu_ps(bn->x + off), vin = v;
  if (bn->mask)
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(bn->mask + off), _mm512_setzero_ps(), _CMP_GT_OQ), v);
  else if (bn->pre && bn->pre->relu) /* y = max(0, x * sc + sh) > 0 iff x * sc + sh > 0 */
    v = _mm512_maskz_mov_ps(
        _mm512_cmp_ps_mask(_mm512_fmadd_ps(xv, _mm512_loadu_ps(bn->pre->sc + c0), _mm512_loadu_ps(bn->pre->sh + c0)),
                           _mm512_setzero_ps(), _CMP_GT_OQ),
        v);
  V16 g = v;
  if (bn->scale == 0.0f) g = _mm512_setzero_ps();
  else if (bn->scale != 1.0f) g = _mm512_mul_ps(_mm512_set1_ps(bn->scale), g);
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(g));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(g), 1)));
  const __m512d xlo = _mm512_cvtps_pd(_mm512_castps512_ps256(xv));
  const __m512d xhi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(xv), 1)));
  s[0] = _mm512_add_pd(s[0], lo);
  s[1] = _mm512_add_pd(s[1], hi);
  s[2] = _mm512_fmadd_pd(lo, xlo, s[2]);
  s[3] = _mm512_fmadd_pd(hi, xhi, s[3]);
  return bn->store_masked ? v : vin;
}

/* Prefetch ahead of the transforms (twenty-ninth round, item 58; rn-bench --ab wino-pfx). The
 * output transforms write y with plain stores (each line read for ownership, from memory where y is
 * cold) and dx's BN-sum epilogue reads bn->x (and bn->mask) at every output vector; the input
 * transforms read x (or dy in the dW pass), from memory too where the step last wrote them long
 * before. The tiles run along the image rows, so before each tile the same rows' pixels that the
 * tile PFX_AHEAD further along adds are prefetched: y for writing, the rest for reading. CIFAR's
 * small-channel layers gained most (a 16-channel tile row is 64 bytes per pixel: little work per
 * line fetched). RN_WINO_PFX=0 or rn_conv_set_wino_pfx(0): off (read at the forward's and the
 * backward's entry, before their parallel regions). */
static int g_pfx = -1;
void rn_conv_set_wino_pfx(int on) { g_pfx = on != 0; }
/* The input transforms' carried columns (wcarry, below): RN_WINO_CARRY=0 or
 * rn_conv_set_wino_carry(0): off (read with RN_WINO_PFX; the same bits). */
static int g_carry = -1;
void rn_conv_set_wino_carry(int on) { g_carry = on != 0; }
static void pfx_init(void) {
  if (g_pfx < 0) {
    const char *v = getenv("RN_WINO_PFX");
    g_pfx = !(v && v[0] == '0');
  }
  if (g_carry < 0) {
    const char *v = getenv("RN_WINO_CARRY");
    g_carry = !(v && v[0] == '0');
  }
}
#define PFX_AHEAD 2
AI void out_prefetch(const wep *ep, float *y, float *const *row, int nrow, int R, int tx, int OW, int C) {
  if (g_pfx < 1) return;
  const int px0 = R * (tx + PFX_AHEAD);
  if (px0 >= OW) return;
  const int np = OW - px0 < R ? OW - px0 : R;
  const rn_bn_sums *bn = ep ? ep->bn : NULL;
  for (int a = 0; a < nrow; a++) {
    if (!row[a]) continue;
    const size_t off = (size_t)(row[a] - y) + (size_t)px0 * C, len = (size_t)np * C;
    for (size_t i = 0; i < len; i += 16) {
      __builtin_prefetch(y + off + i, 1, 3);
      if (bn) {
        _mm_prefetch((const char *)(bn->x + off + i), _MM_HINT_T0);
        if (bn->mask) _mm_prefetch((const char *)(bn->mask + off + i), _MM_HINT_T0);
      }
    }
  }
}

/* The input transforms' rows (x, or dy in the dW pass): the R pixels tile tx + PFX_AHEAD adds along
 * each of them (from column R * (tx + PFX_AHEAD) + c1: 1 for x, whose tiles overlap by 2, 0 for dy). */
AI void in_prefetch(const float *const *row, int nrow, int R, int tx, int c1, int W, int C) {
  if (g_pfx < 1) return;
  const int p0 = R * (tx + PFX_AHEAD) + c1;
  if (p0 >= W) return;
  const int np = W - p0 < R ? W - p0 : R;
  for (int a = 0; a < nrow; a++) {
    if (!row[a]) continue;
    const float *p = row[a] + (size_t)p0 * C;
    for (size_t i = 0; i < (size_t)np * C; i += 16) _mm_prefetch((const char *)(p + i), _MM_HINT_T0);
  }
}

/* s[4] into this thread's sums of image img, channels [c0, c0+16) of C. */
AI void ep_flush(const wep *ep, int C, int64_t img, int c0, const __m512d *s) {
  double *p1 = ep->part + (size_t)(img - ep->img0) * 2 * C + c0, *p2 = p1 + C;
  _mm512_storeu_pd(p1, _mm512_add_pd(_mm512_loadu_pd(p1), s[0]));
  _mm512_storeu_pd(p1 + 8, _mm512_add_pd(_mm512_loadu_pd(p1 + 8), s[1]));
  _mm512_storeu_pd(p2, _mm512_add_pd(_mm512_loadu_pd(p2), s[2]));
  _mm512_storeu_pd(p2 + 8, _mm512_add_pd(_mm512_loadu_pd(p2 + 8), s[3]));
}

/* An input vector of the transforms: x, or with a lazy BN [relu](x * sc + sh). */
AI V16 in_value(const float *p, int c0, const rn_conv_pre *pre) {
  V16 v = _mm512_loadu_ps(p);
  if (pre) {
    v = _mm512_fmadd_ps(v, _mm512_loadu_ps(pre->sc + c0), _mm512_loadu_ps(pre->sh + c0));
    if (pre->relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
  }
  return v;
}

/* The carry of F(4,3)'s input transforms (in_tile6): a tile's input overlaps the next tile's along
 * the row by two columns, and the first stage of B^T d B runs down the columns, so the last two
 * columns' first stage (and their loads and lazy BN) is the next tile's first two: kept here
 * instead of redone, a third of the first stage (thirtieth round, item 60; rn-bench --ab
 * wino-carry). Two columns of 6 vectors per 16 input channels, 3 KB at CARRY_MAXC = 64 channels;
 * wider inputs run without it: there the transforms are a small share of the chunked path's
 * time, each tile would churn 12-24 KB of the 48 KB L1 at 256-512 channels, and ResNet-50's
 * 128-256-channel layers measured no gain (0.995-1.008 alone, 1.011-1.022 in the step). F(2,3)'s
 * in_tile has no carry: built the same way (half its first stage), ResNet-50's 64@56 measured
 * 0.983-0.996 alone and 0.982-1.050 in the step. */
#define CARRY_MAXC 64
typedef struct {
  _Alignas(64) float v[12 * CARRY_MAXC];
} wcarry;
/* The carry for input channels C of this thread (NULL: off or too wide). */
static wcarry *carry_for(wcarry *c, int C) { return g_carry > 0 && C <= CARRY_MAXC ? c : NULL; }
/* Whether tile id (r in its image, tw tiles per row) may take the carry: the same thread
 * transformed tile id - 1 (first: its first tile of the run) on the same row just before. */
static int carry_ok(const wcarry *c, int64_t id, int64_t first, int r, int tw) {
  return c && id > first && r % tw != 0;
}

/* V (16 positions, position stride vs) of the 4x4 input tile at (2ty-1, 2tx-1) of image img. */
AI void in_tile(const float *x, int C, int H, int W, int64_t img, int ty, int tx, float *v, size_t vs,
             const rn_conv_pre *pre) {
  const int y0 = 2 * ty - 1, x0 = 2 * tx - 1;
  const float *row[4];
  int okx[4];
  for (int i = 0; i < 4; i++) {
    const int iy = y0 + i;
    row[i] = iy >= 0 && iy < H ? x + ((size_t)img * H + iy) * (size_t)W * C : NULL;
    okx[i] = x0 + i >= 0 && x0 + i < W;
  }
  in_prefetch((const float *const *)row, 4, 2, tx, 1, W, C);
  for (int c0 = 0; c0 < C; c0 += 16) {
    V16 d[4][4];
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++)
        d[i][j] = row[i] && okx[j] ? in_value(row[i] + (size_t)(x0 + j) * C + c0, c0, pre) : _mm512_setzero_ps();
    V16 t[4][4];
    for (int j = 0; j < 4; j++) {
      t[0][j] = SUB(d[0][j], d[2][j]);
      t[1][j] = ADD(d[1][j], d[2][j]);
      t[2][j] = SUB(d[2][j], d[1][j]);
      t[3][j] = SUB(d[1][j], d[3][j]);
    }
    for (int i = 0; i < 4; i++) {
      float *o = v + (size_t)(i * 4) * vs + c0;
      _mm512_storeu_ps(o, SUB(t[i][0], t[i][2]));
      _mm512_storeu_ps(o + vs, ADD(t[i][1], t[i][2]));
      _mm512_storeu_ps(o + 2 * vs, SUB(t[i][2], t[i][1]));
      _mm512_storeu_ps(o + 3 * vs, SUB(t[i][1], t[i][3]));
    }
  }
}

/* E = A dY A^T (16 positions, stride es) of the 2x2 output-gradient tile at (2ty, 2tx). */
AI void dy_tile(const float *dy, int C, int OH, int OW, int64_t img, int ty, int tx, float *e, size_t es) {
  const float *row[2];
  int okx[2];
  for (int a = 0; a < 2; a++) {
    const int oy = 2 * ty + a;
    row[a] = oy < OH ? dy + ((size_t)img * OH + oy) * (size_t)OW * C : NULL;
    okx[a] = 2 * tx + a < OW;
  }
  in_prefetch((const float *const *)row, 2, 2, tx, 0, OW, C);
  for (int c0 = 0; c0 < C; c0 += 16) {
    V16 g[2][2];
    for (int a = 0; a < 2; a++)
      for (int b = 0; b < 2; b++)
        g[a][b] = row[a] && okx[b] ? _mm512_loadu_ps(row[a] + (size_t)(2 * tx + b) * C + c0) : _mm512_setzero_ps();
    V16 r[4][2];
    for (int b = 0; b < 2; b++) {
      r[0][b] = g[0][b];
      r[1][b] = ADD(g[0][b], g[1][b]);
      r[2][b] = SUB(g[0][b], g[1][b]);
      r[3][b] = SUB(_mm512_setzero_ps(), g[1][b]);
    }
    for (int i = 0; i < 4; i++) {
      float *o = e + (size_t)(i * 4) * es + c0;
      _mm512_storeu_ps(o, r[i][0]);
      _mm512_storeu_ps(o + es, ADD(r[i][0], r[i][1]));
      _mm512_storeu_ps(o + 2 * es, SUB(r[i][0], r[i][1]));
      _mm512_storeu_ps(o + 3 * es, SUB(_mm512_setzero_ps(), r[i][1]));
    }
  }
}

/* Y = A^T M A of one tile (M: 16 positions, stride ms) into the 2x2 outputs at (2ty, 2tx) that
 * exist; acc: added to y. */
AI void out_tile(const float *m, size_t ms, int C, float *y, int OH, int OW, int64_t img, int ty, int tx,
                 int acc, const wep *ep) {
  float *row[2];
  int okx[2];
  for (int a = 0; a < 2; a++) {
    const int oy = 2 * ty + a;
    row[a] = oy < OH ? y + ((size_t)img * OH + oy) * (size_t)OW * C : NULL;
    okx[a] = 2 * tx + a < OW;
  }
  out_prefetch(ep, y, row, 2, 2, tx, OW, C);
  for (int c0 = 0; c0 < C; c0 += 16) {
    V16 s[2][4];
    for (int j = 0; j < 4; j++) {
      const V16 m0 = _mm512_loadu_ps(m + (size_t)j * ms + c0), m1 = _mm512_loadu_ps(m + (size_t)(4 + j) * ms + c0);
      const V16 m2 = _mm512_loadu_ps(m + (size_t)(8 + j) * ms + c0), m3 = _mm512_loadu_ps(m + (size_t)(12 + j) * ms + c0);
      s[0][j] = ADD(ADD(m0, m1), m2);
      s[1][j] = SUB(SUB(m1, m2), m3);
    }
    __m512d sv[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int a = 0; a < 2; a++) {
      if (!row[a]) continue;
      const V16 o[2] = {ADD(ADD(s[a][0], s[a][1]), s[a][2]), SUB(SUB(s[a][1], s[a][2]), s[a][3])};
      for (int b = 0; b < 2; b++) {
        if (!okx[b]) continue;
        float *p = row[a] + (size_t)(2 * tx + b) * C + c0;
        V16 v = acc ? ADD(_mm512_loadu_ps(p), o[b]) : o[b];
        if (ep) v = ep_value(ep, v, p, y, c0, sv);
        _mm512_storeu_ps(p, v);
      }
    }
    if (ep) ep_flush(ep, C, img, c0, sv);
  }
}

/* Position xi of dx's kernel for F(2,3): G applied to the flipped kernel is G with its rows 0 and
 * 3 swapped (F(4,3) transforms the flipped kernel instead: weights6(flip)). */
static int flip_pos(int xi) {
  static const int s[4] = {3, 1, 2, 0};
  return s[xi / 4] * 4 + s[xi % 4];
}

/* (G g G^T)[xi] of output channel co, input channels [c0, c0+16), every position xi, stored at
 * o + xi * ps (at o + flip_pos(xi) * ps with flip2: dx's kernel). */
AI void wvec_fwd(const float *w, int cin, int co, int c0, float *o, size_t ps, int flip2) {
  const V16 h = _mm512_set1_ps(0.5f);
  V16 g[3][3], a[4][3];
  for (int ky = 0; ky < 3; ky++)
    for (int kx = 0; kx < 3; kx++) g[ky][kx] = _mm512_loadu_ps(w + ((size_t)(co * 3 + ky) * 3 + kx) * cin + c0);
  for (int kx = 0; kx < 3; kx++) {
    a[0][kx] = g[0][kx];
    a[1][kx] = MUL(h, ADD(ADD(g[0][kx], g[1][kx]), g[2][kx]));
    a[2][kx] = MUL(h, ADD(SUB(g[0][kx], g[1][kx]), g[2][kx]));
    a[3][kx] = g[2][kx];
  }
  for (int i = 0; i < 4; i++) {
    const V16 u[4] = {a[i][0], MUL(h, ADD(ADD(a[i][0], a[i][1]), a[i][2])), MUL(h, ADD(SUB(a[i][0], a[i][1]), a[i][2])),
                      a[i][2]};
    for (int j = 0; j < 4; j++) _mm512_storeu_ps(o + (size_t)(flip2 ? flip_pos(i * 4 + j) : i * 4 + j) * ps, u[j]);
  }
}

/* U[xi][co][ci] = (G g G^T)[xi] for output channels [co0, co1). */
static void weights_fwd(const float *w, int cin, int cout, int co0, int co1, float *U) {
  const size_t us = (size_t)cout * cin;
  for (int co = co0; co < co1; co++)
    for (int c0 = 0; c0 < cin; c0 += 16) wvec_fwd(w, cin, co, c0, U + (size_t)co * cin + c0, us, 0);
}

/* dw[co][ky][kx][ci] += (G^T dU G)[ky][kx] for output channels [co0, co1). */
static void weights_bwd(const float *dU, int cin, int cout, int co0, int co1, float *dw) {
  const V16 h = _mm512_set1_ps(0.5f);
  const size_t us = (size_t)cout * cin;
  for (int co = co0; co < co1; co++)
    for (int c0 = 0; c0 < cin; c0 += 16) {
      V16 u[4][4], b[3][4];
      const float *p = dU + (size_t)co * cin + c0;
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) u[i][j] = _mm512_loadu_ps(p + (size_t)(i * 4 + j) * us);
      for (int j = 0; j < 4; j++) {
        const V16 s = MUL(h, ADD(u[1][j], u[2][j]));
        b[0][j] = ADD(u[0][j], s);
        b[1][j] = MUL(h, SUB(u[1][j], u[2][j]));
        b[2][j] = ADD(s, u[3][j]);
      }
      for (int ky = 0; ky < 3; ky++) {
        const V16 s = MUL(h, ADD(b[ky][1], b[ky][2]));
        const V16 r[3] = {ADD(b[ky][0], s), MUL(h, SUB(b[ky][1], b[ky][2])), ADD(s, b[ky][3])};
        for (int kx = 0; kx < 3; kx++) {
          float *q = dw + ((size_t)(co * 3 + ky) * 3 + kx) * cin + c0;
          _mm512_storeu_ps(q, ADD(_mm512_loadu_ps(q), r[kx]));
        }
      }
    }
}

/* ---- F(4x4, 3x3): 6x6 input tiles, 36 positions (Lavin & Gray's points 0, +-1, +-2, inf) ----
 * B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
 * G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 * A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1] */
#define FMA _mm512_fmadd_ps
#define FNMA _mm512_fnmadd_ps
#define S1 _mm512_set1_ps
AI void bt6(const V16 *d, V16 *o) {
  const V16 four = S1(4.0f), five = S1(5.0f), two = S1(2.0f);
  o[0] = ADD(FNMA(five, d[2], MUL(four, d[0])), d[4]);
  o[1] = SUB(ADD(d[3], d[4]), MUL(four, ADD(d[1], d[2])));
  o[2] = SUB(FMA(four, SUB(d[1], d[2]), d[4]), d[3]);
  o[3] = SUB(FMA(two, SUB(d[3], d[1]), d[4]), d[2]);
  o[4] = SUB(FMA(two, SUB(d[1], d[3]), d[4]), d[2]);
  o[5] = ADD(FNMA(five, d[3], MUL(four, d[1])), d[5]);
}
AI void at6(const V16 *m, V16 *o) {
  const V16 two = S1(2.0f), four = S1(4.0f), eight = S1(8.0f);
  const V16 p12 = ADD(m[1], m[2]), m12 = SUB(m[1], m[2]), p34 = ADD(m[3], m[4]), m34 = SUB(m[3], m[4]);
  o[0] = ADD(ADD(m[0], p12), p34);
  o[1] = FMA(two, m34, m12);
  o[2] = FMA(four, p34, p12);
  o[3] = ADD(FMA(eight, m34, m12), m[5]);
}
AI void g6(const V16 *g, V16 *o) {
  const V16 q = S1(0.25f), s6 = S1(1.0f / 6.0f), s12 = S1(1.0f / 12.0f), s24 = S1(1.0f / 24.0f);
  const V16 p02 = ADD(g[0], g[2]);
  o[0] = MUL(q, g[0]);
  o[1] = MUL(S1(-1.0f / 6.0f), ADD(p02, g[1]));
  o[2] = MUL(S1(-1.0f / 6.0f), SUB(p02, g[1]));
  const V16 e = FMA(s24, g[0], MUL(s6, g[2]));
  o[3] = FMA(s12, g[1], e);
  o[4] = FNMA(s12, g[1], e);
  o[5] = g[2];
}
/* A y for a 4-vector y (the dY transform) */
AI void a6(const V16 *y, V16 *o) {
  const V16 two = S1(2.0f), four = S1(4.0f);
  const V16 p02 = ADD(y[0], y[2]), m02 = FMA(four, y[2], y[0]);
  const V16 p13 = ADD(y[1], y[3]), m13 = FMA(four, y[3], y[1]);
  o[0] = y[0];
  o[1] = ADD(p02, p13);
  o[2] = SUB(p02, p13);
  o[3] = FMA(two, m13, m02);
  o[4] = FNMA(two, m13, m02);
  o[5] = y[3];
}
/* G^T u for a 6-vector u (the dW transform) */
AI void gt6(const V16 *u, V16 *o) {
  const V16 q = S1(0.25f), s6 = S1(1.0f / 6.0f), s12 = S1(1.0f / 12.0f), s24 = S1(1.0f / 24.0f);
  const V16 p12 = ADD(u[1], u[2]), m12 = SUB(u[2], u[1]), p34 = ADD(u[3], u[4]), m34 = SUB(u[3], u[4]);
  o[0] = FMA(q, u[0], FNMA(s6, p12, MUL(s24, p34)));
  o[1] = FMA(s6, m12, MUL(s12, m34));
  o[2] = FMA(s6, SUB(p34, p12), u[5]);
}

/* V (36 positions, stride vs) of the 6x6 input tile at (4ty-1, 4tx-1) of image img. carry
 * (non-NULL): columns 4-5's first stage stored there for the next tile; have: columns 0-1's taken
 * from it (it holds tile tx-1's of the same row). */
AI void in_tile6_(const float *x, int C, int H, int W, int64_t img, int ty, int tx, float *v, size_t vs,
              const rn_conv_pre *pre, wcarry *carry, int have) {
  const int y0 = 4 * ty - 1, x0 = 4 * tx - 1;
  const float *row[6];
  int okx[6];
  for (int i = 0; i < 6; i++) {
    const int iy = y0 + i;
    row[i] = iy >= 0 && iy < H ? x + ((size_t)img * H + iy) * (size_t)W * C : NULL;
    okx[i] = x0 + i >= 0 && x0 + i < W;
  }
  in_prefetch((const float *const *)row, 6, 4, tx, 1, W, C);
  for (int c0 = 0; c0 < C; c0 += 16) {
    V16 t[6][6]; /* t[j][i]: column j of B^T d */
    float *cp = carry ? carry->v + (size_t)c0 * 12 : NULL;
#pragma GCC unroll 6
    for (int j = 0; j < 6; j++) {
      if (j < 2 && have) {
        for (int i = 0; i < 6; i++) t[j][i] = _mm512_load_ps(cp + (j * 6 + i) * 16);
        continue;
      }
      V16 col[6];
      for (int i = 0; i < 6; i++)
        col[i] = row[i] && okx[j] ? in_value(row[i] + (size_t)(x0 + j) * C + c0, c0, pre) : _mm512_setzero_ps();
      bt6(col, t[j]);
    }
    if (cp)
      for (int j = 0; j < 2; j++)
        for (int i = 0; i < 6; i++) _mm512_store_ps(cp + (j * 6 + i) * 16, t[4 + j][i]);
    for (int i = 0; i < 6; i++) {
      V16 r[6], o[6];
      for (int j = 0; j < 6; j++) r[j] = t[j][i];
      bt6(r, o);
      float *p = v + (size_t)(i * 6) * vs + c0;
      for (int j = 0; j < 6; j++) _mm512_storeu_ps(p + (size_t)j * vs, o[j]);
    }
  }
}

/* in_tile6_ compiled twice, with and without the carried columns (have a constant in each). */
AI void in_tile6(const float *x, int C, int H, int W, int64_t img, int ty, int tx, float *v, size_t vs,
                 const rn_conv_pre *pre, wcarry *carry, int have) {
  if (have) in_tile6_(x, C, H, W, img, ty, tx, v, vs, pre, carry, 1);
  else in_tile6_(x, C, H, W, img, ty, tx, v, vs, pre, carry, 0);
}

AI void dy_tile6(const float *dy, int C, int OH, int OW, int64_t img, int ty, int tx, float *e, size_t es) {
  const float *row[4];
  int okx[4];
  for (int a = 0; a < 4; a++) {
    const int oy = 4 * ty + a;
    row[a] = oy < OH ? dy + ((size_t)img * OH + oy) * (size_t)OW * C : NULL;
    okx[a] = 4 * tx + a < OW;
  }
  in_prefetch((const float *const *)row, 4, 4, tx, 0, OW, C);
  for (int c0 = 0; c0 < C; c0 += 16) {
    V16 t[4][6]; /* t[b][i]: column b of A dY */
    for (int b = 0; b < 4; b++) {
      V16 col[4];
      for (int a = 0; a < 4; a++)
        col[a] = row[a] && okx[b] ? _mm512_loadu_ps(row[a] + (size_t)(4 * tx + b) * C + c0) : _mm512_setzero_ps();
      a6(col, t[b]);
    }
    for (int i = 0; i < 6; i++) {
      V16 r[4], o[6];
      for (int b = 0; b < 4; b++) r[b] = t[b][i];
      a6(r, o);
      float *p = e + (size_t)(i * 6) * es + c0;
      for (int j = 0; j < 6; j++) _mm512_storeu_ps(p + (size_t)j * es, o[j]);
    }
  }
}

AI void out_tile6(const float *m, size_t ms, int C, float *y, int OH, int OW, int64_t img, int ty, int tx,
                  int acc, const wep *ep) {
  float *row[4];
  int okx[4];
  for (int a = 0; a < 4; a++) {
    const int oy = 4 * ty + a;
    row[a] = oy < OH ? y + ((size_t)img * OH + oy) * (size_t)OW * C : NULL;
    okx[a] = 4 * tx + a < OW;
  }
  out_prefetch(ep, y, row, 4, 4, tx, OW, C);
  for (int c0 = 0; c0 < C; c0 += 16) {
    V16 s[6][4]; /* s[j][a]: column j of A^T M */
    for (int j = 0; j < 6; j++) {
      V16 col[6];
      for (int i = 0; i < 6; i++) col[i] = _mm512_loadu_ps(m + (size_t)(i * 6 + j) * ms + c0);
      at6(col, s[j]);
    }
    __m512d sv[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int a = 0; a < 4; a++) {
      if (!row[a]) continue;
      V16 r[6], o[4];
      for (int j = 0; j < 6; j++) r[j] = s[j][a];
      at6(r, o);
      for (int b = 0; b < 4; b++) {
        if (!okx[b]) continue;
        float *p = row[a] + (size_t)(4 * tx + b) * C + c0;
        V16 v = acc ? ADD(_mm512_loadu_ps(p), o[b]) : o[b];
        if (ep) v = ep_value(ep, v, p, y, c0, sv);
        _mm512_storeu_ps(p, v);
      }
    }
    if (ep) ep_flush(ep, C, img, c0, sv);
  }
}

/* (G g G^T)[xi] of output channel co, input channels [c0, c0+16), g the kernel (flip: rotated by
 * 180 degrees, dx's kernel), every position xi, stored at o + xi * ps. */
AI void wvec6(const float *w, int cin, int co, int c0, int flip, float *o, size_t ps) {
  V16 t[3][6]; /* t[kx][i]: column kx of G g */
  for (int kx = 0; kx < 3; kx++) {
    V16 col[3];
    for (int ky = 0; ky < 3; ky++) {
      const int sy = flip ? 2 - ky : ky, sx = flip ? 2 - kx : kx;
      col[ky] = _mm512_loadu_ps(w + ((size_t)(co * 3 + sy) * 3 + sx) * cin + c0);
    }
    g6(col, t[kx]);
  }
  for (int i = 0; i < 6; i++) {
    V16 r[3] = {t[0][i], t[1][i], t[2][i]}, u[6];
    g6(r, u);
    for (int j = 0; j < 6; j++) _mm512_storeu_ps(o + (size_t)(i * 6 + j) * ps, u[j]);
  }
}

/* U[xi][co][ci] = (G g G^T)[xi], g the kernel (flip: rotated by 180 degrees, dx's kernel), for
 * output channels [co0, co1). */
static void weights6(const float *w, int cin, int cout, int co0, int co1, float *U, int flip) {
  const size_t us = (size_t)cout * cin;
  for (int co = co0; co < co1; co++)
    for (int c0 = 0; c0 < cin; c0 += 16) wvec6(w, cin, co, c0, flip, U + (size_t)co * cin + c0, us);
}

/* dw[co][ky][kx][ci] += (G^T dU G)[ky][kx] for output channels [co0, co1). */
static void weights6_bwd(const float *dU, int cin, int cout, int co0, int co1, float *dw) {
  const size_t us = (size_t)cout * cin;
  for (int co = co0; co < co1; co++)
    for (int c0 = 0; c0 < cin; c0 += 16) {
      const float *p = dU + (size_t)co * cin + c0;
      V16 t[6][3]; /* t[j][ky]: column j of G^T dU */
      for (int j = 0; j < 6; j++) {
        V16 col[6];
        for (int i = 0; i < 6; i++) col[i] = _mm512_loadu_ps(p + (size_t)(i * 6 + j) * us);
        gt6(col, t[j]);
      }
      for (int ky = 0; ky < 3; ky++) {
        V16 r[6], o[3];
        for (int j = 0; j < 6; j++) r[j] = t[j][ky];
        gt6(r, o);
        for (int kx = 0; kx < 3; kx++) {
          float *q = dw + ((size_t)(co * 3 + ky) * 3 + kx) * cin + c0;
          _mm512_storeu_ps(q, ADD(_mm512_loadu_ps(q), o[kx]));
        }
      }
    }
}

/* ---- The chunked path's products on BLIS's micro-kernel (rn_ukr) ----
 * BLIS's driver packs both operands of every GEMM: per chunk and position the transformed kernels
 * U[xi] again (into 32-row panels, with BLIS 0.9's generic scal2m: its packm table ends at 31
 * rows) and the chunk's tiles. Instead (rn_ukr_ok(), the default on the skx kernels):
 * - forward and dx: the weight transform writes U packed for the micro-kernel once per call,
 *   Up[xi][cy/32][cx][32] (C^T = U V^T: its rows are the output channels, so the products M[xi]
 *   [tile][cy] are the column-major output the kernel prefers); per 12 tiles the tiles' V rows are
 *   transposed into one [cx][12] panel (16 x 16 register transposes) and every 32-row panel of
 *   Up[xi] runs against it;
 * - dW: dU[xi] (row-major [cout][cin], i.e. column-major cin x cout) = E^T V in blocks of WKC
 *   tiles: V's rows copied into [cin/32][WKC][32] panels, E's into a [WKC][12] panel per 12
 *   output channels.
 * The products' sums run in the kernel's order (K whole, or WKC blocks for dW), so results differ
 * from BLIS's driver by rounding only; they are the same from run to run. */
/* The chunked path's U slot: ws rounded up to 64 bytes (the packed panels' alignment; the
 * workspace has 16 floats of slack for it). */
static float *u_base(float *ws) { return (float *)(((uintptr_t)ws + 63) & ~(uintptr_t)63); }

/* out[s * ld_out + 0..16) (only the lanes of mk) = column s of the 16 x 16 block whose rows are
 * in[i * ld_in + 0..16), rows i >= rows_in taken as zero. */
AI void tr16(const float *in, size_t ld_in, int rows_in, float *out, size_t ld_out, __mmask16 mk) {
  V16 r[16], t[16];
  for (int i = 0; i < 16; i++) r[i] = i < rows_in ? _mm512_loadu_ps(in + (size_t)i * ld_in) : _mm512_setzero_ps();
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  /* r[4q + s] holds, in each 128-bit lane L, column 4L + s of rows 4q..4q+3 */
  for (int q = 0; q < 4; q += 2)
    for (int s = 0; s < 4; s++) {
      t[4 * q + s] = _mm512_shuffle_f32x4(r[4 * q + s], r[4 * (q + 1) + s], 0x88);
      t[4 * q + 4 + s] = _mm512_shuffle_f32x4(r[4 * q + s], r[4 * (q + 1) + s], 0xdd);
    }
  for (int s = 0; s < 4; s++) {
    _mm512_mask_storeu_ps(out + (size_t)s * ld_out, mk, _mm512_shuffle_f32x4(t[s], t[8 + s], 0x88));
    _mm512_mask_storeu_ps(out + (size_t)(8 + s) * ld_out, mk, _mm512_shuffle_f32x4(t[s], t[8 + s], 0xdd));
    _mm512_mask_storeu_ps(out + (size_t)(4 + s) * ld_out, mk, _mm512_shuffle_f32x4(t[4 + s], t[12 + s], 0x88));
    _mm512_mask_storeu_ps(out + (size_t)(12 + s) * ld_out, mk, _mm512_shuffle_f32x4(t[4 + s], t[12 + s], 0xdd));
  }
}

/* The forward kernels packed (Up[xi][co/32][ci][32], rows past cout zero), output channel blocks
 * [b0, b1) of 16: each block's 16 x 16 kernels per position transposed from a buffer in L1. */
static void weights_pack_fwd(int R, const float *w, int cin, int cout, int b0, int b1, float *Up, size_t ups) {
  const int P = (R + 2) * (R + 2);
  float tmp[36 * 256] __attribute__((aligned(64)));
  for (int cb = b0; cb < b1; cb++) {
    const int co0 = cb * 16;
    float *pan = Up + (size_t)(co0 / 32) * 32 * cin + co0 % 32;
    for (int c0 = 0; c0 < cin; c0 += 16) {
      for (int r = 0; r < 16; r++) {
        if (R == 4) wvec6(w, cin, co0 + r, c0, 0, tmp + r * 16, 256);
        else wvec_fwd(w, cin, co0 + r, c0, tmp + r * 16, 256, 0);
      }
      for (int xi = 0; xi < P; xi++) tr16(tmp + xi * 256, 16, 16, pan + xi * ups + (size_t)c0 * 32, 32, 0xffff);
    }
    if (co0 + 16 == cout && cout % 32) /* the last panel's upper half */
      for (int xi = 0; xi < P; xi++)
        for (int ci = 0; ci < cin; ci++) _mm512_storeu_ps(pan + xi * ups + (size_t)ci * 32 + 16, _mm512_setzero_ps());
  }
}

/* dx's kernels packed (Up[xi][ci/32][co][32], rows past cin zero), output channels [co0, co1) of
 * the forward: its input channels are the packed rows, contiguous in w. */
static void weights_pack_dx(int R, const float *w, int cin, int cout, int co0, int co1, float *Up, size_t ups) {
  const int P = (R + 2) * (R + 2);
  for (int co = co0; co < co1; co++) {
    for (int c0 = 0; c0 < cin; c0 += 16) {
      float *o = Up + (size_t)(c0 / 32) * 32 * cout + (size_t)co * 32 + c0 % 32;
      if (R == 4) wvec6(w, cin, co, c0, 1, o, ups);
      else wvec_fwd(w, cin, co, c0, o, ups, 1);
    }
    if (cin % 32)
      for (int xi = 0; xi < P; xi++)
        _mm512_storeu_ps(Up + xi * ups + (size_t)(cin / 32) * 32 * cout + (size_t)co * 32 + 16, _mm512_setzero_ps());
  }
}

static long g_ukr_products; /* rn_conv_wino_ukr_products (relaxed atomic: once per position and chunk) */
long rn_conv_wino_ukr_products(void) { return __atomic_load_n(&g_ukr_products, __ATOMIC_RELAXED); }

/* C[tile][cy] = sum_k V[tile][k] A(., k) for tc tiles, K = cx, A packed (Up[xi]); bp: [cx][12]. */
static void prod_ukr(int tc, int cx, int cy, const float *V, const float *A, float *C, float *bp) {
  __atomic_fetch_add(&g_ukr_products, 1, __ATOMIC_RELAXED);
  for (int j0 = 0; j0 < tc; j0 += RN_UKR_NR) {
    const int nn = tc - j0 < RN_UKR_NR ? tc - j0 : RN_UKR_NR;
    for (int c0 = 0; c0 < cx; c0 += 16)
      tr16(V + (size_t)j0 * cx + c0, (size_t)cx, nn, bp + (size_t)c0 * RN_UKR_NR, RN_UKR_NR, 0x0fff);
    for (int i0 = 0; i0 < cy; i0 += RN_UKR_MR) {
      const int mm = cy - i0 < RN_UKR_MR ? cy - i0 : RN_UKR_MR;
      const float *a = A + (size_t)i0 * cx, *an = i0 + RN_UKR_MR < cy ? a + (size_t)RN_UKR_MR * cx : A;
      rn_ukr(mm, nn, cx, a, bp, 0.0f, C + (size_t)j0 * cy + i0, 1, cy, an, bp);
    }
  }
}

/* dU[cout][cin] = beta dU + sum over tc tiles E[tile][co] V[tile][ci] (beta 0: dU not read); ap:
 * [al32(cin)][WKC], bp: [WKC][12]. */
static void dw_ukr(int tc, int cin, int cout, const float *E, const float *V, float beta, float *dU, float *ap,
                   float *bp) {
  __atomic_fetch_add(&g_ukr_products, 1, __ATOMIC_RELAXED);
  for (int k0 = 0; k0 < tc; k0 += WKC, beta = 1.0f) {
    const int kc = tc - k0 < WKC ? tc - k0 : WKC;
    for (int i0 = 0; i0 < cin; i0 += RN_UKR_MR) {
      const int mm = cin - i0;
      const __mmask16 m0 = mm >= 16 ? 0xffff : (__mmask16)((1u << mm) - 1);
      const __mmask16 m1 = mm >= 32 ? 0xffff : mm <= 16 ? 0 : (__mmask16)((1u << (mm - 16)) - 1);
      const float *s = V + (size_t)k0 * cin + i0;
      float *d = ap + (size_t)i0 * kc;
      for (int p = 0; p < kc; p++) {
        _mm512_store_ps(d + (size_t)p * 32, _mm512_maskz_loadu_ps(m0, s + (size_t)p * cin));
        _mm512_store_ps(d + (size_t)p * 32 + 16, _mm512_maskz_loadu_ps(m1, s + (size_t)p * cin + 16));
      }
    }
    for (int j0 = 0; j0 < cout; j0 += RN_UKR_NR) {
      const int nn = cout - j0 < RN_UKR_NR ? cout - j0 : RN_UKR_NR;
      const __mmask16 mk = (__mmask16)((1u << nn) - 1);
      const float *s = E + (size_t)k0 * cout + j0;
      for (int p = 0; p < kc; p++)
        _mm512_mask_storeu_ps(bp + (size_t)p * RN_UKR_NR, 0x0fff, _mm512_maskz_loadu_ps(mk, s + (size_t)p * cout));
      for (int i0 = 0; i0 < cin; i0 += RN_UKR_MR) {
        const int mm = cin - i0 < RN_UKR_MR ? cin - i0 : RN_UKR_MR;
        const float *a = ap + (size_t)i0 * kc, *an = i0 + RN_UKR_MR < cin ? a + (size_t)RN_UKR_MR * kc : ap;
        rn_ukr(mm, nn, kc, a, bp, beta, dU + (size_t)j0 * cin + i0, 1, cin, an, bp);
      }
    }
  }
}

/* The product phases' positions: static shares (P * t / nt) or, with g_dyn (RN_WINO_DYN, default
 * on), claimed one at a time from a counter shared by the region (each position's product is
 * independent, so the same bits either way; a thread the host slows takes fewer). The counter runs
 * on across chunks: chunk q's positions are [q P, (q + 1) P), and no thread claims past them. */
static int g_dyn = -1;
void rn_conv_set_wino_dynamic(int on) { g_dyn = on != 0; }
static int dyn_on(void) {
  if (g_dyn < 0) {
    const char *e = getenv("RN_WINO_DYN");
    g_dyn = !(e && e[0] == '0');
  }
  return g_dyn;
}
static int claim(int *ctr, int end) {
  int v = __atomic_load_n(ctr, __ATOMIC_RELAXED);
  while (v < end)
    if (__atomic_compare_exchange_n(ctr, &v, v + 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return v;
  return -1;
}
/* Next position of chunk q for this thread: static [x0, x1) in order (*it counts), or claimed. */
static int next_pos(int *ctr, int q, int P, int x1, int *it) {
  if (!ctr) return *it < x1 ? (*it)++ : -1;
  const int v = claim(ctr, (q + 1) * P);
  return v < 0 ? -1 : v - q * P;
}

/* The forward core, run by every thread of the region: y (cy channels) = conv(x (cx channels)),
 * H x W both, tile size R (2 or 4), with U: fwd = 1: U[xi][cy][cx] (transb), 0 (dx): [cx][cy]
 * (F(2,3): the forward kernel's, read at flip_pos); ups > 0: U packed (Up[xi] at xi * ups,
 * prod_ukr; dx's flip_pos applied in the packing), bp this thread's panel buffer. */
static void core(int R, int cx, int cy, int H, int W, int n, const float *x, const float *U, int fwd, float *y,
                 int acc, float *V, float *M, int TC, int t, int nt, const rn_conv_pre *pre, const wep *ep,
                 size_t ups, float *bp, int *ctr) {
  const int P = (R + 2) * (R + 2), th = (H + R - 1) / R, tw = (W + R - 1) / R;
  const int64_t NT = (int64_t)n * th * tw;
  const size_t vs = (size_t)TC * cx, ms = (size_t)TC * cy, us = (size_t)cx * cy;
  const int x0 = P * t / nt, x1 = P * (t + 1) / nt;
  wcarry cw, *cr = carry_for(&cw, cx);
  int q = 0;
  for (int64_t c0 = 0; c0 < NT; c0 += TC, q++) {
    const int tc = (int)(NT - c0 < TC ? NT - c0 : TC);
    const int64_t a = c0 + (int64_t)tc * t / nt, b = c0 + (int64_t)tc * (t + 1) / nt;
    for (int64_t id = a; id < b; id++) {
      const int64_t img = id / ((int64_t)th * tw);
      const int r = (int)(id % ((int64_t)th * tw));
      const int hv = carry_ok(cr, id, a, r, tw);
      if (R == 4) in_tile6(x, cx, H, W, img, r / tw, r % tw, V + (size_t)(id - c0) * cx, vs, pre, cr, hv);
      else in_tile(x, cx, H, W, img, r / tw, r % tw, V + (size_t)(id - c0) * cx, vs, pre);
    }
#pragma omp barrier
    for (int it = x0, xi; (xi = next_pos(ctr, q, P, x1, &it)) >= 0;) {
      if (ups)
        prod_ukr(tc, cx, cy, V + xi * vs, U + xi * ups, M + xi * ms, bp);
      else if (fwd)
        rn_sgemm_serial(0, 1, tc, cy, cx, 1.0f, V + xi * vs, cx, U + xi * us, cx, 0.0f, M + xi * ms, cy);
      else
        rn_sgemm_serial(0, 0, tc, cy, cx, 1.0f, V + xi * vs, cx, U + (R == 4 ? xi : flip_pos(xi)) * us, cy, 0.0f,
                        M + xi * ms, cy);
    }
#pragma omp barrier
    for (int64_t id = a; id < b; id++) {
      const int64_t img = id / ((int64_t)th * tw);
      const int r = (int)(id % ((int64_t)th * tw));
      if (R == 4) out_tile6(M + (size_t)(id - c0) * cy, ms, cy, y, H, W, img, r / tw, r % tw, acc, ep);
      else out_tile(M + (size_t)(id - c0) * cy, ms, cy, y, H, W, img, r / tw, r % tw, acc, ep);
    }
  }
}

/* ---- The small-channel path ---- */

/* Rows per register block of prod for NV output vectors: 24 accumulators (16 for NV = 1). */
static int prod_rows(int nv) { return nv == 1 ? 16 : 24 / nv; }

/* m[r][0..16NV) = sum_k v[r][k] u[k][0..16NV) for r < rows (a multiple of RB), K = cx. Literal
 * block sizes and K (a macro, not parameters) so the accumulators stay in registers and the RB
 * rows of v are one pointer plus constant offsets: with K a parameter the compiler kept a pointer
 * per row, 16 of them for NV = 1, and moved them between xmm and general registers inside the
 * k loop (thirtieth round). */
#define PROD_K(NV, RB, K)                                                                                      \
  static void prod_##NV##_##K(int rows, const float *v, const float *u, float *m) {                           \
    const int N = 16 * NV;                                                                                      \
    for (int r0 = 0; r0 < rows; r0 += RB) {                                                                     \
      V16 c[RB][NV];                                                                                            \
      _Pragma("GCC unroll 16") for (int r = 0; r < RB; r++) _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) \
          c[r][j] = _mm512_setzero_ps();                                                                        \
      const float *vr = v + (size_t)r0 * K;                                                                     \
      _Pragma("GCC unroll 2") for (int k = 0; k < K; k++) {                                                     \
        V16 b[NV];                                                                                              \
        _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) b[j] = _mm512_loadu_ps(u + (size_t)k * N + 16 * j); \
        _Pragma("GCC unroll 16") for (int r = 0; r < RB; r++) {                                                 \
          const V16 a = _mm512_set1_ps(vr[r * K + k]);                                                          \
          _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) c[r][j] = FMA(a, b[j], c[r][j]);                 \
        }                                                                                                       \
      }                                                                                                         \
      _Pragma("GCC unroll 16") for (int r = 0; r < RB; r++) _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) \
          _mm512_storeu_ps(m + (size_t)(r0 + r) * N + 16 * j, c[r][j]);                                         \
    }                                                                                                           \
  }
#define PROD_KS(NV, RB) PROD_K(NV, RB, 16) PROD_K(NV, RB, 32) PROD_K(NV, RB, 48) PROD_K(NV, RB, 64)
PROD_KS(1, 16)
PROD_KS(2, 12)
PROD_KS(3, 8)
PROD_KS(4, 6)
#define PROD_CASE(NV)                                                                                          \
  switch (K / 16) {                                                                                             \
  case 1: prod_##NV##_16(rows, v, u, m); return;                                                               \
  case 2: prod_##NV##_32(rows, v, u, m); return;                                                               \
  case 3: prod_##NV##_48(rows, v, u, m); return;                                                               \
  default: prod_##NV##_64(rows, v, u, m); return;                                                              \
  }
static void prod(int K, int N, int rows, const float *v, const float *u, float *m) {
  switch (N / 16) {
  case 1: PROD_CASE(1)
  case 2: PROD_CASE(2)
  case 3: PROD_CASE(3)
  default: PROD_CASE(4)
  }
}

/* du[co][0..16NVI) += sum_i e[i][co] v[i][0..16NVI) for i < rows, CB output channels per block
 * (CB divides cout, a multiple of 16). */
#define DW_PROD_K(NVI, CB)                                                                                     \
  static void dw_prod_##NVI(int cout, int rows, const float *e, const float *v, float *du) {                  \
    const int cin = 16 * NVI;                                                                                   \
    for (int co0 = 0; co0 < cout; co0 += CB) {                                                                  \
      V16 c[CB][NVI];                                                                                           \
      _Pragma("GCC unroll 16") for (int r = 0; r < CB; r++) _Pragma("GCC unroll 4") for (int j = 0; j < NVI; j++) \
          c[r][j] = _mm512_loadu_ps(du + (size_t)(co0 + r) * cin + 16 * j);                                     \
      for (int i = 0; i < rows; i++) {                                                                          \
        V16 b[NVI];                                                                                             \
        _Pragma("GCC unroll 4") for (int j = 0; j < NVI; j++) b[j] = _mm512_loadu_ps(v + (size_t)i * cin + 16 * j); \
        _Pragma("GCC unroll 16") for (int r = 0; r < CB; r++) {                                                 \
          const V16 a = _mm512_set1_ps(e[(size_t)i * cout + co0 + r]);                                          \
          _Pragma("GCC unroll 4") for (int j = 0; j < NVI; j++) c[r][j] = FMA(a, b[j], c[r][j]);                \
        }                                                                                                       \
      }                                                                                                         \
      _Pragma("GCC unroll 16") for (int r = 0; r < CB; r++) _Pragma("GCC unroll 4") for (int j = 0; j < NVI; j++) \
          _mm512_storeu_ps(du + (size_t)(co0 + r) * cin + 16 * j, c[r][j]);                                     \
    }                                                                                                           \
  }
DW_PROD_K(1, 16)
DW_PROD_K(2, 8)
DW_PROD_K(3, 8)
DW_PROD_K(4, 4)
static void dw_prod(int cin, int cout, int rows, const float *e, const float *v, float *du) {
  switch (cin / 16) {
  case 1: dw_prod_1(cout, rows, e, v, du); break;
  case 2: dw_prod_2(cout, rows, e, v, du); break;
  case 3: dw_prod_3(cout, rows, e, v, du); break;
  default: dw_prod_4(cout, rows, e, v, du); break;
  }
}

/* The small path's groups, with work stealing: thread t owns the groups [NG t / nt, NG (t+1) /
 * nt), kept as front << 32 | end in sh[t]; it takes its own from the front and, when they are
 * done, the other threads' from their end. Claiming all groups from one counter instead
 * interleaved the threads' groups, and a layer's output then sat half in the other core's cache
 * when the next layer (static shares) read it: CIFAR ResNet-56's step 1.116 of its time. */
#define STEAL_MAXT 64
static void steal_init(uint64_t *sh, int64_t NG, int t, int nt) {
  if (sh) __atomic_store_n(&sh[t], (uint64_t)(NG * t / nt) << 32 | (uint64_t)(NG * (t + 1) / nt), __ATOMIC_RELAXED);
}
static int64_t take_group(uint64_t *r, int back) {
  uint64_t v = __atomic_load_n(r, __ATOMIC_RELAXED);
  for (;;) {
    const uint32_t f = (uint32_t)(v >> 32), e = (uint32_t)v;
    if (f >= e) return -1;
    const uint64_t nv = back ? v - 1 : v + ((uint64_t)1 << 32);
    if (__atomic_compare_exchange_n(r, &v, nv, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return back ? e - 1 : f;
  }
}
/* Next group for thread t: its static share [*it, g1) in order, or (sh) as above. */
static int64_t next_group(uint64_t *sh, int t, int nt, int64_t g1, int64_t *it) {
  if (!sh) return *it < g1 ? (*it)++ : -1;
  int64_t g = take_group(&sh[t], 0);
  for (int k = 1; g < 0 && k < nt; k++) g = take_group(&sh[(t + k) % nt], 1);
  return g;
}

/* The small path's forward core (one thread): as core, with U[xi] laid out [cx][cy] (forward: the
 * transpose of weights6's; dx: the forward kernel's, at flip_pos for F(2,3)), V and M this thread's
 * group buffers. The tiles go in groups of SG, a static share of the groups per thread or (sh
 * non-NULL, rn_conv_set_wino_dynamic) with work stealing (steal_init), so a thread the host slows
 * runs fewer; the epilogue's sums (ep) into each group's own slot from ep->part on (group_images
 * images of cy channels each), so the bits do not depend on who ran which group. */
static void core_small(int R, int cx, int cy, int H, int W, int n, const float *x, const float *U, int flip,
                       float *y, int acc, float *V, float *M, int t, int nt, const rn_conv_pre *pre, const wep *ep,
                       int64_t gi, uint64_t *sh) {
  const int P = (R + 2) * (R + 2), th = (H + R - 1) / R, tw = (W + R - 1) / R, RB = prod_rows(cy / 16);
  const int64_t NT = (int64_t)n * th * tw, NG = (NT + SG - 1) / SG, tpi = (int64_t)th * tw;
  const size_t vs = (size_t)SG * cx, ms = (size_t)SG * cy, us = (size_t)cx * cy;
  wcarry cw, *cr = carry_for(&cw, cx);
  wep eg = {0, NULL, NULL, 0}, *epg = ep ? &eg : NULL;
  int64_t it = NG * t / nt;
  for (int64_t g; (g = next_group(sh, t, nt, NG * (t + 1) / nt, &it)) >= 0;) {
    const int64_t g0 = g * SG;
    const int tc = (int)(NT - g0 < SG ? NT - g0 : SG), rows = (tc + RB - 1) / RB * RB;
    if (ep) {
      eg = *ep;
      eg.part = ep->part + (size_t)g * gi * 2 * cy;
      eg.img0 = g0 / tpi;
      memset(eg.part, 0, sizeof(double) * (size_t)((g0 + tc - 1) / tpi - eg.img0 + 1) * 2 * cy);
    }
    for (int64_t id = g0; id < g0 + tc; id++) {
      const int64_t img = id / ((int64_t)th * tw);
      const int r = (int)(id % ((int64_t)th * tw));
      const int hv = carry_ok(cr, id, g0, r, tw);
      if (R == 4) in_tile6(x, cx, H, W, img, r / tw, r % tw, V + (size_t)(id - g0) * cx, vs, pre, cr, hv);
      else in_tile(x, cx, H, W, img, r / tw, r % tw, V + (size_t)(id - g0) * cx, vs, pre);
    }
    if (rows > tc) /* the block's rows past the last tile: zeros, not stale or unset floats */
      for (int xi = 0; xi < P; xi++) memset(V + xi * vs + (size_t)tc * cx, 0, sizeof(float) * (rows - tc) * cx);
    for (int xi = 0; xi < P; xi++)
      prod(cx, cy, rows, V + xi * vs, U + (size_t)(flip && R == 2 ? flip_pos(xi) : xi) * us, M + xi * ms);
    for (int64_t id = g0; id < g0 + tc; id++) {
      const int64_t img = id / ((int64_t)th * tw);
      const int r = (int)(id % ((int64_t)th * tw));
      if (R == 4) out_tile6(M + (size_t)(id - g0) * cy, ms, cy, y, H, W, img, r / tw, r % tw, acc, epg);
      else out_tile(M + (size_t)(id - g0) * cy, ms, cy, y, H, W, img, r / tw, r % tw, acc, epg);
    }
  }
}

/* Forward U[xi][co][ci] (weights6 / weights_fwd, in slot 0) transposed into Ut[xi][ci][co], positions
 * [x0, x1). */
static void transpose_u(const float *U, int cin, int cout, int x0, int x1, float *Ut) {
  const size_t us = (size_t)cin * cout;
  for (int xi = x0; xi < x1; xi++)
    for (int co = 0; co < cout; co++)
      for (int ci = 0; ci < cin; ci++) Ut[xi * us + (size_t)ci * cout + co] = U[xi * us + (size_t)co * cin + ci];
}

/* This thread's partial sums (part_offset), zeroed for n images of C channels. */
static double *part_zero(const rn_conv_desc *d, int n, int T, float *ws, int t, int C) {
  double *p = (double *)(ws + part_offset(d, n, T)) + (size_t)t * n * 2 * cmax(d);
  memset(p, 0, sizeof(double) * (size_t)n * 2 * C);
  return p;
}
/* After a barrier: out[i] (2C doubles per image) = the threads' partial sums of image i added in
 * thread order (deterministic for a given thread count); the threads split the images. */
static void part_reduce(const rn_conv_desc *d, int n, int T, const float *ws, int C, double *out, int t, int nt) {
  const double *base = (const double *)(ws + part_offset(d, n, T));
  const size_t pt = (size_t)n * 2 * cmax(d), c2 = 2 * (size_t)C;
  for (int i = n * t / nt; i < n * (t + 1) / nt; i++)
    for (size_t j = 0; j < c2; j++) {
      double v = base[(size_t)i * c2 + j];
      for (int u = 1; u < nt; u++) v += base[(size_t)u * pt + (size_t)i * c2 + j];
      out[(size_t)i * c2 + j] = v;
    }
}

/* The small path's: after a barrier, out[i] (2C doubles per image) = the slots of the groups that
 * touch image i added in group order (the same bits for any thread count); the threads split the
 * images. */
static void part_reduce_groups(const rn_conv_desc *d, int n, int T, const float *ws, int C, double *out, int t,
                               int nt) {
  const double *base = (const double *)(ws + part_offset(d, n, T));
  const int64_t tpi = ntiles(d, 1), gi = group_images(d);
  const size_t c2 = 2 * (size_t)C;
  for (int i = n * t / nt; i < n * (t + 1) / nt; i++) {
    const int64_t gf = i * tpi / SG, gl = ((i + 1) * tpi - 1) / SG;
    double *o = out + (size_t)i * c2;
    for (int64_t g = gf; g <= gl; g++) {
      const double *p = base + ((size_t)g * gi + (size_t)(i - g * SG / tpi)) * c2;
      if (g == gf) memcpy(o, p, sizeof(double) * c2);
      else
        for (size_t j = 0; j < c2; j++) o[j] += p[j];
    }
  }
}

static void forward_small(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                          int T, double *stats, const rn_conv_pre *pre) {
  const int cin = d->cin, cout = d->cout, R = rn_conv_wino_tile(d), P = npos(d);
  const size_t uf = (size_t)P * cin * cout, slots = T > 2 ? (size_t)T : 2;
  float *U = ws, *Ut = ws + uf, *buf = ws + slots * uf;
  const size_t gb = (size_t)P * SG * cmax(d);
  uint64_t shb[STEAL_MAXT], *sh = dyn_on() && T <= STEAL_MAXT ? shb : NULL; /* next_group */
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    wep ep = {1, NULL, (double *)(ws + part_offset(d, n, T)), 0};
    steal_init(sh, ngroups(d, n), t, nt); /* before the barriers below */
    if (R == 4) weights6(w, cin, cout, cout * t / nt, cout * (t + 1) / nt, U, 0);
    else weights_fwd(w, cin, cout, cout * t / nt, cout * (t + 1) / nt, U);
#pragma omp barrier
    transpose_u(U, cin, cout, P * t / nt, P * (t + 1) / nt, Ut);
#pragma omp barrier
    core_small(R, cin, cout, d->h, d->w, n, x, Ut, 0, y, 0, buf + (size_t)t * 2 * gb, buf + ((size_t)t * 2 + 1) * gb,
               t, nt, pre, stats ? &ep : NULL, group_images(d), sh);
    if (stats) {
#pragma omp barrier
      part_reduce_groups(d, n, T, ws, cout, stats, t, nt);
    }
  }
}

static void backward_small(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                           float *dx, int acc, float *dw, float *ws, int T, const rn_bn_sums *bn) {
  const int cin = d->cin, cout = d->cout, H = d->h, W = d->w, R = rn_conv_wino_tile(d), P = npos(d);
  const int th = (H + R - 1) / R, tw = (W + R - 1) / R;
  const int64_t NT = ntiles(d, n);
  const size_t uf = (size_t)P * cin * cout, slots = T > 2 ? (size_t)T : 2;
  const size_t gb = (size_t)P * SG * cmax(d), vs = (size_t)SG * cin, es = (size_t)SG * cout, us = (size_t)cin * cout;
  float *buf = ws + slots * uf;
  const rn_conv_pre *pre = bn ? bn->pre : NULL;
  uint64_t shb[STEAL_MAXT], *sh = dyn_on() && T <= STEAL_MAXT ? shb : NULL; /* next_group */
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    float *V = buf + (size_t)t * 2 * gb, *E = V + gb;
    if (dw) { /* this thread's dU (slot t) over its tiles, then the slots added into slot 0 */
      float *dU = ws + (size_t)t * uf;
      memset(dU, 0, sizeof(float) * uf);
      const int64_t a = NT * t / nt, b = NT * (t + 1) / nt;
      wcarry cw, *cr = carry_for(&cw, cin);
      for (int64_t g0 = a; g0 < b; g0 += SG) {
        const int tc = (int)(b - g0 < SG ? b - g0 : SG);
        for (int64_t id = g0; id < g0 + tc; id++) {
          const int64_t img = id / ((int64_t)th * tw);
          const int r = (int)(id % ((int64_t)th * tw));
          const int hv = carry_ok(cr, id, a, r, tw);
          if (R == 4) {
            in_tile6(x, cin, H, W, img, r / tw, r % tw, V + (size_t)(id - g0) * cin, vs, pre, cr, hv);
            dy_tile6(dy, cout, H, W, img, r / tw, r % tw, E + (size_t)(id - g0) * cout, es);
          } else {
            in_tile(x, cin, H, W, img, r / tw, r % tw, V + (size_t)(id - g0) * cin, vs, pre);
            dy_tile(dy, cout, H, W, img, r / tw, r % tw, E + (size_t)(id - g0) * cout, es);
          }
        }
        for (int xi = 0; xi < P; xi++) dw_prod(cin, cout, tc, E + xi * es, V + xi * vs, dU + xi * us);
      }
#pragma omp barrier
      const size_t f0 = uf * t / nt, f1 = uf * (t + 1) / nt;
      for (int s = 1; s < nt; s++) {
        const float *o = ws + (size_t)s * uf;
        for (size_t i = f0; i < f1; i++) ws[i] += o[i];
      }
#pragma omp barrier
      if (R == 4) weights6_bwd(ws, cin, cout, cout * t / nt, cout * (t + 1) / nt, dw);
      else weights_bwd(ws, cin, cout, cout * t / nt, cout * (t + 1) / nt, dw);
#pragma omp barrier
    }
    if (dx) { /* U[xi][co][ci] is [cx][cy] for the dx core as it stands */
      wep ep = {0, bn, (double *)(ws + part_offset(d, n, T)), 0};
      steal_init(sh, ngroups(d, n), t, nt); /* before the barrier below */
      if (R == 4) weights6(w, cin, cout, cout * t / nt, cout * (t + 1) / nt, ws, 1);
      else weights_fwd(w, cin, cout, cout * t / nt, cout * (t + 1) / nt, ws);
#pragma omp barrier
      core_small(R, cout, cin, H, W, n, dy, ws, 1, dx, acc, V, E, t, nt, NULL, bn ? &ep : NULL, group_images(d),
                 sh);
      if (bn) {
#pragma omp barrier
        part_reduce_groups(d, n, T, ws, cin, bn->sums, t, nt);
      }
    }
  }
}

void rn_conv_wino_forward_ep(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                             int threads, double *stats, const rn_conv_pre *pre) {
  RN_ASSERT(rn_conv_wino_shape(d) && n >= 1 && ws);
  RN_ASSERT(!pre || pre->sc); /* a lazy BN: its coefficients */
  pfx_init();
  const int T = threads < 1 ? 1 : threads;
  if (small_path(d)) {
    forward_small(d, n, x, w, y, ws, T, stats, pre);
    return;
  }
  const int cin = d->cin, cout = d->cout, TC = chunk_tiles(d, n), R = rn_conv_wino_tile(d), P = npos(d);
  float *U = u_base(ws), *V = U + u_slot(d), *M = V + (size_t)P * TC * cmax(d), *PK = M + (size_t)P * TC * cmax(d);
  const int uk = rn_ukr_ok(), dyn = dyn_on();
  const size_t ups = uk ? (size_t)al32(cout) * cin : 0;
  int ctr = 0; /* next_pos */
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    wep ep = {1, NULL, stats ? part_zero(d, n, T, ws, t, cout) : NULL, 0};
    if (uk) weights_pack_fwd(R, w, cin, cout, cout / 16 * t / nt, cout / 16 * (t + 1) / nt, U, ups);
    else if (R == 4) weights6(w, cin, cout, cout * t / nt, cout * (t + 1) / nt, U, 0);
    else weights_fwd(w, cin, cout, cout * t / nt, cout * (t + 1) / nt, U);
#pragma omp barrier
    core(R, cin, cout, d->h, d->w, n, x, U, 1, y, 0, V, M, TC, t, nt, pre, stats ? &ep : NULL, ups,
         PK + (size_t)t * pk_floats(d), dyn ? &ctr : NULL);
    if (stats) {
#pragma omp barrier
      part_reduce(d, n, T, ws, cout, stats, t, nt);
    }
  }
}

void rn_conv_wino_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                          int threads) {
  rn_conv_wino_forward_ep(d, n, x, w, y, ws, threads, NULL, NULL);
}

void rn_conv_wino_backward_bn(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                              float *dx, int acc, float *dw, float *ws, int threads, const rn_bn_sums *bn) {
  RN_ASSERT(rn_conv_wino_shape(d) && n >= 1 && ws);
  RN_ASSERT(!bn || (bn->sums && bn->x)); /* dx's epilogue sums (with dx); dW applies bn->pre */
  if (!dx && !dw) return;
  pfx_init();
  const int T = threads < 1 ? 1 : threads;
  if (small_path(d)) {
    backward_small(d, n, x, w, dy, dx, acc, dw, ws, T, bn);
    return;
  }
  const int cin = d->cin, cout = d->cout, TC = chunk_tiles(d, n), H = d->h, W = d->w;
  const int R = rn_conv_wino_tile(d), P = npos(d);
  const int th = (H + R - 1) / R, tw = (W + R - 1) / R;
  const int64_t NT = ntiles(d, n);
  float *U = u_base(ws), *V = U + u_slot(d), *M = V + (size_t)P * TC * cmax(d), *PK = M + (size_t)P * TC * cmax(d);
  const size_t us = (size_t)cin * cout, vs = (size_t)TC * cin, es = (size_t)TC * cout;
  const rn_conv_pre *pre = bn ? bn->pre : NULL;
  const int uk = rn_ukr_ok(), dyn = dyn_on();
  const size_t ups = uk ? (size_t)al32(cin) * cout : 0;
  int ctr_dw = 0, ctr_dx = 0; /* next_pos */
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int x0 = P * t / nt, x1 = P * (t + 1) / nt;
    float *ap = PK + (size_t)t * pk_floats(d), *bp = ap + (size_t)al32(cmax(d)) * WKC;
    if (dw) { /* dU[xi] = sum over tiles E[xi]^T V[xi], each thread its own positions */
      wcarry cw, *cr = carry_for(&cw, cin);
      int q = 0;
      for (int64_t c0 = 0; c0 < NT; c0 += TC, q++) {
        const int tc = (int)(NT - c0 < TC ? NT - c0 : TC);
        const int64_t a = c0 + (int64_t)tc * t / nt, b = c0 + (int64_t)tc * (t + 1) / nt;
        for (int64_t id = a; id < b; id++) {
          const int64_t img = id / ((int64_t)th * tw);
          const int r = (int)(id % ((int64_t)th * tw));
          const int hv = carry_ok(cr, id, a, r, tw);
          if (R == 4) {
            in_tile6(x, cin, H, W, img, r / tw, r % tw, V + (size_t)(id - c0) * cin, vs, pre, cr, hv);
            dy_tile6(dy, cout, H, W, img, r / tw, r % tw, M + (size_t)(id - c0) * cout, es);
          } else {
            in_tile(x, cin, H, W, img, r / tw, r % tw, V + (size_t)(id - c0) * cin, vs, pre);
            dy_tile(dy, cout, H, W, img, r / tw, r % tw, M + (size_t)(id - c0) * cout, es);
          }
        }
#pragma omp barrier
        for (int it = x0, xi; (xi = next_pos(dyn ? &ctr_dw : NULL, q, P, x1, &it)) >= 0;) {
          if (uk)
            dw_ukr(tc, cin, cout, M + xi * es, V + xi * vs, c0 ? 1.0f : 0.0f, U + xi * us, ap, bp);
          else
            rn_sgemm_serial(1, 0, cout, cin, tc, 1.0f, M + xi * es, cout, V + xi * vs, cin, c0 ? 1.0f : 0.0f,
                            U + xi * us, cin);
        }
#pragma omp barrier
      }
      if (R == 4) weights6_bwd(U, cin, cout, cout * t / nt, cout * (t + 1) / nt, dw);
      else weights_bwd(U, cin, cout, cout * t / nt, cout * (t + 1) / nt, dw);
#pragma omp barrier
    }
    if (dx) {
      wep ep = {0, bn, bn ? part_zero(d, n, T, ws, t, cin) : NULL, 0};
      if (uk) weights_pack_dx(R, w, cin, cout, cout * t / nt, cout * (t + 1) / nt, U, ups);
      else if (R == 4) weights6(w, cin, cout, cout * t / nt, cout * (t + 1) / nt, U, 1);
      else weights_fwd(w, cin, cout, cout * t / nt, cout * (t + 1) / nt, U);
#pragma omp barrier
      core(R, cout, cin, H, W, n, dy, U, 0, dx, acc, V, M, TC, t, nt, NULL, bn ? &ep : NULL, ups, bp,
           dyn ? &ctr_dx : NULL);
      if (bn) {
#pragma omp barrier
        part_reduce(d, n, T, ws, cin, bn->sums, t, nt);
      }
    }
  }
}

void rn_conv_wino_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                           float *dx, int acc, float *dw, float *ws, int threads) {
  rn_conv_wino_backward_bn(d, n, x, w, dy, dx, acc, dw, ws, threads, NULL);
}

#else
long rn_conv_wino_ukr_products(void) { return 0; }
void rn_conv_set_wino_dynamic(int on) { (void)on; }
void rn_conv_set_wino_pfx(int on) { (void)on; }
void rn_conv_set_wino_carry(int on) { (void)on; }
void rn_conv_wino_forward_ep(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                             int threads, double *stats, const rn_conv_pre *pre) {
  (void)d, (void)n, (void)x, (void)w, (void)y, (void)ws, (void)threads, (void)stats, (void)pre;
  RN_ASSERT(0 && "Winograd convolution needs AVX-512");
}
void rn_conv_wino_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                          int threads) {
  rn_conv_wino_forward_ep(d, n, x, w, y, ws, threads, NULL, NULL);
}
void rn_conv_wino_backward_bn(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                              float *dx, int acc, float *dw, float *ws, int threads, const rn_bn_sums *bn) {
  (void)d, (void)n, (void)x, (void)w, (void)dy, (void)dx, (void)acc, (void)dw, (void)ws, (void)threads, (void)bn;
  RN_ASSERT(0 && "Winograd convolution needs AVX-512");
}
void rn_conv_wino_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                           float *dx, int acc, float *dw, float *ws, int threads) {
  rn_conv_wino_backward_bn(d, n, x, w, dy, dx, acc, dw, ws, threads, NULL);
}
#endif
