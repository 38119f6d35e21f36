/* Direct (no im2col) convolution, stride 1 or 2, channel counts that are multiples of 16, NHWC,
 * AVX-512: the CIFAR ResNets' 3x3 convolutions with 16/32/64 channels, where im2col + GEMM is
 * weak (N = cout = 16 is a narrow GEMM, and im2col multiplies the activation traffic by kh*kw),
 * and ResNet-50's 3x3 and (some) 1x1 convolutions.
 *
 * Each thread owns whole images. Per image the input is copied once into a zero-padded buffer
 * (its own part of ws), so the inner loops have no bounds checks (1x1: no padding, read in place).
 * Then
 * - forward: per output line, blocks of NB pixels x NC*16 output channels live in NB*NC zmm
 *   accumulators (14x2 or 7x4 = 28 for ResNet-50's 56/28/14/7-wide lines, 16x1 or 8x2 otherwise);
 *   for every tap and input channel one weight vector per channel block and one broadcast input
 *   value per pixel (FMA with a memory broadcast; stride 2 reads every other pixel). Weights are
 *   used as Wt[co/16][ky][kx][ci][co%16] (transposed and blocked once per call into ws, so each
 *   channel block's weights are one contiguous stream).
 * - dx (stride 1): the same kernel on the padded dy with the flipped, transposed weights
 *   W'[ky'][kx'][co][ci] = W[co][kh-1-ky'][kw-1-kx'][ci] and padding kh-1-pad. 1x1 stride 2: the
 *   1x1 kernel on dy, spread onto the even pixels of the even lines (spread2).
 * - dW: for one tap, one 16-wide block of input channels and 16 output channels: 16 accumulators
 *   (dW[co][tap][ci..ci+16] rows, in W's own OHWI layout); the image is swept in groups of lines
 *   (>= 256 pixels) and every block of dW is visited per group while the group is in L2
 *   (per pixel one input vector and 16 broadcast dy values). Thread 0 accumulates into dw, the
 *   others into partial buffers in ws, summed at the end in a fixed order.
 * Which shapes and directions take it is decided per shape by measured rules (below).
 * Everything is in float; results differ from the GEMM path only by summation order. */
#include <stdint.h>
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
/* The width rules choose the faster path; every width is correct (all = 1: all-widths mode, or a
 * lazy BN's reader whose Winograd path is switched off, rn_conv_direct_pre_any) */
static int fwd_width_a(int w, int all) { return all || w % 8 == 0 || w >= 24 || w == 14 || w == 7; }
static int bwd_width_a(int w, int all) { return all || w % 8 == 0 || w >= 24; }

static int g_direct_1x1 = -1; /* -1: read RN_CONV_DIRECT_1X1 (and RN_CONV_STREAM) at first use */
static int g_stream = 16;     /* streaming stores for 1x1 outputs above this many MB (0: off; RN_CONV_STREAM=0
                                 turns them off, RN_CONV_STREAM_MB=N sets N) */
static int g_stream_set;      /* rn_conv_set_stream_mb was called: the environment is not read */
static int g_pf1 = 1;         /* 1x1: prefetch of the next line (RN_CONV_PF1=0: off) */
static int g_pf_acc = 1;      /* prefetch of y when accumulating (RN_CONV_PFACC=0: off) */
void rn_conv_set_direct_1x1(int on) { g_direct_1x1 = on != 0; }
void rn_conv_set_stream_mb(int mb) { g_stream = mb < 0 ? 0 : mb, g_stream_set = 1; }
static int direct_1x1(void) {
  if (g_direct_1x1 < 0) {
    const char *v = getenv("RN_CONV_DIRECT_1X1");
    g_direct_1x1 = !(v && v[0] == '0');
    v = getenv("RN_CONV_STREAM");
    const char *mb = getenv("RN_CONV_STREAM_MB");
    if (!g_stream_set) g_stream = v && v[0] == '0' ? 0 : mb && *mb ? atoi(mb) : 16;
    if (g_stream < 0) g_stream = 0;
    v = getenv("RN_CONV_PF1");
    g_pf1 = !(v && v[0] == '0');
    v = getenv("RN_CONV_PFACC");
    g_pf_acc = !(v && v[0] == '0');
  }
  return g_direct_1x1;
}
static int is_1x1(const rn_conv_desc *d) { return d->kh == 1 && d->kw == 1; }
static int g_il = -1; /* 1x1 backward: dy band of dW-then-dx in KB, 0 = off (RN_CONV_IL; -1: not read yet) */
void rn_conv_set_dw_interleave(int kb) { g_il = kb < 0 ? 0 : kb; }
static int il_kb(void) {
  if (g_il < 0) {
    const char *v = getenv("RN_CONV_IL");
    g_il = v && *v ? atoi(v) : 512;
    if (g_il < 0) g_il = 0;
  }
  return g_il;
}
static int g_dw1x1 = -1; /* RN_CONV_DW1X1=0: 1x1 dW on the generic dW tile instead (A/B) */
static int use_dw1x1(void) {
  if (g_dw1x1 < 0) {
    const char *v = getenv("RN_CONV_DW1X1");
    g_dw1x1 = !(v && v[0] == '0');
  }
  return g_dw1x1;
}

/* Input channels: multiples of 16, or up to 4 for a network's first 3x3 stride-1 convolution (the
 * CIFAR stem: forward, and dW up to 3 channels (dw_stem); it has no dx). The ImageNet 7x7
 * stride-2 stem has its own kernels (conv_stem7.c; the generic tile with a runtime C = 3 ran at 75
 * GF/s on one thread, as fast as the GEMM path). */
static int stem(const rn_conv_desc *d) { return d->cin <= 4 && d->kh == 3 && d->kw == 3 && d->stride == 1; }
int rn_conv_direct_shape(const rn_conv_desc *d) {
  return (d->stride == 1 || d->stride == 2) && (d->cin % 16 == 0 || stem(d)) && d->cout % 16 == 0 && d->cin <= g_direct_max_c &&
         d->cout <= g_direct_max_c && d->pad < d->kh && d->pad < d->kw && d->kh <= 7 && d->kw <= 7 &&
         (!is_1x1(d) || direct_1x1());
}
/* 1x1 rules (back-to-back per-shape measurements, b32, GF/s direct vs GEMM, docs/PERF.md):
 * forward is direct for lines >= 14 wide (1 thread: 64->256@56 119-125/97-107, 128->512@28
 * 134/113-136, 1024->256@14 142-156/131-136, 256->64@56 90-98/84) and for 7-wide ones (twenty-sixth
 * round, rn-bench-conv --ab-direct, 2 threads, direct/GEMM time, medians of 15 pairs: 512->2048@7
 * 0.934-0.979 (five runs), 2048->512@7 0.855-0.991 (median 0.922), the projection 1024->2048 s2@14
 * 0.863-0.922, ResNet-18's 256->512 s2@14 0.870-0.879; in the first round, before the 7 x 4 tiles
 * and the plane sweeps, they lost: 512->2048@7 108-119/149-151 GF/s on 1 thread). dW
 * (src/kernels/conv_dw1x1.c) is direct for stride 1 on lines >= 14 wide and for stride 2 on output
 * lines >= 28 wide (2 threads, direct/GEMM: 64->256@56 197/89, 256->64@56 190/132, 512->128@28
 * 230/126, 1024->256@14 252/180, 256->1024@14 262/216, 256->512 s2@56 227/183); the 7-wide ones
 * (512->2048@7 195-217/252-272, 2048->512@7 210-235/240) stay on the GEMM. Stride 2 with 14- and
 * 7-wide output: direct up to 2 MB of dW (twenty-sixth round, rn-bench-conv --ab-direct, 2 threads,
 * medians of 15 paired runs, direct/GEMM time: 512->1024@28 0.901-0.913 (four runs), ResNet-18's
 * 128->256@28 0.70-0.71 and 256->512@14 0.84-0.88); 1024->2048@14 (8 MB) stays on the GEMM
 * (1.12-1.19).
 * With RN_CONV_DW1X1=0 the generic dW tile takes stride 1 on lines >= 28 wide (64->256@56 150/90,
 * 256->64@56 128/104, 512->128@28 176/120). dx: see rn_conv_direct_dx_ok. All-widths mode (tests)
 * takes every part direct. */
/* 3x3 stride-2 dW direct at 256 input channels on lines >= 28 wide (ResNet-50's layer3.0.conv2;
 * twenty-ninth round, rn-bench-conv --ab-direct, 2 threads, b32, medians of 15 pairs, direct/GEMM
 * time: 256->256 s2@28 0.906; 512->512 s2@14 1.056 stays on the GEMM). With all three passes
 * direct, the BN before it is applied lazily (rn_conv_pre_ok). RN_CONV_DW_S2_256=0: the rule
 * before it (up to 128 input channels; A/B). */
static int g_dw_s2_256 = -1;
static int dw_s2_256(void) {
  if (g_dw_s2_256 < 0) {
    const char *v = getenv("RN_CONV_DW_S2_256");
    g_dw_s2_256 = !(v && v[0] == '0');
  }
  return g_dw_s2_256;
}
static int bwd_ok(const rn_conv_desc *d, int all) {
  if (!rn_conv_direct_enabled() || !rn_conv_direct_shape(d)) return 0;
  /* the CIFAR stem with up to 3 channels: dW only (dw_stem; rn-bench-conv, 2 threads, 3->16@32
   * b128: GEMM 46 GF/s) */
  if (d->cin % 16) return stem(d) && d->cin <= 3 && d->pad == 1;
  if (all) return 1;
  /* stride 2 (no direct dx): dW direct for 3x3 up to 128 input channels (rn-bench-conv, 2 threads,
   * GF/s direct/GEMM: 16->32@32 228/153, 32->64@16 253/147, 128->128@56 248/231; 256->256@28
   * 225/271 and the 1x1 ones 147/211 stayed on the GEMM, where im2col served dW and dx in one pass;
   * since items 50-54, 256->256@28 runs faster direct: dw_s2_256). */
  if (is_1x1(d) && use_dw1x1())
    return d->stride == 1 ? d->ow >= 14
                          : d->ow >= 28 || ((d->ow >= 14 || d->ow == 7) && (size_t)d->cin * d->cout <= ((size_t)1 << 19));
  if (d->stride != 1) return !is_1x1(d) && d->kw == 3 && (d->cin <= 128 || (dw_s2_256() && d->cin <= 256 && d->w >= 28));
  if (is_1x1(d)) return d->ow >= 28;
  return bwd_width_a(d->ow, all) && bwd_width_a(d->w, all);
}
int rn_conv_direct_bwd_ok(const rn_conv_desc *d) { return bwd_ok(d, g_all_widths); }
/* 1x1 stride 2 (the projection shortcuts): the 1x1 forward kernel on dy gives dx at the even
 * pixels of the even lines (a dense image in the thread's pad buffer), spread2 writes it with the
 * zeros in between; for output lines >= 14 wide and 7 wide (rn-bench-conv, 2 threads, GF/s
 * direct/GEMM + col2im: 256->512@56 293-297/233-237; twenty-sixth round, --ab-direct, direct/GEMM
 * time, medians of 15 pairs: 1024->2048@14 0.897-0.933 (four runs), 512->1024@28 0.942-1.019
 * (median 1.00), ResNet-18's 256->512@14 0.89-0.94 and 128->256@28 0.93-0.95). No BN sums in its epilogue (the kernel does
 * not write the zeros), so rn_conv_backward_bn computes none for it. RN_CONV_DX_S2=0: GEMM path. */
