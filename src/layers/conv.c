/* conv2d on GEMMs, NHWC activations, OHWI weights.
 *
 * forward  y[M][cout]   = col[M][K] * W^T           M = n*oh*ow, K = kh*kw*cin, W = [cout][K]
 * backward dW[cout][K] += dy^T[cout][M] * col[M][K]
 *          dcol[M][K]   = dy[M][cout] * W[cout][K]  then col2im (gather-add) into dx
 *
 * 1x1 stride-1 pad-0: col is x itself (one GEMM over the whole batch, no workspace).
 * Otherwise the M rows are processed in chunks of R rows (rn_conv_chunk_rows): im2col of the chunk
 * into ws (R*K floats, ~1 MB so it stays in L2 between being written and packed by BLIS), then
 * one rn_sgemm per chunk (BLIS thread pool); im2col/col2im use OpenMP with rn_blas_threads().
 * In backward one buffer serves both: the chunk's columns feed dW, then the same buffer receives
 * dcol for dx. With acc = 0, dx lines are overwritten by the first chunk that reaches them (no
 * separate zeroing pass, except for lines no output reads). */
#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"
#include "rn/wino.h"

/* Column chunk per thread: 1 MB (ResNet-50 b32, 2 threads: 0.5/1/2/4 MB gave 7.4/7.4/7.1/7.2 img/s). */
#define CHUNK_BYTES ((size_t)1 << 20)
#define CHUNK_MIN_ROWS 256

static int g_chunk_rows; /* 0 = automatic */
static int g_par = -1;    /* -1 = not yet read from RN_CONV_PAR */
static int g_plan_threads; /* smallest thread count a workspace was planned for (0 = none yet) */

void rn_conv_set_chunk_rows(int rows) { g_chunk_rows = rows > 0 ? rows : 0; }

int rn_conv_parallel(void) {
  if (g_par < 0) {
    const char *e = getenv("RN_CONV_PAR");
    g_par = e && *e ? atoi(e) != 0 : 1;
  }
  return g_par;
}
void rn_conv_set_parallel(int mode) { g_par = mode != 0; }

/* Threads the chunk-parallel path may use: never more than the workspace was planned for. */
static int conv_threads(void) {
  int t = rn_blas_threads();
  if (g_plan_threads > 0 && g_plan_threads < t) t = g_plan_threads;
  return t < 1 ? 1 : t;
}

rn_status rn_conv_desc_init(rn_conv_desc *d, int cin, int cout, int kh, int kw, int stride, int pad, int h,
                            int w, rn_err *e) {
  memset(d, 0, sizeof *d);
  if (cin < 1 || cout < 1 || kh < 1 || kw < 1 || kh > 64 || kw > 64 || stride < 1 || pad < 0 || h < 1 ||
      w < 1)
    return rn_err_set(e, RN_EINVAL,
                      "conv: impossible shape cin=%d cout=%d kernel=%dx%d stride=%d pad=%d input=%dx%d", cin,
                      cout, kh, kw, stride, pad, h, w);
  if (h + 2 * pad < kh || w + 2 * pad < kw)
    return rn_err_set(e, RN_EINVAL, "conv: kernel %dx%d larger than padded input %dx%d (pad %d)", kh, kw,
                      h + 2 * pad, w + 2 * pad, pad);
  if ((size_t)kh * kw * cin > INT_MAX / 2)
    return rn_err_set(e, RN_EINVAL, "conv: kernel %dx%dx%d too large", kh, kw, cin);
  d->cin = cin, d->cout = cout, d->kh = kh, d->kw = kw, d->stride = stride, d->pad = pad;
  d->h = h, d->w = w;
  d->oh = (h + 2 * pad - kh) / stride + 1;
  d->ow = (w + 2 * pad - kw) / stride + 1;
  return RN_OK;
}

static int pointwise(const rn_conv_desc *d) { return d->kh == 1 && d->kw == 1 && d->stride == 1 && d->pad == 0; }

int rn_conv_chunk_rows(const rn_conv_desc *d, int n) {
  int64_t M = (int64_t)n * d->oh * d->ow;
  size_t K = (size_t)d->kh * d->kw * d->cin;
  int64_t r;
  if (g_chunk_rows > 0) {
    r = g_chunk_rows;
  } else {
    r = (int64_t)(CHUNK_BYTES / (K * sizeof(float)));
    if (r < CHUNK_MIN_ROWS) r = CHUNK_MIN_ROWS;
    r = (r + 15) & ~(int64_t)15;
  }
  if (r > M) r = M;
  if (r < 1) r = 1;
  return (int)r;
}