static int g_dx_s2 = -1;
static int dx_s2(void) {
  if (g_dx_s2 < 0) {
    const char *v = getenv("RN_CONV_DX_S2");
    g_dx_s2 = !(v && v[0] == '0');
  }
  return g_dx_s2;
}
/* 3x3 stride 2, pad 1: dx by pixel parity (dx_parity), four small stride-1 convolutions of dy,
 * with the BN-sum epilogue. Width rule in rn_conv_direct_dx_ok. RN_CONV_DX_PAR=0: GEMM path (A/B). */
static int g_dx_par = -1;
static int dx_par(const rn_conv_desc *d) {
  if (g_dx_par < 0) {
    const char *v = getenv("RN_CONV_DX_PAR");
    g_dx_par = !(v && v[0] == '0');
  }
  return g_dx_par && d->kh == 3 && d->kw == 3 && d->pad == 1 && d->stride == 2;
}
/* dx (stride 1): the forward kernel on dy, so the forward's width rule; the 14- and 7-wide
 * ResNet-50 layers run it faster than the GEMM path (b32, 1 thread, GF/s: 256@14 161/125, 512@7
 * 129/115) while their dW stays on the GEMM (direct 96-106/120, 81/129). 1x1: direct on lines
 * >= 14 wide (rn-bench-conv on a quiet machine, 2 threads: 64->256@56 184/150, 128->512@28
 * 293/198, 256->1024@14 292/276, 1024->256@14 315/306); 7-wide 285/302 stays on the GEMM. */
static int dx_ok(const rn_conv_desc *d, int all) {
  if (!rn_conv_direct_enabled() || !rn_conv_direct_shape(d) || d->cin % 16) return 0;
  if (d->stride != 1 && !(is_1x1(d) && dx_s2()) && !dx_par(d)) return 0;
  if (all) return 1;
  /* dx_par: every 3x3 stride-2 layer but those with 7-wide classes (rn-bench-conv, 2 threads, GF/s
   * parity / GEMM + col2im: 16->32@32 b128 190/115, 32->64@16 262/211, 128->128@56 298/238,
   * 256->256@28 345/275; 512->512@14 (7-wide classes), twenty-sixth round, rn-bench-conv
   * --ab-direct, direct/GEMM time, medians of 15 pairs: 0.938-0.968 (four runs), ResNet-18's
   * 256->512@14 0.959-0.978; the earlier 274/303 GF/s against it predate items 50-52) */
  if (d->stride != 1 && !is_1x1(d)) return d->w >= 14;
  if (is_1x1(d)) return d->ow >= 14 || (d->stride == 2 && d->ow == 7);
  return fwd_width_a(d->w, all) && fwd_width_a(d->ow, all);
}
int rn_conv_direct_dx_ok(const rn_conv_desc *d) { return dx_ok(d, g_all_widths); }
static int fwd_ok(const rn_conv_desc *d, int all) {
  if (!rn_conv_direct_enabled() || !rn_conv_direct_shape(d)) return 0;
  if (is_1x1(d)) return all || d->ow >= 14 || d->ow == 7;
  return fwd_width_a(d->ow, all);
}
int rn_conv_direct_ok(const rn_conv_desc *d) { return fwd_ok(d, g_all_widths); }
/* A convolution can read a lazy BN's output (rn_conv_pre): all three passes direct, 16-channel
 * multiples; 1x1 only at stride 1 with its own dW kernel (conv_dw1x1.c applies the BN in its
 * packing, the forward in bands: pre1_lines). */
static int pre_ok(const rn_conv_desc *d, int all) {
  if (d->cin % 16 || !fwd_ok(d, all) || !bwd_ok(d, all) || !dx_ok(d, all)) return 0;
  return !is_1x1(d) || (d->stride == 1 && d->pad == 0 && use_dw1x1());
}
int rn_conv_direct_pre_ok(const rn_conv_desc *d) { return pre_ok(d, g_all_widths); }
/* The same whatever the width rules: the direct kernel can take all passes of d reading a lazy BN
 * (a Winograd layer's fallback when Winograd is switched off at run time, rn_conv_pre_ok). */
int rn_conv_direct_pre_any(const rn_conv_desc *d) { return pre_ok(d, 1); }

static size_t al16(size_t v) { return (v + 15) & ~(size_t)15; }

/* Per thread: the padded image of x (fwd, dW) or of dy (dx); for 1x1 none (no padding: the
 * tensors are read in place), except the dense part of a stride-2 dx (spread2). */
/* Lines per band of a 1x1 forward over a lazy BN's output (rn_conv_pre): the band is copied with
 * the BN applied into the thread's buffer (<= 256 KB: stays in L2) and convolved from there.
 * ResNet-50 b32, conv3 forward of layers 1-3 per step, two alternating runs each: 16K floats per
 * band 214/244 ms, 4K 225/223, 64K 203/199 (and 183/205 against 185/201 for whole images). */
static int pre1_lines(const rn_conv_desc *d) {
  int l = (int)(65536 / ((size_t)d->w * d->cin));
  return l < 1 ? 1 : l > d->h ? d->h : l;
}
static size_t pad_floats(const rn_conv_desc *d) {
  if (is_1x1(d)) /* stride 1: a band of pre1_lines; stride 2: dx_s2's dense part */
    return d->stride == 1 ? al16((size_t)pre1_lines(d) * d->w * d->cin) : al16((size_t)d->oh * d->ow * d->cin);
  size_t a = (size_t)(d->h + 2 * d->pad) * (d->w + 2 * d->pad) * d->cin;
  int pq = d->kh - 1 - d->pad, pr = d->kw - 1 - d->pad;
  size_t b = (size_t)(d->oh + 2 * pq) * (d->ow + 2 * pr) * d->cout;
  return al16((a > b ? a : b) + 16);
}

/* Images per dW group: small images are taken together (>= 256 pixels, at most DW_GROUP_MAX), so
 * that dW (2.4 MB at 256 channels, 9.4 MB at 512) is read and written once per group instead of
 * once per 7x7 or 14x14 image. */
#define DW_GROUP_MAX 8
static int dw_group(const rn_conv_desc *d) {
  int px = d->oh * d->ow, g = px >= 256 ? 1 : (256 + px - 1) / px;
  return g > DW_GROUP_MAX ? DW_GROUP_MAX : g;
}

/* Lines per band of the interleaved 1x1 backward (dy bands of about kb KB), in [1, h]. */
static int band_lines(const rn_conv_desc *d, int kb) {
  int bl = (int)((size_t)kb * 256 / ((size_t)d->w * d->cout));
  return bl < 1 ? 1 : bl > d->h ? d->h : bl;
}

size_t rn_conv_direct_workspace(const rn_conv_desc *d, int n, int threads) {
  (void)n;
  size_t nw = (size_t)d->cout * d->kh * d->kw * d->cin;
  return al16(nw) + (size_t)threads * dw_group(d) * pad_floats(d) + (size_t)(threads > 1 ? threads - 1 : 0) * al16(nw) +
         (is_1x1(d) ? (size_t)threads * al16(rn_conv_dw1x1_pack_floats(d)) : 0);
}

/* Copies img[hi][wi][c] into pad[(hi+2py)][(wi+2px)][c] with zero borders. With pre (a BN(+ReLU)
 * output that was never stored, rn_conv_pre) the copy is [relu](img * sc + sh) per channel, with
 * the instructions of the BN's own affine pass (FMA, then max(0, v)): the same bits. */
static void pad_image_pre(const float *img, int hi, int wi, int c, int py, int px, float *pad, const rn_conv_pre *pre) {
  const int wp = wi + 2 * px;
  const size_t rowp = (size_t)wp * c;
  memset(pad, 0, (size_t)py * rowp * sizeof(float));
  for (int y = 0; y < hi; y++) {
    float *r = pad + (size_t)(y + py) * rowp;
    memset(r, 0, (size_t)px * c * sizeof(float));
    if (!pre) {
      memcpy(r + (size_t)px * c, img + (size_t)y * wi * c, (size_t)wi * c * sizeof(float));
    } else {
      const float *src = img + (size_t)y * wi * c;
      float *dst = r + (size_t)px * c;
      /* pixel by pixel (a sequential read of the source; sc and sh stay in L1) */
      for (size_t q = 0; q < (size_t)wi * c; q += (size_t)c)
        for (int j = 0; j < c; j += 16) {
          __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(src + q + j), _mm512_loadu_ps(pre->sc + j), _mm512_loadu_ps(pre->sh + j));
          if (pre->relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
          _mm512_storeu_ps(dst + q + j, v);
        }
    }
    memset(r + (size_t)(px + wi) * c, 0, (size_t)px * c * sizeof(float));
  }
  memset(pad + (size_t)(hi + py) * rowp, 0, (size_t)py * rowp * sizeof(float));
}
static void pad_image(const float *img, int hi, int wi, int c, int py, int px, float *pad) {
  pad_image_pre(img, hi, wi, c, py, px, pad, NULL);
}

/* BN statistics in the forward epilogue: when t_stats is set (per thread, per image: s1[Co] then
 * s2[Co], doubles), the final value of every output vector is added into the per-channel sum and
 * sum of squares of its image (in double, summed over the tile's pixels in registers first). The
 * BN that consumes the output then skips its own statistics pass over it. */
static __thread double *t_stats;
AI void stat_add(__m512 v, __m512d *s) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  s[0] = _mm512_add_pd(s[0], lo);
  s[1] = _mm512_add_pd(s[1], hi);
  s[2] = _mm512_fmadd_pd(lo, lo, s[2]);
  s[3] = _mm512_fmadd_pd(hi, hi, s[3]);
}
AI void stat_flush(double *st, int Co, int ch0, const __m512d *s) {
  double *p1 = st + ch0, *p2 = st + Co + ch0;
  _mm512_storeu_pd(p1, _mm512_add_pd(_mm512_loadu_pd(p1), s[0]));
  _mm512_storeu_pd(p1 + 8, _mm512_add_pd(_mm512_loadu_pd(p1 + 8), s[1]));
  _mm512_storeu_pd(p2, _mm512_add_pd(_mm512_loadu_pd(p2), s[2]));
  _mm512_storeu_pd(p2 + 8, _mm512_add_pd(_mm512_loadu_pd(p2 + 8), s[3]));
}

/* BN backward sums in the dx epilogue: when t_bsum is set (per thread, per image: s1[C] then s2[C],
 * doubles), the final value v of every dx vector (the gradient of a BN's output, which this
 * convolution reads) is masked by the BN's output (t_bmask, its fused ReLU; NULL: no mask) as
 * g = (mask > 0 ? v : 0), and g and g*x (t_bx: the BN's input) are added into the per-channel sums
 * of the image (g scaled first for a BN+add's branch: t_bscale; with t_bstore g is what is stored).
 * Pointers of one image: the offset of a dx vector from t_obase is its offset in t_bmask and t_bx.
 * The BN backward then skips its channel-sum pass over dy, y and x. */