/* Floats of one thread's column buffer, rounded to whole cache lines. + one row of slack: BLIS
 * 0.9's haswell/zen3 "rd" sup kernels (used for narrow GEMMs) read up to one row past the end of
 * A (values unused). Without it a chunk ending at a page boundary could fault (seen under ASan
 * with M % 3 == 1, transb = 1). */
static size_t col_floats(const rn_conv_desc *d, int n) {
  size_t K = (size_t)d->kh * d->kw * d->cin;
  return (((size_t)rn_conv_chunk_rows(d, n) + 1) * K + 16 + 15) & ~(size_t)15;
}

/* Layout of ws on the chunk-parallel path with T threads: T column buffers, then T-1 partial dW
 * [cout][K] (thread 0 accumulates into dw itself). */
static size_t par_workspace(const rn_conv_desc *d, int n, int T) {
  size_t K = (size_t)d->kh * d->kw * d->cin;
  return (size_t)T * col_floats(d, n) + (size_t)(T - 1) * d->cout * K;
}

size_t rn_conv_workspace(const rn_conv_desc *d, int n) {
  int t = rn_blas_threads();
  if (t < 1) t = 1;
  if (g_plan_threads == 0 || t < g_plan_threads) g_plan_threads = t;
  if (pointwise(d)) return rn_conv_direct_shape(d) ? rn_conv_direct_workspace(d, n, t) : 0;
  size_t a = col_floats(d, n), b = par_workspace(d, n, t);
  if (b > a) a = b;
  if (rn_conv_direct_shape(d)) {
    b = rn_conv_direct_workspace(d, n, t);
    if (b > a) a = b;
  }
  if (rn_conv_stem7_shape(d)) {
    b = rn_conv_stem7_workspace(d, t);
    if (b > a) a = b;
  }
  if (rn_conv_wino_ok(d)) {
    b = rn_conv_wino_workspace(d, n, t);
    if (b > a) a = b;
  }
  return a;
}

/* Winograd applies a lazy BN in its input transforms. A Winograd shape qualifies where the direct
 * kernel can take all three passes too, whatever its width rules (rn_conv_direct_pre_any), so
 * that rn-bench --ab wino can switch Winograd off on the same plan: the direct kernel then runs
 * every pass of it, also where its rules would put dW on the GEMM (ResNet-50's 256@14 and 512@7;
 * slower, the same results). With rn_conv_set_wino_pre_any(0) (RN_WINO_PRE_ANY=0, rn-bench --ab
 * wino-pre) only where the rules take all passes direct, as before: layers 3-4 of ResNet-50 then
 * store their bn1 outputs, run a BN+ReLU pass over them and replay it in the backward. */
static int g_pre_any = -1;
void rn_conv_set_wino_pre_any(int on) { g_pre_any = on != 0; }
int rn_conv_wino_pre_any(void) {
  if (g_pre_any < 0) {
    const char *e = getenv("RN_WINO_PRE_ANY");
    g_pre_any = !(e && e[0] == '0');
  }
  return g_pre_any;
}
int rn_conv_pre_ok(const rn_conv_desc *d) {
  if (rn_conv_wino_ok(d))
    return rn_conv_wino_bn() && (rn_conv_wino_pre_any() ? rn_conv_direct_pre_any(d) : rn_conv_direct_pre_ok(d));
  return rn_conv_direct_pre_ok(d);
}
/* A lazy BN's reader planned by rn_conv_pre_ok runs, whatever the switches now: on Winograd, or
 * every pass on the direct kernel. */
static int pre_runs(const rn_conv_desc *d) { return rn_conv_wino_ok(d) || rn_conv_direct_pre_any(d); }

int rn_conv_forward_pre(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                        double *stats, const rn_conv_pre *pre) {
  RN_ASSERT(n >= 1 && ws != NULL && pre_runs(d));
  if (rn_conv_wino_ok(d)) rn_conv_wino_forward_ep(d, n, x, w, y, ws, conv_threads(), stats, pre);
  else rn_conv_direct_forward_pre(d, n, x, w, y, ws, conv_threads(), stats, pre);
  return stats != NULL;
}