static __thread double *t_bsum;
static __thread const float *t_bmask, *t_bx, *t_obase;
static __thread const rn_conv_pre *t_bpre; /* the mask is [x * sc + sh > 0] (pre->relu) instead */
static __thread float t_bscale; /* gb = g (1), 0 (0) or scale*g (a BN+add's branch scale) */
static __thread int t_bstore;   /* store g (masked) instead of v */
/* Returns the value to store (v, or g with t_bstore). */
AI __m512 bsum_add(const __m512 vin, const float *o, int ch, __m512d *s) {
  const size_t off = (size_t)(o - t_obase);
  __m512 v = vin;
  const __m512 xv = _mm512_loadu_ps(t_bx + off);
  if (t_bmask)
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(t_bmask + off), _mm512_setzero_ps(), _CMP_GT_OQ), v);
  else if (t_bpre && t_bpre->relu) /* the BN's output y = max(0, x * sc + sh): y > 0 iff x * sc + sh > 0 */
    v = _mm512_maskz_mov_ps(
        _mm512_cmp_ps_mask(_mm512_fmadd_ps(xv, _mm512_loadu_ps(t_bpre->sc + ch), _mm512_loadu_ps(t_bpre->sh + ch)),
                           _mm512_setzero_ps(), _CMP_GT_OQ),
        v);
  const __m512 g = v;
  if (t_bscale == 0.0f) v = _mm512_setzero_ps();
  else if (t_bscale != 1.0f) v = _mm512_mul_ps(_mm512_set1_ps(t_bscale), v);
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m512d xlo = _mm512_cvtps_pd(_mm512_castps512_ps256(xv));
  const __m512d xhi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(xv), 1)));
  s[0] = _mm512_add_pd(s[0], lo);
  s[1] = _mm512_add_pd(s[1], hi);
  s[2] = _mm512_fmadd_pd(lo, xlo, s[2]);
  s[3] = _mm512_fmadd_pd(hi, xhi, s[3]);
  return t_bstore ? g : vin;
}

/* Prefetch of the mask and x vectors the epilogue of a tile will read (issued when the tile starts:
 * they arrive while it computes, instead of stalling its stores). */
AI void bsum_prefetch(const float *yl, int ox0, int cb0, int Co, const int NB, const int NC) {
  for (int j = 0; j < NB; j++)
    for (int c = 0; c < NC; c++) {
      const size_t off = (size_t)(yl + (size_t)(ox0 + j) * Co + (size_t)(cb0 + c) * 16 - t_obase);
      if (t_bmask) _mm_prefetch((const char *)(t_bmask + off), _MM_HINT_T0);
      _mm_prefetch((const char *)(t_bx + off), _MM_HINT_T0);
    }
}

/* NB output pixels x NC channel blocks of 16 at output line oy, pixels ox0.., channel block cb0..
 * xp: padded input [..][wp][C]; wt: [kh][kw][C][Co]. Fixed-size arrays and constant NB, NC (and C
 * where specialised) so that the accumulators stay in registers and the broadcast offsets are
 * immediates. */
AI void tile(const float *xp, int wp, const int C, const int S, int kh, int kw, const float *wt, int Co, int ps, int oy,
             int ox0, int cb0, float *yl, int acc, const int NB, const int NC) {
  __m512 a[28];
  /* Partial sums over one kernel row (one tap when C*kw is large) are added into y: shorter
   * float accumulation chains (accuracy close to BLIS's) for the price of a few loads/stores. */
  const int per_tap = C * kw > 256;
  int first = acc != 1; /* acc: 0 = overwrite y, 1 = add into y, 2 = overwrite with streaming stores */
  if (t_bsum) bsum_prefetch(yl, ox0, cb0, ps, NB, NC);
  /* accumulating into y (dx += ..., from memory): its vectors arrive while the tile computes */
  if (acc == 1 && g_pf_acc)
    for (int j = 0; j < NB; j++)
      for (int c = 0; c < NC; c++) _mm_prefetch((const char *)(yl + (size_t)(ox0 + j) * ps + (size_t)(cb0 + c) * 16), _MM_HINT_T0);
  /* 1x1 on lines >= 28 wide (x read in place, from memory): the first channel-block sweep of a line
   * prefetches the same pixels of the next line into L2 (RN_CONV_PF1=0: off) */
  const float *pf = g_pf1 && kh == 1 && kw == 1 && cb0 == 0 && wp >= 28
                        ? xp + ((size_t)(oy * S + S) * wp + (size_t)ox0 * S) * C
                        : NULL;
  for (int i = 0; i < NB * NC; i++) a[i] = _mm512_setzero_ps();
  for (int ky = 0; ky < kh; ky++) {
    const float *row = xp + ((size_t)(oy * S + ky) * wp + (size_t)ox0 * S) * C;
    for (int kx = 0; kx < kw; kx++) {
      if ((kx == 0 && ky > 0) || (per_tap && kx > 0))
        for (int i = 0; i < NB * NC; i++) a[i] = _mm512_setzero_ps();
      const float *r = row + (size_t)kx * C;
      /* blocked weights wt[cb][tap][ci][16]: one contiguous stream per channel block */
      const size_t bs = (size_t)kh * kw * C * 16;
      const float *wk = wt + (size_t)cb0 * bs + (size_t)(ky * kw + kx) * C * 16;
      for (int ci = 0; ci < C; ci++, r++, wk += 16) {
        if (pf && ci % 16 == 0)
          for (int j = 0; j < NB; j++) _mm_prefetch((const char *)(pf + ci + (size_t)j * S * C), _MM_HINT_T1);
        __m512 w0 = _mm512_loadu_ps(wk), w1 = NC > 1 ? _mm512_loadu_ps(wk + bs) : w0;
        __m512 w2 = NC > 2 ? _mm512_loadu_ps(wk + 2 * bs) : w0, w3 = NC > 3 ? _mm512_loadu_ps(wk + 3 * bs) : w0;
        for (int j = 0; j < NB; j++) {
          __m512 xv = _mm512_set1_ps(r[j * S * C]);
          a[j * NC] = _mm512_fmadd_ps(xv, w0, a[j * NC]);
          if (NC > 1) a[j * NC + 1] = _mm512_fmadd_ps(xv, w1, a[j * NC + 1]);
          if (NC > 2) a[j * NC + 2] = _mm512_fmadd_ps(xv, w2, a[j * NC + 2]);
          if (NC > 3) a[j * NC + 3] = _mm512_fmadd_ps(xv, w3, a[j * NC + 3]);
        }
      }
      if (kx == kw - 1 || per_tap) {
        const int fin = ky == kh - 1 && kx == kw - 1; /* final values: statistics / BN sums */
        double *st = fin ? t_stats : NULL, *bs = fin ? t_bsum : NULL;
        for (int c = 0; c < NC; c++) {
          __m512d sv[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
          for (int j = 0; j < NB; j++) {
            float *o = yl + (size_t)(ox0 + j) * ps + (size_t)(cb0 + c) * 16;
            __m512 v = a[j * NC + c];
            if (!first) v = _mm512_add_ps(v, _mm512_loadu_ps(o));
            if (bs) v = bsum_add(v, o, (cb0 + c) * 16, sv);
            if (acc == 2 && first)
              _mm512_stream_ps(o, v);
            else
              _mm512_storeu_ps(o, v);
            if (st) stat_add(v, sv);
          }
          if (st) stat_flush(st, Co, (cb0 + c) * 16, sv);
          if (bs) stat_flush(bs, Co, (cb0 + c) * 16, sv);
        }
        first = 0;
      }
    }
  }
}

/* 3-wide (KW = 3; or 2-wide, KW = 2, stride 1) kernels, stride S: one broadcast input value serves
 * every tap of its kernel row that
 * reads it (three at stride 1; at stride 2 the even pixels serve two outputs, the odd ones one).
 * Per input channel: 3*NC weight vectors and (NB-1)*S+3 broadcasts for 3*NB*NC FMAs (the generic
 * tile needs one broadcast per FMA row: 17 loads per 16 FMAs at NC = 1, the CIFAR 16-channel
 * layers).
 * Partial sums are flushed per kernel row and per TILE3_CH (32) input channels. */
#ifndef TILE3_CH
#define TILE3_CH 32
#endif
AI void tile3(const float *xp, int wp, const int C, const int S, int kh, const float *wt, int Co, int ps, int oy, int ox0,
              int cb0, float *yl, int acc, const int NB, const int NC, const int KW) {
  __m512 a[16];
  int first = acc != 1;
  const size_t bs = (size_t)kh * KW * C * 16; /* one channel block of blocked weights */
  const size_t ts = (size_t)C * 16;          /* one tap */
  if (t_bsum) bsum_prefetch(yl, ox0, cb0, ps, NB, NC);
  for (int ky = 0; ky < kh; ky++) {
    const float *row = xp + ((size_t)(oy * S + ky) * wp + (size_t)ox0 * S) * C;
    for (int c0 = 0; c0 < C; c0 += TILE3_CH) {
      const int c1 = c0 + TILE3_CH < C ? c0 + TILE3_CH : C;
      for (int i = 0; i < NB * NC; i++) a[i] = _mm512_setzero_ps();
      const float *r = row + c0;
      const float *wk = wt + (size_t)cb0 * bs + (size_t)(ky * KW) * ts + (size_t)c0 * 16;
      for (int ci = c0; ci < c1; ci++, r++, wk += 16) {
        __m512 w[3][4];
#pragma GCC unroll 4
        for (int kx = 0; kx < KW; kx++)
#pragma GCC unroll 4
          for (int c = 0; c < NC; c++) w[kx][c] = _mm512_loadu_ps(wk + kx * ts + c * bs);
#pragma GCC unroll 33
        for (int ix = 0; ix < (NB - 1) * S + KW; ix++) {
          __m512 xv = _mm512_set1_ps(r[(size_t)ix * C]);
#pragma GCC unroll 3
          for (int kx = 0; kx < KW; kx++) {
            const int o = (ix - kx) / S; /* input pixel ix serves output o through tap kx */
            if (ix - kx >= 0 && (ix - kx) % S == 0 && o < NB)
#pragma GCC unroll 4
              for (int c = 0; c < NC; c++) a[o * NC + c] = _mm512_fmadd_ps(xv, w[kx][c], a[o * NC + c]);
          }
        }
      }
      const int fin = ky == kh - 1 && c1 == C; /* final values: statistics / BN sums */
      double *st = fin ? t_stats : NULL, *bs = fin ? t_bsum : NULL;
      for (int c = 0; c < NC; c++) {
        __m512d sv[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
        for (int j = 0; j < NB; j++) {
          float *o = yl + (size_t)(ox0 + j) * ps + (size_t)(cb0 + c) * 16;
          __m512 v = a[j * NC + c];
          if (!first) v = _mm512_add_ps(v, _mm512_loadu_ps(o));
          if (bs) v = bsum_add(v, o, (cb0 + c) * 16, sv);
          _mm512_storeu_ps(o, v);
          if (st) stat_add(v, sv);
        }
        if (st) stat_flush(st, Co, (cb0 + c) * 16, sv);
        if (bs) stat_flush(bs, Co, (cb0 + c) * 16, sv);
      }
      first = 0;
    }
  }
}

/* Tile instances. Every tile shape at every specialised channel count and stride is its own
 * function, called from the line and plane loops (tile_n, tile3_n), instead of being inlined into
 * them: inlined, conv_planes was one 440,000-line function, and its register allocation spilled an
 * accumulator, the weight-block stride or the prefetch pointer to the stack in almost every inner
 * loop (14 x 2: one accumulator loaded, FMA'd and stored per input channel; in a function of its
 * own the same tile needs no stack access in its loop). Constant C, S, NB, NC (KW) as before: the
 * broadcast offsets stay immediates. Runtime C (other channel counts): one instance per shape and
 * stride with C as an argument. RN_CONV_TILE_INLINE defined at compile time: the inlined build
 * (A/B against an outlined one, two binaries). */
#define TILE_A const float *xp, int wp, int kh, int kw, const float *wt, int Co, int ps, int oy, int ox0, int cb0, float *yl, int acc
#define TILE_P xp, wp, kh, kw, wt, Co, ps, oy, ox0, cb0, yl, acc
#define TILE_NO static __attribute__((noinline, unused)) void
#define TILE_SHAPES(X, CC, SS)                                                                                      \
  X(CC, SS, 14, 2) X(CC, SS, 14, 1) X(CC, SS, 7, 4) X(CC, SS, 7, 2) X(CC, SS, 7, 1) X(CC, SS, 16, 1) X(CC, SS, 8, 2) \
      X(CC, SS, 8, 1) X(CC, SS, 4, 2) X(CC, SS, 4, 1) X(CC, SS, 1, 2) X(CC, SS, 1, 1)
/* the channel counts conv_planes specialises */
#define TILE_CS(X, Y)                                                                                             \
  Y(X, 3, 1) Y(X, 16, 1) Y(X, 32, 1) Y(X, 64, 1) Y(X, 128, 1) Y(X, 256, 1) Y(X, 512, 1) Y(X, 3, 2) Y(X, 16, 2) \
      Y(X, 32, 2) Y(X, 64, 2) Y(X, 128, 2) Y(X, 256, 2) Y(X, 512, 2)
#define TILE_DEF(CC, SS, B, N) \
  TILE_NO tile_##CC##_##SS##_##B##_##N(TILE_A) { tile(xp, wp, CC, SS, kh, kw, wt, Co, ps, oy, ox0, cb0, yl, acc, B, N); }
#define TILE_GDEF(CC, SS, B, N) \
  TILE_NO tile_g_##SS##_##B##_##N(int C, TILE_A) { tile(xp, wp, C, SS, kh, kw, wt, Co, ps, oy, ox0, cb0, yl, acc, B, N); }
TILE_CS(TILE_DEF, TILE_SHAPES)
TILE_SHAPES(TILE_GDEF, 0, 1)
TILE_SHAPES(TILE_GDEF, 0, 2)
AI void tile_n(const float *xp, int wp, const int C, const int S, int kh, int kw, const float *wt, int Co, int ps, int oy,
               int ox0, int cb0, float *yl, int acc, const int NB, const int NC) {
#ifndef RN_CONV_TILE_INLINE
#define X(CC, SS, B, N)                                      \
  if (C == CC && S == SS && NB == B && NC == N) {            \
    tile_##CC##_##SS##_##B##_##N(TILE_P);                    \
    return;                                                  \
  }
  TILE_CS(X, TILE_SHAPES)
#undef X
#define X(CC, SS, B, N)                                      \
  if (S == SS && NB == B && NC == N) {                       \
    tile_g_##SS##_##B##_##N(C, TILE_P);                      \
    return;                                                  \
  }
  TILE_SHAPES(X, 0, 1)
  TILE_SHAPES(X, 0, 2)
#undef X
#endif
  tile(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox0, cb0, yl, acc, NB, NC);
}
/* the same for tile3: KW 3 at stride 1 and 2, KW 2 at stride 1 */
#define TILE3_SHAPES(X, CC, SS, K)                                                                             \
  X(CC, SS, K, 7, 2) X(CC, SS, K, 7, 1) X(CC, SS, K, 16, 1) X(CC, SS, K, 8, 2) X(CC, SS, K, 8, 1) X(CC, SS, K, 4, 2) \
      X(CC, SS, K, 4, 1) X(CC, SS, K, 1, 2) X(CC, SS, K, 1, 1)
#define TILE3_CS(X, Y)                                                                                          \
  Y(X, 3, 1, 3) Y(X, 16, 1, 3) Y(X, 32, 1, 3) Y(X, 64, 1, 3) Y(X, 128, 1, 3) Y(X, 256, 1, 3) Y(X, 512, 1, 3)    \
      Y(X, 3, 2, 3) Y(X, 16, 2, 3) Y(X, 32, 2, 3) Y(X, 64, 2, 3) Y(X, 3, 1, 2) Y(X, 16, 1, 2) Y(X, 32, 1, 2)    \
          Y(X, 64, 1, 2) Y(X, 128, 1, 2) Y(X, 256, 1, 2) Y(X, 512, 1, 2)
#define TILE3_A const float *xp, int wp, int kh, const float *wt, int Co, int ps, int oy, int ox0, int cb0, float *yl, int acc
#define TILE3_P xp, wp, kh, wt, Co, ps, oy, ox0, cb0, yl, acc
#define TILE3_DEF(CC, SS, K, B, N)                                   \
  TILE_NO tile3_##CC##_##SS##_##K##_##B##_##N(TILE3_A) {             \
    tile3(xp, wp, CC, SS, kh, wt, Co, ps, oy, ox0, cb0, yl, acc, B, N, K); \
  }
#define TILE3_GDEF(CC, SS, K, B, N)                                       \
  TILE_NO tile3_g_##SS##_##K##_##B##_##N(int C, TILE3_A) {                \
    tile3(xp, wp, C, SS, kh, wt, Co, ps, oy, ox0, cb0, yl, acc, B, N, K); \
  }