int rn_conv_forward_stats(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                          double *stats) {
  if (n >= 1 && rn_conv_stem7_shape(d)) {
    RN_ASSERT(ws != NULL);
    rn_conv_stem7_forward(d, n, x, w, y, ws, conv_threads(), stats);
    return stats != NULL;
  }
  if (n >= 1 && rn_conv_wino_ok(d)) {
    RN_ASSERT(ws != NULL);
    if (!rn_conv_wino_bn()) stats = NULL;
    rn_conv_wino_forward_ep(d, n, x, w, y, ws, conv_threads(), stats, NULL);
    return stats != NULL;
  }
  if (n >= 1 && rn_conv_direct_ok(d)) {
    RN_ASSERT(ws != NULL);
    rn_conv_direct_forward(d, n, x, w, y, ws, conv_threads(), stats);
    return stats != NULL;
  }
  rn_conv_forward(d, n, x, w, y, ws);
  return 0;
}

void rn_conv_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws) {
  const int64_t M = (int64_t)n * d->oh * d->ow;
  const int K = d->kh * d->kw * d->cin, cout = d->cout;
  RN_ASSERT(M <= INT_MAX);
  if (M <= 0) return;
  if (pointwise(d) && !rn_conv_direct_ok(d)) {
    rn_sgemm(0, 1, (int)M, cout, K, 1.0f, x, K, w, K, 0.0f, y, cout);
    return;
  }
  RN_ASSERT(ws != NULL);
  if (rn_conv_stem7_shape(d)) {
    rn_conv_stem7_forward(d, n, x, w, y, ws, conv_threads(), NULL);
    return;
  }
  if (rn_conv_wino_ok(d)) {
    rn_conv_wino_forward(d, n, x, w, y, ws, conv_threads());
    return;
  }
  if (rn_conv_direct_ok(d)) {
    rn_conv_direct_forward(d, n, x, w, y, ws, conv_threads(), NULL);
    return;
  }
  const int R = rn_conv_chunk_rows(d, n);
  int T = conv_threads();
  if (T > 1 && rn_conv_parallel() && M >= 2 * 16) {
    /* Each thread: a contiguous range of output rows, in chunks of R, its own column buffer. */
    const size_t cf = col_floats(d, n);
#pragma omp parallel num_threads(T)
    {
      int t = omp_get_thread_num(), nt = omp_get_num_threads();
      int64_t r0 = M * t / nt, r1 = M * (t + 1) / nt;
      float *col = ws + (size_t)t * cf;
      for (int64_t m0 = r0; m0 < r1; m0 += R) {
        int rows = (int)(r1 - m0 < R ? r1 - m0 : R);
        rn_im2col_rows_serial(d, x, m0, rows, col);
        rn_sgemm_serial(0, 1, rows, cout, K, 1.0f, col, K, w, K, 0.0f, y + (size_t)m0 * cout, cout);
      }
    }
    return;
  }
  for (int64_t m0 = 0; m0 < M; m0 += R) {
    int rows = (int)(M - m0 < R ? M - m0 : R);
    rn_im2col_rows(d, x, m0, rows, ws);
    rn_sgemm(0, 1, rows, cout, K, 1.0f, ws, K, w, K, 0.0f, y + (size_t)m0 * cout, cout);
  }
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

static void zero_lines(const rn_conv_desc *d, float *dx, int64_t g0, int64_t g1) {
  if (g1 <= g0) return;
  size_t line = (size_t)d->w * d->cin;
  int T = (size_t)(g1 - g0) * line >= 65536 ? rn_blas_threads() : 1;
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t g = g0; g < g1; g++) memset(dx + (size_t)g * line, 0, line * sizeof(float));
}

/* Input lines [g_lo, g_hi) that output rows m0 .. m0+rows-1 read. */
static void chunk_lines(const rn_conv_desc *d, int64_t m0, int rows, int64_t *g_lo, int64_t *g_hi) {
  int64_t L0 = m0 / d->ow, L1 = (m0 + rows - 1) / d->ow;
  int64_t i0 = L0 / d->oh, oy0 = L0 % d->oh, i1 = L1 / d->oh, oy1 = L1 % d->oh;
  *g_lo = i0 * d->h + clamp64(oy0 * d->stride - d->pad, 0, d->h);
  *g_hi = i1 * d->h + clamp64(oy1 * d->stride - d->pad + d->kh, 0, d->h);
}