TILE3_CS(TILE3_DEF, TILE3_SHAPES)
TILE3_SHAPES(TILE3_GDEF, 0, 1, 3)
TILE3_SHAPES(TILE3_GDEF, 0, 2, 3)
TILE3_SHAPES(TILE3_GDEF, 0, 1, 2)
AI void tile3_n(const float *xp, int wp, const int C, const int S, int kh, const float *wt, int Co, int ps, int oy, int ox0,
                int cb0, float *yl, int acc, const int NB, const int NC, const int KW) {
#ifndef RN_CONV_TILE_INLINE
#define X(CC, SS, K, B, N)                                          \
  if (C == CC && S == SS && KW == K && NB == B && NC == N) {        \
    tile3_##CC##_##SS##_##K##_##B##_##N(TILE3_P);                   \
    return;                                                         \
  }
  TILE3_CS(X, TILE3_SHAPES)
#undef X
#define X(CC, SS, K, B, N)                                          \
  if (S == SS && KW == K && NB == B && NC == N) {                   \
    tile3_g_##SS##_##K##_##B##_##N(C, TILE3_P);                     \
    return;                                                         \
  }
  TILE3_SHAPES(X, 0, 1, 3)
  TILE3_SHAPES(X, 0, 2, 3)
  TILE3_SHAPES(X, 0, 1, 2)
#undef X
#endif
  tile3(xp, wp, C, S, kh, wt, Co, ps, oy, ox0, cb0, yl, acc, NB, NC, KW);
}

/* One output line of a 3-wide stride-1 kernel: 7 x 2 tiles on 7k-wide lines (ResNet-50), 16 x 1
 * for single channel blocks (CIFAR 16 channels), 8 x 2 otherwise; tails of 4 and 1 pixels. */
AI void conv_line3_c(const float *xp, int wp, const int C, const int S, int kh, const float *wt, int Co, int ps, int oy,
                     int ow, float *yl, int acc, int cb_begin, int ncb, const int KW) {
  int cb = cb_begin;
  if (ow % 7 == 0) {
    for (; cb + 2 <= ncb; cb += 2)
      for (int ox = 0; ox < ow; ox += 7) tile3_n(xp, wp, C, S, kh, wt, Co, ps, oy, ox, cb, yl, acc, 7, 2, KW);
    for (; cb < ncb; cb++)
      for (int ox = 0; ox < ow; ox += 7) tile3_n(xp, wp, C, S, kh, wt, Co, ps, oy, ox, cb, yl, acc, 7, 1, KW);
    return;
  }
  for (; cb + 2 <= ncb; cb += 2) {
    int ox = 0;
    for (; ox + 8 <= ow; ox += 8) tile3_n(xp, wp, C, S, kh, wt, Co, ps, oy, ox, cb, yl, acc, 8, 2, KW);
    for (; ox + 4 <= ow; ox += 4) tile3_n(xp, wp, C, S, kh, wt, Co, ps, oy, ox, cb, yl, acc, 4, 2, KW);
    for (; ox < ow; ox++) tile3_n(xp, wp, C, S, kh, wt, Co, ps, oy, ox, cb, yl, acc, 1, 2, KW);
  }
  for (; cb < ncb; cb++) {
    int ox = 0;
    for (; ox + 16 <= ow; ox += 16) tile3_n(xp, wp, C, S, kh, wt, Co, ps, oy, ox, cb, yl, acc, 16, 1, KW);
    for (; ox + 8 <= ow; ox += 8) tile3_n(xp, wp, C, S, kh, wt, Co, ps, oy, ox, cb, yl, acc, 8, 1, KW);
    for (; ox + 4 <= ow; ox += 4) tile3_n(xp, wp, C, S, kh, wt, Co, ps, oy, ox, cb, yl, acc, 4, 1, KW);
    for (; ox < ow; ox++) tile3_n(xp, wp, C, S, kh, wt, Co, ps, oy, ox, cb, yl, acc, 1, 1, KW);
  }
}

static int g_tile3 = -1;   /* RN_CONV_TILE3=0 turns the 3-wide kernel off (A/B) */
static int g_tile3_s2 = 1; /* stride 2 too, up to 64 channels (RN_CONV_TILE3_S2=0: off, A/B) */
static int g_tile2 = 1;    /* the same for 2-wide kernels (RN_CONV_TILE2=0: off, A/B) */
/* 7 x 4 tiles instead of 14 x 2 on the 14k-wide lines of a 1x1 stride-1 pass whose input has a
 * multiple of 1024 channels (ResNet-50: layer3's conv1 and layer4.0.conv1 forward, the dx of
 * layer3's conv3, dy of 1024 channels): its pixels are 4 KB apart, so the 14 input lines a 14-pixel
 * tile broadcasts from fall into one set of the 12-way L1 cache and evict each other on every
 * 16-channel step; 7 of them fit. The same FMA chains per output (bitwise the same output; the
 * statistics and BN sums are added per 7 pixels instead of 14: the same doubles up to their
 * rounding). Paired in one process (scratch program, b32, 2 threads, 15-25 pairs per run):
 * 1024->256@14 forward 1.03-1.11x, the dx of 256->1024@14 1.05-1.16x, 1024->512@14 forward
 * 1.05-1.07x; at 1008 or 1040 input channels the 14 x 2 tiles ran 1.09-1.20x faster than at 1024.
 * At stride 2 (512->1024@28, rows 4 KB apart too) no gain (0.98-0.99): left on 14 x 2. RN_CONV_T74=0
 * or rn_conv_set_tile74(0): 14 x 2 everywhere (A/B, rn-bench --ab tile74). */