/* Chunk-parallel backward: thread t owns images [n*t/T, n*(t+1)/T) (so the dx lines it writes are
 * its own), walks their output rows in chunks of R: im2col -> partial dW (thread 0: dw itself,
 * others: their buffer in ws), then dcol = dy*W in the same buffer -> col2im. The partial dW are
 * summed into dw at the end (fixed order: deterministic for a given thread count). */
static void backward_par(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy, float *dx,
                         int acc, float *dw, float *ws, int R, int T) {
  const int K = d->kh * d->kw * d->cin, cout = d->cout;
  const int64_t ohw = (int64_t)d->oh * d->ow;
  const size_t cf = col_floats(d, n), nw = (size_t)cout * K;
  float *part = ws + (size_t)T * cf;
#pragma omp parallel num_threads(T)
  {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t i0 = (int64_t)n * t / nt, i1 = (int64_t)n * (t + 1) / nt;
    int64_t r0 = i0 * ohw, r1 = i1 * ohw;
    float *col = ws + (size_t)t * cf;
    float *dwt = t == 0 ? dw : part + (size_t)(t - 1) * nw;
    float beta = t == 0 ? 1.0f : 0.0f;
    int64_t done = i0 * d->h; /* acc = 0: own lines [i0*h, done) hold their first contribution */
    for (int64_t m0 = r0; m0 < r1; m0 += R) {
      int rows = (int)(r1 - m0 < R ? r1 - m0 : R);
      const float *dyc = dy + (size_t)m0 * cout;
      if (dw) {
        rn_im2col_rows_serial(d, x, m0, rows, col);
        rn_sgemm_serial(1, 0, cout, K, rows, 1.0f, dyc, cout, col, K, beta, dwt, K);
        beta = 1.0f;
      }
      if (dx) {
        rn_sgemm_serial(0, 0, rows, K, cout, 1.0f, dyc, cout, w, K, 0.0f, col, K);
        int64_t g_lo, g_hi;
        chunk_lines(d, m0, rows, &g_lo, &g_hi);
        if (acc) {
          rn_col2im_rows_serial(d, col, m0, rows, dx, g_lo, g_hi, INT64_MAX);
        } else {
          int64_t b = g_lo < done ? g_lo : done, e = g_hi > done ? g_hi : done;
          rn_col2im_rows_serial(d, col, m0, rows, dx, b, e, done);
          done = e;
        }
      }
    }
    if (dx && !acc && done < i1 * d->h) {
      size_t line = (size_t)d->w * d->cin;
      memset(dx + (size_t)done * line, 0, (size_t)(i1 * d->h - done) * line * sizeof(float));
    }
    if (dw) {
      if (t > 0 && beta == 0.0f) memset(dwt, 0, nw * sizeof(float)); /* no rows (cannot happen: T <= n) */
#pragma omp barrier
      /* dw += sum of the partials, split across threads by rows of dw. */
      size_t j0 = nw * (size_t)t / (size_t)nt, j1 = nw * (size_t)(t + 1) / (size_t)nt;
      for (int u = 1; u < nt; u++) {
        const float *p = part + (size_t)(u - 1) * nw;
#pragma omp simd
        for (size_t j = j0; j < j1; j++) dw[j] += p[j];
      }
    }
  }
}

void rn_conv_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy, float *dx,
                      int acc, float *dw, float *ws) {
  rn_conv_backward_bn(d, n, x, w, dy, dx, acc, dw, ws, NULL);
}