static int sweep1(int C, int S, int kh, int kw, int oh, int ow);
static int g_t74 = -1;
void rn_conv_set_tile74(int on) { g_t74 = on != 0; }
static int t74_line(int C, int S, int kh, int kw, int ow) {
  if (g_t74 < 0) {
    const char *v = getenv("RN_CONV_T74");
    g_t74 = !(v && v[0] == '0');
  }
  return g_t74 && ow % 14 == 0 && kh == 1 && kw == 1 && S == 1 && C % 1024 == 0;
}
int rn_conv_tile74_passes(const rn_conv_desc *d) {
  if (!is_1x1(d) || d->stride != 1 || !rn_conv_direct_shape(d)) return 0;
  /* (not where the plane sweep takes the pass: sweep1) */
  const int f = d->cout >= 64 && t74_line(d->cin, 1, 1, 1, d->ow) && !sweep1(d->cin, 1, 1, 1, d->oh, d->ow) &&
                rn_conv_direct_ok(d);
  const int x = d->cin >= 64 && t74_line(d->cout, 1, 1, 1, d->w) && !sweep1(d->cout, 1, 1, 1, d->h, d->w) &&
                rn_conv_direct_dx_ok(d);
  return f | x << 1;
}
/* A 1x1 stride-1 pass over >= 512 input channels whose input plane fits in L2 (<= 2 MB: ResNet-50's
 * 512@28, 1024@14, 2048@7; the forward of the conv1s that shrink the channels, the dx of the
 * conv3s) sweeps one group of four channel blocks at a time over all pixels of the plane in 7 x 4
 * tiles (its pixels are contiguous in x and in y, so a tile may span lines; every ResNet-50 width
 * is a multiple of 7), instead of line by line over all blocks: per group the tiles stream that
 * group's weights (C x 64 floats: 128-512 KB) from L2 instead of all of them (0.5-4 MB) per line.
 * The same FMA chain per output (bitwise the same output; statistics and BN sums added per 7
 * pixels). RN_CONV_SWEEP1=0 or rn_conv_set_sweep1(0): off (A/B, rn-bench --ab sweep1). */
static int g_sweep1 = -1;
void rn_conv_set_sweep1(int on) { g_sweep1 = on != 0; }
static int sweep1(int C, int S, int kh, int kw, int oh, int ow) {
  if (g_sweep1 < 0) {
    const char *v = getenv("RN_CONV_SWEEP1");
    g_sweep1 = !(v && v[0] == '0');
  }
  return g_sweep1 && kh == 1 && kw == 1 && S == 1 && C >= 512 && ow % 7 == 0 &&
         (size_t)oh * ow * C * sizeof(float) <= ((size_t)2 << 20);
}
int rn_conv_sweep1_passes(const rn_conv_desc *d) {
  if (!is_1x1(d) || d->stride != 1 || !rn_conv_direct_shape(d)) return 0;
  const int f = sweep1(d->cin, 1, 1, 1, d->oh, d->ow) && rn_conv_direct_ok(d);
  const int x = sweep1(d->cout, 1, 1, 1, d->h, d->w) && rn_conv_direct_dx_ok(d);
  return f | x << 1;
}
static int use_tile3(void) {
  if (g_tile3 < 0) {
    const char *v = getenv("RN_CONV_TILE3");
    g_tile3 = !(v && v[0] == '0');
    v = getenv("RN_CONV_TILE3_S2");
    g_tile3_s2 = !(v && v[0] == '0');
    v = getenv("RN_CONV_TILE2");
    g_tile2 = !(v && v[0] == '0');
  }
  return g_tile3;
}

/* One output line: all pixels, channel blocks [cb_begin, ncb). */
AI void conv_line_c(const float *xp, int wp, const int C, const int S, int kh, int kw, const float *wt, int Co, int ps, int oy, int ow,
                    float *yl, int acc, int cb_begin, int ncb) {
  /* stride 2 up to 64 input channels (CIFAR; rn-bench-conv, 2 threads, two alternating pairs,
   * generic -> tile3: 16->32@32 226/232 -> 248/279 GF/s, 32->64@16 270/273 -> 324/326); ResNet-50's
   * 128-512 channels measured no better (128@56 300/307 -> 285/307, 256@28 318/314 -> 285/319). */
  if (use_tile3() && kw == 3 && (S == 1 || (g_tile3_s2 && C <= 64)) && acc != 2) {
    conv_line3_c(xp, wp, C, S, kh, wt, Co, ps, oy, ow, yl, acc, cb_begin, ncb, 3);
    return;
  }
  /* 2-wide kernels at stride 1 (the 1x2 and 2x2 parity classes of a stride-2 dx, dx_parity): each
   * broadcast serves both taps of its kernel row; not on lines the generic tile takes in 14 x 2
   * tiles (rn-bench-conv dx, 2 threads, three alternating pairs, generic -> this: CIFAR 16->32@32
   * 232-251 -> 252-262 GF/s, 32->64@16 301-325 -> 327-332; ResNet-50 128->128@56 346 -> 330-331,
   * 256->256@28 366-375 -> 339-343). RN_CONV_TILE2=0: the generic tile (A/B). */
  if (use_tile3() && g_tile2 && kw == 2 && S == 1 && acc != 2 && ow % 14 != 0) {
    conv_line3_c(xp, wp, C, S, kh, wt, Co, ps, oy, ow, yl, acc, cb_begin, ncb, 2);
    return;
  }
  int cb = cb_begin;
  if (t74_line(C, S, kh, kw, ow)) { /* 7 x 4 tiles (above); a tail of 1-3 blocks as below */
    for (; cb + 4 <= ncb; cb += 4)
      for (int ox = 0; ox < ow; ox += 7) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 7, 4);
  }
  if (ow % 14 == 0) { /* 14, 28, 56 (ResNet-50): 14 pixels x 2 channel blocks, no tails */
    for (; cb + 2 <= ncb; cb += 2)
      for (int ox = 0; ox < ow; ox += 14) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 14, 2);
    for (; cb < ncb; cb++)
      for (int ox = 0; ox < ow; ox += 14) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 14, 1);
    return;
  }
  if (ow == 7) { /* ResNet-50 layer4: 7 pixels x 4 channel blocks */
    for (; cb + 4 <= ncb; cb += 4) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, 0, cb, yl, acc, 7, 4);
    for (; cb + 2 <= ncb; cb += 2) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, 0, cb, yl, acc, 7, 2);
    for (; cb < ncb; cb++) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, 0, cb, yl, acc, 7, 1);
    return;
  }
  /* Two channel blocks at a time (8 pixels x 2 blocks = 16 accumulators) when the line is short. */
  if (ow < 16)
    for (; cb + 2 <= ncb; cb += 2) {
      int ox = 0;
      for (; ox + 8 <= ow; ox += 8) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 8, 2);
      for (; ox + 4 <= ow; ox += 4) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 4, 2);
      for (; ox < ow; ox++) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 1, 2);
    }
  for (; cb < ncb; cb++) {
    int ox = 0;
    for (; ox + 16 <= ow; ox += 16) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 16, 1);
    for (; ox + 8 <= ow; ox += 8) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 8, 1);
    for (; ox + 4 <= ow; ox += 4) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 4, 1);
    for (; ox < ow; ox++) tile_n(xp, wp, C, S, kh, kw, wt, Co, ps, oy, ox, cb, yl, acc, 1, 1);
  }
}

/* Per-image epilogue state for a sweep over several images (conv_planes): before image j's tiles
 * run, the forward's statistics pointer or the dx epilogue's BN-sum pointers are set to image j's
 * (the caller has zeroed the sums of every image of the sweep). */
typedef struct {
  double *stats; /* forward: per image 2*co doubles */
  int co;
  const rn_bn_sums *bn; /* dx: rn_bn_sums of the whole batch */
  float *dx;
  size_t xin; /* floats per dx image */
  int c;
} img_epi;
static void epi_set(const img_epi *e, int j) {
  if (e->stats) t_stats = e->stats + (size_t)j * 2 * e->co;
  if (e->bn) {
    t_bsum = e->bn->sums + (size_t)j * 2 * e->c;
    t_bmask = e->bn->mask ? e->bn->mask + (size_t)j * e->xin : NULL;
    t_bpre = e->bn->pre;
    t_bx = e->bn->x + (size_t)j * e->xin;
    t_obase = e->dx + (size_t)j * e->xin;
    t_bscale = e->bn->scale;
    t_bstore = e->bn->store_masked;
  }
}

/* All output lines of g images (padded inputs xs floats apart, outputs ys floats apart; e: the
 * per-image epilogue state of images j0.., NULL = as set by the caller, g = 1 only). When the
 * weights are large (9*C*Co*4 bytes: 9.4 MB at 512 channels), two (7-wide lines, one image: four)
 * channel blocks at a time over all lines of all g images, so that the weights of those blocks (590
 * KB at C = 512) stay in L2 instead of all weights streaming from memory for every line (and, with
 * g > 1, for every image: conv_images). When they are small (<= 1 MB: every 1x1, 3x3 up to 128
 * channels), line by line over all channel blocks, so that the input lines a line reads stay in
 * cache while every block uses them (a 56x56x256 image is 3.2 MB: sweeping it once per block pair
 * was memory-bound). 1x1 stride-1 planes over >= 512 input channels that fit in L2 take the plane
 * sweep instead (sweep1: four blocks at a time over all pixels). */
AI void conv_plane_c(const float *xp, size_t xs, int g, int wp, const int C, const int S, int kh, int kw,
                     const float *wt, int Co, int oh, int ow, float *y, size_t ys, int acc, const img_epi *e, int j0,
                     int ps, size_t ls) {
  const int ncb = Co / 16, grp = (ow == 7 && g == 1) || t74_line(C, S, kh, kw, ow) ? 4 : 2;
  if (sweep1(C, S, kh, kw, oh, ow) && wp == ow && ls == (size_t)ow * ps) { /* above: 7-pixel tiles over the plane */
    const int np = oh * ow;
    for (int cb = 0; cb < ncb;) {
      const int nc = ncb - cb >= 4 ? 4 : ncb - cb >= 2 ? 2 : 1;
      for (int j = 0; j < g; j++) {
        const float *xj = xp + j * xs;
        float *yj = y + j * ys;
        if (e) epi_set(e, j0 + j);
        for (int p = 0; p < np; p += 7) {
          if (nc == 4) tile_n(xj, wp, C, 1, 1, 1, wt, Co, ps, 0, p, cb, yj, acc, 7, 4);
          else if (nc == 2) tile_n(xj, wp, C, 1, 1, 1, wt, Co, ps, 0, p, cb, yj, acc, 7, 2);
          else tile_n(xj, wp, C, 1, 1, 1, wt, Co, ps, 0, p, cb, yj, acc, 7, 1);
        }
      }
      cb += nc;
    }
    return;
  }
  if ((size_t)kh * kw * C * Co * sizeof(float) <= ((size_t)1 << 20)) {
    for (int j = 0; j < g; j++) {
      if (e) epi_set(e, j0 + j);
      for (int oy = 0; oy < oh; oy++)
        conv_line_c(xp + j * xs, wp, C, S, kh, kw, wt, Co, ps, oy, ow, y + j * ys + (size_t)oy * ls, acc, 0, ncb);
    }
    return;
  }
  for (int cb = 0; cb < ncb; cb += grp)
    for (int j = 0; j < g; j++) {
      if (e) epi_set(e, j0 + j);
      for (int oy = 0; oy < oh; oy++)
        conv_line_c(xp + j * xs, wp, C, S, kh, kw, wt, Co, ps, oy, ow, y + j * ys + (size_t)oy * ls, acc, cb,
                    cb + grp < ncb ? cb + grp : ncb);
    }
}