int rn_conv_backward_bn(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy, float *dx,
                        int acc, float *dw, float *ws, const rn_bn_sums *bn) {
  const int64_t M = (int64_t)n * d->oh * d->ow;
  const int K = d->kh * d->kw * d->cin, cout = d->cout;
  RN_ASSERT(M <= INT_MAX);
  if (M <= 0) return 0;
  if (pointwise(d)) {
    int ddw = dw && rn_conv_direct_bwd_ok(d), ddx = dx && rn_conv_direct_dx_ok(d);
    RN_ASSERT(!bn || !bn->pre || (rn_conv_pre_ok(d) && ddw && ddx)); /* an input never stored: both direct */
    if (ddw || ddx)
      rn_conv_direct_backward_bn(d, n, x, w, dy, ddx ? dx : NULL, acc, ddw ? dw : NULL, ws, conv_threads(),
                                 ddx ? bn : NULL);
    if (dw && !ddw) rn_sgemm(1, 0, cout, K, (int)M, 1.0f, dy, cout, x, K, 1.0f, dw, K);
    if (dx && !ddx) rn_sgemm(0, 0, (int)M, K, cout, 1.0f, dy, cout, w, K, acc ? 1.0f : 0.0f, dx, K);
    return ddx && bn;
  }
  if (!dw && !dx) return 0;
  RN_ASSERT(ws != NULL);
  /* an input that was never stored: Winograd, or both passes direct (rn_conv_pre_ok), also where
   * the direct kernel's width rules would put dW on the GEMM (pre: Winograd switched off) */
  const int pre = bn && bn->pre;
  RN_ASSERT(!pre || (pre_runs(d) && dw && dx));
  if (rn_conv_wino_ok(d)) { /* the BN sums in dx's output transform */
    if (bn && !bn->pre && !rn_conv_wino_bn()) bn = NULL;
    rn_conv_wino_backward_bn(d, n, x, w, dy, dx, acc, dw, ws, conv_threads(), bn);
    return dx && bn;
  }
  int sums = 0;
  if (d->stride != 1 && d->kh == 1 && d->kw == 1 && bn && !bn->pre) bn = NULL; /* 1x1 stride-2 dx: no epilogue sums */
  if (dw && rn_conv_stem7_shape(d)) { /* the ImageNet stem: its own dW kernel; dx (if wanted) below */
    rn_conv_stem7_backward(d, n, x, dy, dw, ws, conv_threads());
    if (!dx) return 0;
    dw = NULL;
  }
  if (dw && (rn_conv_direct_bwd_ok(d) || pre)) {
    /* Direct dW (and dx when the direct kernel takes it); otherwise dx below. */
    int ddx = dx && (rn_conv_direct_dx_ok(d) || pre);
    rn_conv_direct_backward_bn(d, n, x, w, dy, ddx ? dx : NULL, acc, dw, ws, conv_threads(), ddx ? bn : NULL);
    if (ddx || !dx) return ddx && bn;
    dw = NULL;
  } else if (dx && rn_conv_direct_dx_ok(d)) {
    rn_conv_direct_backward_bn(d, n, x, w, dy, dx, acc, NULL, ws, conv_threads(), bn);
    sums = bn != NULL;
    if (!dw) return sums;
    dx = NULL; /* dW on the GEMM path below */
  }
  const int R = rn_conv_chunk_rows(d, n);
  int T = conv_threads();
  if (T > n) T = n;
  if (T > 1 && rn_conv_parallel()) {
    backward_par(d, n, x, w, dy, dx, acc, dw, ws, R, T);
    return sums;
  }
  const int64_t hlines = (int64_t)n * d->h;
  int64_t done = 0; /* acc = 0: input lines [0, done) already hold their first contribution */
  for (int64_t m0 = 0; m0 < M; m0 += R) {
    int rows = (int)(M - m0 < R ? M - m0 : R);
    const float *dyc = dy + (size_t)m0 * cout;
    if (dw) {
      rn_im2col_rows(d, x, m0, rows, ws);
      rn_sgemm(1, 0, cout, K, rows, 1.0f, dyc, cout, ws, K, 1.0f, dw, K);
    }
    if (dx) {
      rn_sgemm(0, 0, rows, K, cout, 1.0f, dyc, cout, w, K, 0.0f, ws, K);
      /* Input lines read by output lines L0..L1 of this chunk. */
      int64_t g_lo, g_hi;
      chunk_lines(d, m0, rows, &g_lo, &g_hi);
      if (acc) {
        rn_col2im_rows(d, ws, m0, rows, dx, g_lo, g_hi, INT64_MAX);
      } else {
        int64_t b = g_lo < done ? g_lo : done, e = g_hi > done ? g_hi : done;
        rn_col2im_rows(d, ws, m0, rows, dx, b, e, done);
        done = e;
      }
    }
  }
  if (dx && !acc) zero_lines(d, dx, done, hlines);
  return sums;
}