/* Stride S (1 or 2) of the input lines and pixels; the dx convolution always has S = 1. */
static void conv_planes(const float *xp, size_t xs, int g, int wp, int C, int S, int kh, int kw, const float *wt,
                        int Co, int oh, int ow, float *y, size_t ys, int acc, const img_epi *e, int j0, int ps,
                        size_t ls) {
#define RN_PL(CC, SS) conv_plane_c(xp, xs, g, wp, CC, SS, kh, kw, wt, Co, oh, ow, y, ys, acc, e, j0, ps, ls)
#define RN_PLANE_S(SS)            \
  switch (C) {                    \
    case 3: RN_PL(3, SS); break;     \
    case 16: RN_PL(16, SS); break;   \
    case 32: RN_PL(32, SS); break;   \
    case 64: RN_PL(64, SS); break;   \
    case 128: RN_PL(128, SS); break; \
    case 256: RN_PL(256, SS); break; \
    case 512: RN_PL(512, SS); break; \
    default: RN_PL(C, SS); break;    \
  }
  if (S == 2) {
    RN_PLANE_S(2)
  } else {
    RN_PLANE_S(1)
  }
#undef RN_PLANE_S
#undef RN_PL
}
static void conv_plane(const float *xp, int wp, int C, int S, int kh, int kw, const float *wt, int Co, int oh,
                       int ow, float *y, int acc) {
  conv_planes(xp, 0, 1, wp, C, S, kh, kw, wt, Co, oh, ow, y, 0, acc, NULL, 0, Co, (size_t)ow * Co);
}

/* Images per sweep of conv_planes: with large weights (> 1 MB) and small images (dw_group > 1:
 * 14x14 and 7x7), the G images of a dW group are padded together and swept per channel-block pair,
 * so each pair's weights are read from memory once per G images instead of once per image (per
 * line at 7 wide). RN_CONV_IMGS=0: one image at a time (A/B). */
static int g_imgs = -1;
static int conv_images(const rn_conv_desc *d, int kh, int kw, int C, int Co) {
  if (g_imgs < 0) {
    const char *v = getenv("RN_CONV_IMGS");
    g_imgs = !(v && v[0] == '0');
  }
  if (!g_imgs || is_1x1(d) || (size_t)kh * kw * C * Co * sizeof(float) <= ((size_t)1 << 20)) return 1;
  return dw_group(d);
}

/* dx[hy][hx] (h x w x C) = src[hy/2][hx/2] at even hy and hx, else 0 (acc: added / unchanged). */
static void spread2(const float *src, int oh, int ow, int C, int h, int w, float *dst, int acc) {
  for (int hy = 0; hy < h; hy++) {
    float *o = dst + (size_t)hy * w * C;
    if (hy % 2 || hy / 2 >= oh) {
      if (!acc) memset(o, 0, (size_t)w * C * sizeof(float));
      continue;
    }
    const float *sl = src + (size_t)(hy / 2) * ow * C;
    for (int hx = 0; hx < w; hx++, o += C) {
      if (hx % 2 || hx / 2 >= ow) {
        if (!acc) memset(o, 0, (size_t)C * sizeof(float));
        continue;
      }
      const float *sp = sl + (size_t)(hx / 2) * C;
      for (int c = 0; c < C; c += 16) {
        __m512 v = _mm512_loadu_ps(sp + c);
        if (acc) v = _mm512_add_ps(v, _mm512_loadu_ps(o + c));
        _mm512_storeu_ps(o + c, v);
      }
    }
  }
}

static int threads_for(int n, int threads) {
  int t = threads;
  if (t > n) t = n;
  return t < 1 ? 1 : t;
}

/* dst[k*16 + j] = src[j*ss + k] for j, k < 16: a 16 x 16 transpose in registers. */
static inline void tr16(const float *src, size_t ss, float *dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (size_t)i * ss);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), e = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  /* r[4q + m]: rows 4q..4q+3 of columns m, m+4, m+8, m+12 (one per 128-bit lane) */
  for (int i = 0; i < 4; i++) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; i++) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
  for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * 16, r[i]);
}

/* The forward's blocked weights of output-channel block cb: wt[cb][k][j] = w[cb*16 + j][k], k < K,
 * in 16 x 16 transposes (a scalar tail for K % 16). The scalar loop (one strided store per
 * weight) took ~1 ns per weight on 2 threads: an estimated ~8 ms per ResNet-50 step (~8M weights
 * in the direct forwards; 2.2 ms per call of the 512@14 stride-2 3x3); the transposes 3.2-3.5x
 * less (scratch program, cold weights, 2 threads, best of 20: 256x1024 0.254 -> 0.079 ms,
 * 512x4608 2.172 -> 0.634). The same values. */
static void block_weights(const float *w, int K, int cb, float *wt) {
  const float *src = w + (size_t)cb * 16 * K;
  float *dst = wt + (size_t)cb * K * 16;
  int k = 0;
  for (; k + 16 <= K; k += 16) tr16(src + k, (size_t)K, dst + (size_t)k * 16);
  for (; k < K; k++)
    for (int j = 0; j < 16; j++) dst[(size_t)k * 16 + j] = src[(size_t)j * K + k];
}

void rn_conv_direct_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                            int threads, double *stats) {
  rn_conv_direct_forward_pre(d, n, x, w, y, ws, threads, stats, NULL);
}

/* The forward's images: static shares, or (RN_DIRECT_DYN, default on) claimed one unit at a time
 * from a counter shared by the region, so that a thread the host slows takes fewer. */
static int g_direct_dyn = -1;
void rn_conv_set_direct_dynamic(int on) { g_direct_dyn = on != 0; }
static int direct_dyn(void) {
  if (g_direct_dyn < 0) {
    const char *e = getenv("RN_DIRECT_DYN");
    g_direct_dyn = !(e && e[0] == '0');
  }
  return g_direct_dyn;
}
static int dclaim(int *ctr, int end) {
  int v = __atomic_load_n(ctr, __ATOMIC_RELAXED);
  while (v < end)
    if (__atomic_compare_exchange_n(ctr, &v, v + 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return v;
  return -1;
}

void rn_conv_direct_forward_pre(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                                int threads, double *stats, const rn_conv_pre *pre) {
  const int C = d->cin, Co = d->cout, kh = d->kh, kw = d->kw, K = kh * kw * C;
  const size_t nw = (size_t)Co * K, pf = pad_floats(d);
  float *wt = ws, *pads = ws + al16(nw);
  const int T = threads_for(n, threads);
  const int wp = d->w + 2 * d->pad, one = is_1x1(d); /* 1x1: x is read in place */
  /* 1x1 (one flush per output vector) with a large output (> 16 MB, far beyond L2): streaming
   * stores write y without reading it first (the store bandwidth is ~9 GB/s per core with
   * read-for-ownership, ~23 GB/s streaming). y is 64-byte aligned in the model's arena. */
  const int streaming = one && g_stream > 0 && (size_t)n * d->oh * d->ow * Co * sizeof(float) > ((size_t)g_stream << 20) &&
                 ((uintptr_t)y & 63) == 0;
  const int G = conv_images(d, kh, kw, C, Co);
  int ctr = 0; /* dynamic: the next unit of G images (or image) to claim */
  const int dyn = direct_dyn();
#pragma omp parallel num_threads(T)
  {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    /* wt[co/16][tap][ci][co%16] = w[co][tap][ci] (k = tap*C + ci), split by output-channel blocks:
     * done by one thread it left the other idle for ~1% of a ResNet-50 step */
    for (int cb = Co / 16 * t / nt; cb < Co / 16 * (t + 1) / nt; cb++) block_weights(w, K, cb, wt);
#pragma omp barrier
    float *xp = pads + (size_t)t * dw_group(d) * pf;
    /* static: this thread's images [n t / nt, n (t + 1) / nt); dynamic: units of G images claimed
     * one at a time (every image's output and statistics are its own: the same bits) */
    const int nu = (n + G - 1) / G;
    int i1 = n * (t + 1) / nt, u = dyn ? dclaim(&ctr, nu) : 0;
    for (int i = dyn ? (u < 0 ? n : u * G) : n * t / nt; G > 1 && i < (dyn ? n : i1);
         i = dyn ? ((u = dclaim(&ctr, nu)) < 0 ? n : u * G) : i + G) { /* several images per sweep */
      if (dyn) i1 = i + G < n ? i + G : n;
      const int g = i + G <= i1 ? G : i1 - i;
      const size_t xin = (size_t)d->h * d->w * C, yin = (size_t)d->oh * d->ow * Co;
      for (int j = 0; j < g; j++) {
        pad_image_pre(x + (size_t)(i + j) * xin, d->h, d->w, C, d->pad, d->pad, xp + (size_t)j * pf, pre);
        if (stats) memset(stats + (size_t)(i + j) * 2 * Co, 0, 2 * (size_t)Co * sizeof(double));
      }
      const img_epi e = {stats, Co, NULL, NULL, 0, 0};
      conv_planes(xp, pf, g, wp, C, d->stride, kh, kw, wt, Co, d->oh, d->ow, y + (size_t)i * yin, yin, 0, &e, i, Co,
                  (size_t)d->ow * Co);
      t_stats = NULL;
    }
    for (int i = dyn ? (u < 0 ? n : u) : n * t / nt; G == 1 && i < (dyn ? n : i1);
         i = dyn ? ((u = dclaim(&ctr, n)) < 0 ? n : u) : i + 1) {
      const float *xi = x + (size_t)i * d->h * d->w * C;
      if (!one) pad_image_pre(xi, d->h, d->w, C, d->pad, d->pad, xp, pre);
      float *yi = y + (size_t)i * d->oh * d->ow * Co;
      if (stats) {
        t_stats = stats + (size_t)i * 2 * Co;
        memset(t_stats, 0, 2 * (size_t)Co * sizeof(double));
      }
      if (one && pre) { /* 1x1 over a lazy BN's output: bands of lines copied with the BN applied */
        const int L = pre1_lines(d);
        for (int y0 = 0; y0 < d->h; y0 += L) {
          const int l = d->h - y0 < L ? d->h - y0 : L;
          pad_image_pre(xi + (size_t)y0 * d->w * C, l, d->w, C, 0, 0, xp, pre);
          conv_plane(xp, wp, C, 1, 1, 1, wt, Co, l, d->ow, yi + (size_t)y0 * d->ow * Co, streaming ? 2 : 0);
        }
      } else {
        conv_plane(one ? xi : xp, wp, C, d->stride, kh, kw, wt, Co, d->oh, d->ow, yi, streaming ? 2 : 0);
      }
      t_stats = NULL;
    }
    if (streaming) _mm_sfence(); /* streaming stores are visible to the other threads after the region */
  }
}

/* dW[co0..co0+NCO)[tap][cb*16 .. (cb+NCI)*16) += sum over output lines [oy0, oy1) of images
 * 0..nimg-1 of a group (padded x of image g at xp + g*xstride, its dy at dy + g*dystride):
 * NCI*NCO <= 16 accumulators; per pixel NCI input vectors and NCO broadcast dy values. Used as 1x16:
 * 4x4 and 2x8 (fewer loads per FMA) measured no faster (the sweep is limited by the x/dy traffic of
 * the group, not the load ports). */
AI void dw_block_t(const float *xp, size_t xstride, int wp, int C, int S, const float *dy, size_t dystride,
                   int nimg, int Co, int oy0, int oy1, int ow, int ky, int kx, int cb, int co0, float *dwt, int K,
                   int kw, const int NCI, const int NCO) {
  __m512 a[16];
  const size_t off = (size_t)(ky * kw + kx) * C + (size_t)cb * 16, xs = (size_t)S * C;
  for (int j = 0; j < NCI * NCO; j++) a[j] = _mm512_setzero_ps();
  for (int g = 0; g < nimg; g++)
    for (int oy = oy0; oy < oy1; oy++) {
      const float *xr = xp + (size_t)g * xstride + ((size_t)(oy * S + ky) * wp + kx) * C + (size_t)cb * 16;
      const float *dr = dy + (size_t)g * dystride + (size_t)oy * ow * Co + co0;
      for (int ox = 0; ox < ow; ox++) {
        __m512 xv[4];
        for (int c = 0; c < NCI; c++) xv[c] = _mm512_loadu_ps(xr + (size_t)ox * xs + c * 16);
        const float *gr = dr + (size_t)ox * Co;
        for (int j = 0; j < NCO; j++) {
          __m512 gv = _mm512_set1_ps(gr[j]);
          for (int c = 0; c < NCI; c++) a[j * NCI + c] = _mm512_fmadd_ps(gv, xv[c], a[j * NCI + c]);
        }
      }
    }
  for (int j = 0; j < NCO; j++)
    for (int c = 0; c < NCI; c++) {
      float *o = dwt + (size_t)(co0 + j) * K + off + c * 16;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[j * NCI + c]));
    }
}

/* dW for a 3-wide kernel row: dW[co0..co0+8)[ky][0..3)[cb*16..+16) over the group's pixels.
 * Each broadcast dy value serves the row's three taps: 24 accumulators, per pixel 3 input vectors
 * and 8 broadcasts for 24 FMAs (the generic block: 17 loads per 16 FMAs). */
static void dw_block3(const float *xp, size_t xstride, int wp, int C, int S, const float *dy, size_t dystride,
                      int nimg, int Co, int oy0, int oy1, int ow, int ky, int cb, int co0, float *dwt, int K) {
  __m512 a[8][3];
  const size_t off = (size_t)(ky * 3) * C + (size_t)cb * 16, xs = (size_t)S * C;
#pragma GCC unroll 8
  for (int j = 0; j < 8; j++)
#pragma GCC unroll 3
    for (int kx = 0; kx < 3; kx++) a[j][kx] = _mm512_setzero_ps();
  for (int g = 0; g < nimg; g++)
    for (int oy = oy0; oy < oy1; oy++) {
      const float *xr = xp + (size_t)g * xstride + (size_t)(oy * S + ky) * wp * C + (size_t)cb * 16;
      const float *dr = dy + (size_t)g * dystride + (size_t)oy * ow * Co + co0;
      for (int ox = 0; ox < ow; ox++) {
        const float *xo = xr + (size_t)ox * xs;
        __m512 x0 = _mm512_loadu_ps(xo), x1 = _mm512_loadu_ps(xo + C), x2 = _mm512_loadu_ps(xo + 2 * C);
        const float *gr = dr + (size_t)ox * Co;
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
          __m512 gv = _mm512_set1_ps(gr[j]);
          a[j][0] = _mm512_fmadd_ps(gv, x0, a[j][0]);
          a[j][1] = _mm512_fmadd_ps(gv, x1, a[j][1]);
          a[j][2] = _mm512_fmadd_ps(gv, x2, a[j][2]);
        }
      }
    }
#pragma GCC unroll 8
  for (int j = 0; j < 8; j++)
#pragma GCC unroll 3
    for (int kx = 0; kx < 3; kx++) {
      float *o = dwt + (size_t)(co0 + j) * K + off + (size_t)kx * C;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[j][kx]));
    }
}

/* dW += the contribution of a group of nimg images. Large images are swept in groups of lines
 * (>= 256 pixels); per group every (tap, input block, output block) is accumulated and added into
 * dW: the group's x and dy (a few hundred KB) stay in L2 while all of dW's blocks are visited, and
 * the float sums are short. */
/* dW of the CIFAR stem (C <= 3 input channels, 3x3, stride 1), for one padded image: per block of
 * 16 output channels, the 9*C taps' dW vectors (16 output channels each) are 9*C <= 27 zmm
 * accumulators; per pixel one dy vector and 9*C broadcast input values, 9*C FMAs. Flushed per
 * output line into tmp[9*C][16], which is added (transposed) into dwt[co][tap][ci] at the end.
 * The GEMM path ran this at ~45 GF/s (M = 16, N = 27: a narrow GEMM over a long K). */
AI void dw_stem_c(const float *xp, int wp, const int C, const float *dy, int Co, int oh, int ow, float *dwt) {
  const int K = 9 * C;
  for (int cb = 0; cb < Co / 16; cb++) {
    __m512 tmp[27];
    for (int t = 0; t < K; t++) tmp[t] = _mm512_setzero_ps();
    for (int oy = 0; oy < oh; oy++) {
      __m512 a[27];
      for (int t = 0; t < K; t++) a[t] = _mm512_setzero_ps();
      const float *dr = dy + (size_t)oy * ow * Co + (size_t)cb * 16;
      for (int ox = 0; ox < ow; ox++) {
        const __m512 g = _mm512_loadu_ps(dr + (size_t)ox * Co);
#pragma GCC unroll 3
        for (int ky = 0; ky < 3; ky++) {
          const float *r = xp + ((size_t)(oy + ky) * wp + ox) * C;
#pragma GCC unroll 9
          for (int q = 0; q < 3 * C; q++) a[ky * 3 * C + q] = _mm512_fmadd_ps(_mm512_set1_ps(r[q]), g, a[ky * 3 * C + q]);
        }
      }
      for (int t = 0; t < K; t++) tmp[t] = _mm512_add_ps(tmp[t], a[t]);
    }
    float out[27][16];
    for (int t = 0; t < K; t++) _mm512_storeu_ps(out[t], tmp[t]);
    for (int l = 0; l < 16; l++)
      for (int t = 0; t < K; t++) dwt[(size_t)(cb * 16 + l) * K + t] += out[t][l];
  }
}

static void dw_stem(const float *xp, int wp, int C, const float *dy, int Co, int oh, int ow, float *dwt) {
  switch (C) {
    case 1: dw_stem_c(xp, wp, 1, dy, Co, oh, ow, dwt); break;
    case 2: dw_stem_c(xp, wp, 2, dy, Co, oh, ow, dwt); break;
    default: dw_stem_c(xp, wp, 3, dy, Co, oh, ow, dwt); break;
  }
}

static void dw_images(const float *xp, size_t xstride, int wp, int C, int S, const float *dy, size_t dystride,
                      int nimg, int Co, int oh, int ow, int kh, int kw, float *dwt) {
  const int K = kh * kw * C;
  const int lines = nimg > 1 ? oh : ow >= 256 ? 1 : 256 / ow;
  for (int oy0 = 0; oy0 < oh; oy0 += lines) {
    const int oy1 = oy0 + lines < oh ? oy0 + lines : oh;
    if (kw == 3 && use_tile3()) {
      for (int ky = 0; ky < kh; ky++)
        for (int cb = 0; cb < C / 16; cb++)
          for (int co0 = 0; co0 < Co; co0 += 8)
            dw_block3(xp, xstride, wp, C, S, dy, dystride, nimg, Co, oy0, oy1, ow, ky, cb, co0, dwt, K);
      continue;
    }
    for (int ky = 0; ky < kh; ky++)
      for (int kx = 0; kx < kw; kx++)
        for (int cb = 0; cb < C / 16; cb++)
          for (int co0 = 0; co0 < Co; co0 += 16)
            dw_block_t(xp, xstride, wp, C, S, dy, dystride, nimg, Co, oy0, oy1, ow, ky, kx, cb, co0, dwt, K, kw, 1, 16);
  }
}

/* The dx epilogue state (BN sums) of image j, its sums zeroed. */
static void bsum_image(const rn_bn_sums *bn, int j, int C, size_t xin, float *dx) {
  t_bsum = bn->sums + (size_t)j * 2 * C;
  memset(t_bsum, 0, 2 * (size_t)C * sizeof(double));
  t_bmask = bn->mask ? bn->mask + (size_t)j * xin : NULL;
  t_bpre = bn->pre;
  t_bx = bn->x + (size_t)j * xin;
  t_obase = dx + (size_t)j * xin;
  t_bscale = bn->scale;
  t_bstore = bn->store_masked;
}

/* dx of a 3x3 stride-2 convolution (pad 1) by pixel parity: with x padded by 1, dx[2i+a][2j+b]
 * receives dy[o] through the taps k with 2o + k = 2i + a + 1: for a = 0 only k = 1 (o = i), for
 * a = 1 k = 2 (o = i) and k = 0 (o = i + 1); the same per column. So each of the four classes
 * (a, b) of dx pixels is a stride-1 convolution of dy with (a + 1) x (b + 1) taps (1x1, 1x2, 2x1,
 * 2x2: 9 in all, the forward's FLOPs), dy padded by one zero line and column at the end; its
 * output pixels are every other pixel of every other line of dx (pixel stride 2C, line stride
 * 2wC). Every dx pixel is written once, as a final value (so the BN-sum epilogue applies).
 * xp: dy padded by 1 on each side; wt: the classes' weights (rn_conv_direct_backward_bn). */
static int par_tap(int a, int t) { return a == 0 ? 1 : t == 0 ? 2 : 0; }
static void dx_parity(const float *xp, const rn_conv_desc *d, const float *wt, float *dxi, int acc) {
  const int C = d->cin, Co = d->cout, wp = d->ow + 2;
  const float *base = xp + (size_t)(wp + 1) * Co; /* dy[0][0] */
  size_t off = 0;
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 2; b++) {
      const int oh = (d->h - a + 1) / 2, ow = (d->w - b + 1) / 2;
      if (oh > 0 && ow > 0)
        conv_planes(base, 0, 1, wp, Co, 1, a + 1, b + 1, wt + off, C, oh, ow, dxi + ((size_t)a * d->w + b) * C, 0,
                    acc, NULL, 0, 2 * C, (size_t)2 * d->w * C);
      off += (size_t)(a + 1) * (b + 1) * Co * C;
    }
}

/* The dx convolution's blocked weights for output channels [co0, co1) of the forward (its input
 * channels): for 3x3 stride 2 (par) the four parity classes' weights one after the other in wt (9
 * taps in all); otherwise wt[ci/16][ky'][kx'][co][ci%16] = w[co][kh-1-ky'][kw-1-kx'][ci]. */
static void bwd_weights(const rn_conv_desc *d, const float *w, float *wt, int par, int co0, int co1) {
  const int C = d->cin, Co = d->cout, kh = d->kh, kw = d->kw, K = kh * kw * C;
  if (par)
    for (int a = 0, off = 0; a < 2; a++)
      for (int b = 0; b < 2; b++) {
        const int na = a + 1, nb = b + 1;
        for (int ty = 0; ty < na; ty++)
          for (int tx = 0; tx < nb; tx++)
            for (int co = co0; co < co1; co++) {
              const float *src = w + (size_t)co * K + (size_t)(par_tap(a, ty) * kw + par_tap(b, tx)) * C;
              for (int cb = 0; cb < C / 16; cb++)
                memcpy(wt + off + (((size_t)cb * na * nb + (size_t)(ty * nb + tx)) * Co + co) * 16, src + (size_t)cb * 16,
                       16 * sizeof(float));
            }
        off += na * nb * Co * C;
      }
  else
    for (int ky = 0; ky < kh; ky++)
      for (int kx = 0; kx < kw; kx++)
        for (int co = co0; co < co1; co++) {
          const float *src = w + (size_t)co * K + (size_t)((kh - 1 - ky) * kw + (kw - 1 - kx)) * C;
          for (int cb = 0; cb < C / 16; cb++)
            memcpy(wt + (((size_t)cb * kh * kw + (size_t)(ky * kw + kx)) * Co + co) * 16, src + (size_t)cb * 16,
                   16 * sizeof(float));
        }
}

void rn_conv_direct_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                             float *dx, int acc, float *dw, float *ws, int threads) {
  rn_conv_direct_backward_bn(d, n, x, w, dy, dx, acc, dw, ws, threads, NULL);
}

void rn_conv_direct_backward_bn(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                                float *dx, int acc, float *dw, float *ws, int threads, const rn_bn_sums *bn) {
  const int C = d->cin, Co = d->cout, kh = d->kh, kw = d->kw, K = kh * kw * C;
  const size_t nw = (size_t)Co * K, pf = pad_floats(d);
  const int T = threads_for(n, threads);
  /* images per group: G padded images per thread (dW groups; dx sweeps, conv_images) */
  const int G = dw || (dx && d->stride == 1 && conv_images(d, kh, kw, Co, C) > 1) ? dw_group(d) : 1;
  float *wt = ws, *pads = ws + al16(nw), *part = pads + (size_t)T * dw_group(d) * pf;
  const int pq = kh - 1 - d->pad, pr = kw - 1 - d->pad; /* padding of the dx convolution */
  const int one = is_1x1(d);                              /* 1x1: x and dy are read in place */
  if (one && d->stride != 1) bn = NULL;                   /* no epilogue sums (rn_conv_direct_dx_ok) */
  const int par = dx && !one && d->stride == 2; /* 3x3 stride 2: dx by pixel parity (dx_parity) */
  RN_ASSERT(!par || (kh == 3 && kw == 3 && d->pad == 1));
#pragma omp parallel num_threads(T)
  {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (dx) { /* the blocked weights of the dx convolution, split by output channel (see the forward) */
      bwd_weights(d, w, wt, par, Co * t / nt, Co * (t + 1) / nt);
#pragma omp barrier
    }
    float *xp = pads + (size_t)t * G * pf;
    float *dwt = t == 0 ? dw : part + (size_t)(t - 1) * al16(nw);
    if (dw && t > 0) memset(dwt, 0, nw * sizeof(float));
    const int i1 = n * (t + 1) / nt;
    const size_t xin = (size_t)d->h * d->w * C, yin = (size_t)d->oh * d->ow * Co;
    const int dw1 = dw && one && use_dw1x1(); /* 1x1: all of the thread's images in one sweep */
    float *pack = part + (size_t)(T > 1 ? T - 1 : 0) * al16(nw) + (size_t)t * al16(rn_conv_dw1x1_pack_floats(d));
    /* 1x1 stride 1 with dW and dx: bands of dW then dx (rn_conv_set_dw_interleave) */
    const int il = dw1 && dx && d->stride == 1 && il_kb() > 0;
    if (dw1 && !il) rn_conv_dw1x1(d, n * t / nt, i1, x, dy, dwt, pack, bn ? bn->pre : NULL);
    for (int i = n * t / nt; i < i1; i += G) {
      const int g = i + G <= i1 ? G : i1 - i;
      if (il) {
        /* one band: a dW group of g small images, or whole images; else bands of bl lines */
        const size_t hw = (size_t)d->h * d->w;
        const int bl = band_lines(d, il_kb());
        const rn_conv_pre *pre = bn ? bn->pre : NULL;
        if (g > 1 || bl >= d->h) {
          const size_t p0 = (size_t)i * hw, np = (size_t)g * hw;
          const float *dyp = dy + p0 * Co;
          rn_conv_dw1x1_pixels(d, p0, p0 + np, x, dyp, dwt, pack, pre);
          for (int j = i; j < i + g; j++) {
            if (bn) bsum_image(bn, j, C, xin, dx);
            conv_plane(dyp + (size_t)(j - i) * hw * Co, d->w, Co, 1, 1, 1, wt, C, d->h, d->w, dx + (size_t)j * xin,
                       acc);
            t_bsum = NULL;
          }
          continue;
        }
        if (bn) bsum_image(bn, i, C, xin, dx);
        for (int l0 = 0; l0 < d->h; l0 += bl) {
          const int l1 = l0 + bl < d->h ? l0 + bl : d->h;
          const size_t p0 = (size_t)i * hw + (size_t)l0 * d->w, np = (size_t)(l1 - l0) * d->w;
          const float *dyp = dy + p0 * Co;
          rn_conv_dw1x1_pixels(d, p0, p0 + np, x, dyp, dwt, pack, pre);
          conv_plane(dyp, d->w, Co, 1, 1, 1, wt, C, l1 - l0, d->w, dx + p0 * C, acc);
        }
        t_bsum = NULL;
        continue;
      }
      if (dw && !dw1) {
        const float *xi = x + (size_t)i * xin;
        if (!one)
          for (int j = 0; j < g; j++)
            pad_image_pre(xi + (size_t)j * xin, d->h, d->w, C, d->pad, d->pad, xp + (size_t)j * pf, bn ? bn->pre : NULL);
        if (C % 16) /* the stem (rn_conv_direct_bwd_ok) */
          for (int j = 0; j < g; j++)
            dw_stem(xp + (size_t)j * pf, d->w + 2 * d->pad, C, dy + (size_t)(i + j) * yin, Co, d->oh, d->ow, dwt);
        else
          dw_images(one ? xi : xp, one ? xin : pf, d->w + 2 * d->pad, C, d->stride, dy + (size_t)i * yin, yin, g, Co,
                    d->oh, d->ow, kh, kw, dwt);
      }
      const int gx = dx && !par && G > 1 && conv_images(d, kh, kw, Co, C) > 1; /* dx: a sweep over the group */
      if (gx) {
        for (int j = 0; j < g; j++) {
          pad_image(dy + (size_t)(i + j) * yin, d->oh, d->ow, Co, pq, pr, xp + (size_t)j * pf);
          if (bn) memset(bn->sums + (size_t)(i + j) * 2 * C, 0, 2 * (size_t)C * sizeof(double));
        }
        const img_epi e = {NULL, 0, bn, dx, xin, C};
        conv_planes(xp, pf, g, d->ow + 2 * pr, Co, 1, kh, kw, wt, C, d->h, d->w, dx + (size_t)i * xin, xin, acc,
                    &e, i, C, (size_t)d->w * C);
        t_bsum = NULL;
      }
      if (dx && !gx)
        for (int j = i; j < i + g; j++) {
          const float *dyi = dy + (size_t)j * yin;
          if (par) {
            pad_image(dyi, d->oh, d->ow, Co, 1, 1, xp);
            if (bn) bsum_image(bn, j, C, xin, dx);
            dx_parity(xp, d, wt, dx + (size_t)j * xin, acc);
            t_bsum = NULL;
            continue;
          }
          if (one && d->stride != 1) { /* dense dx of the even pixels, then spread with zeros */
            conv_plane(dyi, d->ow, Co, 1, 1, 1, wt, C, d->oh, d->ow, xp, 0);
            spread2(xp, d->oh, d->ow, C, d->h, d->w, dx + (size_t)j * xin, acc);
            continue;
          }
          if (!one) pad_image(dyi, d->oh, d->ow, Co, pq, pr, xp);
          const int wp = d->ow + 2 * pr;
          if (bn) bsum_image(bn, j, C, xin, dx);
          conv_plane(one ? dyi : xp, wp, Co, 1, kh, kw, wt, C, d->h, d->w, dx + (size_t)j * xin, acc);
          t_bsum = NULL;
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
void rn_conv_set_direct_1x1(int on) { (void)on; }
void rn_conv_set_dw_interleave(int kb) { (void)kb; }
void rn_conv_set_direct_dynamic(int on) { (void)on; }
void rn_conv_set_tile74(int on) { (void)on; }
void rn_conv_set_sweep1(int on) { (void)on; }
int rn_conv_sweep1_passes(const rn_conv_desc *d) {
  (void)d;
  return 0;
}
int rn_conv_tile74_passes(const rn_conv_desc *d) {
  (void)d;
  return 0;
}
int rn_conv_direct_dx_ok(const rn_conv_desc *d) {
  (void)d;
  return 0;
}
int rn_conv_direct_bwd_ok(const rn_conv_desc *d) {
  (void)d;
  return 0;
}
int rn_conv_direct_pre_ok(const rn_conv_desc *d) {
  (void)d;
  return 0;
}
int rn_conv_direct_pre_any(const rn_conv_desc *d) {
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
                            int threads, double *stats) {
  (void)d, (void)n, (void)x, (void)w, (void)y, (void)ws, (void)threads, (void)stats;
  RN_ASSERT(0 && "direct convolution needs AVX-512 at compile time");
}
void rn_conv_direct_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                             float *dx, int acc, float *dw, float *ws, int threads) {
  (void)d, (void)n, (void)x, (void)w, (void)dy, (void)dx, (void)acc, (void)dw, (void)ws, (void)threads;
  RN_ASSERT(0 && "direct convolution needs AVX-512 at compile time");
}
void rn_conv_direct_forward_pre(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                                int threads, double *stats, const rn_conv_pre *pre) {
  (void)d, (void)n, (void)x, (void)w, (void)y, (void)ws, (void)threads, (void)stats, (void)pre;
  RN_ASSERT(0 && "direct convolution needs AVX-512 at compile time");
}
void rn_conv_direct_backward_bn(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                                float *dx, int acc, float *dw, float *ws, int threads, const rn_bn_sums *bn) {
  (void)d, (void)n, (void)x, (void)w, (void)dy, (void)dx, (void)acc, (void)dw, (void)ws, (void)threads, (void)bn;
  RN_ASSERT(0 && "direct convolution needs AVX-512 at compile time");
}
#endif
