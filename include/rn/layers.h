/* layers: the operations a ResNet needs, float32, activations NHWC.
 *
 * Conventions
 * - Shapes are per sample in the desc; the batch size n is passed per call (n <= planned batch).
 * - Backward functions take `acc` for the input gradient: 0 = overwrite dx, 1 = add into dx
 *   (a tensor consumed by two nodes, e.g. a block input feeding conv1 and the shortcut).
 *   dx may be NULL (no input gradient needed, e.g. the first conv).
 * - Parameter gradients (dw, dgamma, dbeta, db) always ACCUMULATE; the caller zeroes them.
 * - Conv weights are stored OHWI: w[cout][kh][kw][cin] (the checkpoint converts to OIHW).
 * - Linear weights are PyTorch's [out][in]; bias [out].
 * - `ws` is a workspace of at least the size reported by the *_workspace function, allocated
 *   once when the model is planned. Nothing here allocates.
 * - Functions use OpenMP / the BLIS thread pool internally (rn_blas_threads()).
 */
#ifndef RN_LAYERS_H
#define RN_LAYERS_H
#include <stdint.h>
#include "rn/core.h"

/* ---------------- conv2d (no bias, zero padding) ---------------- */
typedef struct {
  int cin, cout, kh, kw, stride, pad;
  int h, w;   /* input spatial size */
  int oh, ow; /* output spatial size: (h + 2*pad - kh)/stride + 1 */
} rn_conv_desc;
/* Fills oh/ow; returns RN_EINVAL with message if the shape is impossible. */
rn_status rn_conv_desc_init(rn_conv_desc *d, int cin, int cout, int kh, int kw, int stride, int pad,
                            int h, int w, rn_err *e);
size_t rn_conv_workspace(const rn_conv_desc *d, int n); /* floats */
typedef struct rn_conv_pre rn_conv_pre; /* below */
/* y[n][oh][ow][cout] = conv(x[n][h][w][cin], w[cout][kh][kw][cin]) */
void rn_conv_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws);
/* The forward, and when it runs on the direct kernel or Winograd (rn_conv_wino_bn) also the
 * per-image channel sums of y for a batch norm that follows (see rn_conv_direct_forward): returns 1
 * if stats were filled, 0 if not (GEMM path, or stats NULL). stats holds n*2*cout doubles. */
int rn_conv_forward_stats(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                          double *stats);
/* A convolution that reads a BN(+ReLU) output which is never stored: given the BN's input x and
 * its float affine coefficients, the direct kernel copies [relu](x * sc + sh) (the BN's own
 * instructions, so the same bits) into its padded input buffer; Winograd applies it in its input
 * transforms. Only where rn_conv_pre_ok. */
struct rn_conv_pre {
  const float *sc, *sh; /* [cin] */
  int relu;
};
/* The shape takes the direct kernel in all three passes (forward, dx, dW), with a padded copy
 * (k x k), or (1x1, stride 1) a copy of bands of lines forward and the dW kernel's packing; or it
 * runs on Winograd (with rn_conv_wino_bn on) and the direct kernel could take it, whatever its
 * width rules (with rn_conv_wino_pre_any on, the default; off: where its rules take all passes;
 * RN_WINO_PRE_ANY=0). A planned reader runs all passes direct when Winograd is switched off. */
int rn_conv_pre_ok(const rn_conv_desc *d);
void rn_conv_set_wino_pre_any(int on);
int rn_conv_wino_pre_any(void);
/* rn_conv_forward_stats with pre (rn_conv_pre_ok(d) required). */
int rn_conv_forward_pre(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                        double *stats, const rn_conv_pre *pre);
/* dw[cout][kh][kw][cin] += ...; dx[n][h][w][cin] (=, or += when acc) ... */
void rn_conv_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                      float *dx, int acc, float *dw, float *ws);
/* The channel sums a BN backward needs, computed in the dx epilogue of the convolution that reads
 * the BN's output and writes the final gradient of it: per image i (n*2*cin doubles),
 * sums[i*2*cin + c] = sum of gb and sums[(i*2+1)*cin + c] = sum of gb*x over the image, with
 * g = dx masked by mask > 0 (the BN's (or BN+add's) output when it has a fused ReLU; NULL: no mask),
 * gb = g (scale 1), 0 (scale 0) or scale*g (a BN+add's branch scale), x the BN's input. With
 * store_masked, g is stored as dx instead of the unmasked value (the BN's backward masks anyway). */
typedef struct {
  const float *mask, *x;
  double *sums;
  float scale;
  int store_masked;
  /* Non-NULL: the convolution's input is a BN(+ReLU) output that was never stored (rn_conv_pre);
   * the x passed to rn_conv_backward_bn is the BN's input (bn->x), the dW pass applies pre to it,
   * and the mask (mask NULL) is [x * sc + sh > 0] when pre->relu. dW and dx must both be direct. */
  const rn_conv_pre *pre;
} rn_bn_sums;
/* rn_conv_backward, and when dx runs on the direct kernel or Winograd (rn_conv_wino_bn) also the
 * sums of bn (see rn_bn_sums): returns 1 if they were filled, 0 if not (dx on the GEMM path, or no
 * dx). */
int rn_conv_backward_bn(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy, float *dx,
                        int acc, float *dw, float *ws, const rn_bn_sums *bn);
/* Blocking of the k x k path: the M = n*oh*ow output rows are processed in chunks of R rows
 * (im2col of R rows into ws, one GEMM per chunk), so the workspace is (R+1)*kh*kw*cin + 16 floats
 * whatever the batch (one row of slack: BLIS's narrow kernels read past the end of A). R is chosen so a chunk of columns is about 1 MB (at least 256 rows, at most M).
 * rn_conv_set_chunk_rows(r > 0) forces R = r (tests, benchmarks); 0 restores the automatic choice.
 * Set it before planning workspaces: it changes rn_conv_workspace. */
void rn_conv_set_chunk_rows(int rows);
int rn_conv_chunk_rows(const rn_conv_desc *d, int n);
/* The building blocks (src/kernels/im2col.c), on the flat output-row index m = (img*oh+oy)*ow+ox:
 * col[r][(ky*kw+kx)*cin + ci] for rows m0 <= m < m0+rows (zeros where the tap is in the padding). */
void rn_im2col_rows(const rn_conv_desc *d, const float *x, int64_t m0, int rows, float *col);
/* Adds dcol (rows m0 .. m0+rows, layout as above) into dx[n][h][w][cin], gathering per input pixel
 * (threads own whole input lines: no races). Only input lines g = img*h+iy in [g_begin, g_end) are
 * visited; lines g >= fresh_from are overwritten instead (first chunk to reach them). */
void rn_col2im_rows(const rn_conv_desc *d, const float *dcol, int64_t m0, int rows, float *dx,
                    int64_t g_begin, int64_t g_end, int64_t fresh_from);
/* The same on the calling thread only (for use inside a parallel region). */
void rn_im2col_rows_serial(const rn_conv_desc *d, const float *x, int64_t m0, int rows, float *col);
void rn_col2im_rows_serial(const rn_conv_desc *d, const float *dcol, int64_t m0, int rows, float *dx,
                           int64_t g_begin, int64_t g_end, int64_t fresh_from);
/* Threading structure of the k x k path (benchmarks' A/B; default 1):
 * 1 = one OpenMP region per call, each thread takes its own chunks (own im2col buffer in ws,
 *     single-threaded GEMMs; backward: image-aligned chunks so dx lines are never shared, per-thread
 *     partial dW summed at the end);
 * 0 = chunks in sequence, each GEMM threaded by rn_sgemm (the earlier structure).
 * The workspace (rn_conv_workspace) is planned for rn_blas_threads() threads at the time of the
 * call: plan after rn_blas_init. Calls later use at most the smallest thread count any plan used
 * (never more threads than the workspace holds buffers for). The environment variable
 * RN_CONV_PAR=0|1 sets the default. */
void rn_conv_set_parallel(int mode);
int rn_conv_parallel(void);
/* Direct AVX-512 convolution (src/kernels/conv_direct.c) for stride 1 or 2, cin and cout multiples
 * of 16 (cin <= 4 too for a 3x3 stride-1 first convolution, forward only), kernel up to 7x7 (1x1
 * included), pad < kernel: no im2col; threads own whole images. rn_conv_forward and
 * rn_conv_backward use it per shape and direction by measured rules (rn-bench-conv): forward k x k
 * stride 1 and 2, 1x1 on lines >= 14 wide; dx stride 1 (1x1 on lines >= 14 wide) and 1x1 stride 2
 * (output lines >= 28 wide); dW k x k stride 1, 3x3 stride 2 up to 128 channels, 1x1 (see
 * rn_conv_direct_bwd_ok). It is on by default with
 * AVX-512 (the environment variable RN_CONV_DIRECT=0|1 or rn_conv_set_direct sets it).
 * Workspace: rn_conv_direct_workspace floats (rn_conv_workspace includes it for such shapes). */
void rn_conv_set_direct(int on);
int rn_conv_direct_enabled(void);
int rn_conv_direct_shape(const rn_conv_desc *d); /* the shape qualifies (whatever the switch/width) */
int rn_conv_direct_ok(const rn_conv_desc *d);    /* forward uses it: shape, switch and width rule */
int rn_conv_direct_bwd_ok(const rn_conv_desc *d); /* backward dW uses it (stricter width rule) */
int rn_conv_direct_dx_ok(const rn_conv_desc *d);  /* backward dx uses it */
int rn_conv_direct_pre_ok(const rn_conv_desc *d); /* all passes direct, and can read a lazy BN (rn_conv_pre) */
int rn_conv_direct_pre_any(const rn_conv_desc *d); /* the same whatever the width rules (every width is correct) */
/* Largest cin/cout the direct path takes (default: no limit; benchmarks' A/B). Set before planning. */
void rn_conv_set_direct_max_channels(int c);
/* Width rules (measured, see conv_direct.c): forward takes widths that are multiples of 8, 24+,
 * 14 or 7; backward only multiples of 8 and 24+; others go to the GEMM path, which is faster
 * there. on = take every width in both directions (tests of the tail tiles). */
void rn_conv_set_direct_all_widths(int on);
/* 1x1 convolutions on the direct path too (default on; RN_CONV_DIRECT_1X1=0 or
 * rn_conv_set_direct_1x1(0) sends them to the GEMM path). Set before planning. */
void rn_conv_set_direct_1x1(int on);
size_t rn_conv_direct_workspace(const rn_conv_desc *d, int n, int threads);
/* stats (NULL = none): per image i, stats[i*2*cout + c] = sum and stats[(i*2+1)*cout + c] = sum of
 * squares (double) of output channel c, computed from the final output values in the epilogue. */
void rn_conv_direct_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                            int threads, double *stats);
/* The direct forward's images: claimed one unit (an image, or a group of images swept together) at
 * a time by the threads (default), or static shares (RN_DIRECT_DYN=0 or
 * rn_conv_set_direct_dynamic(0), A/B). The same bits either way. */
void rn_conv_set_direct_dynamic(int on);
/* 1x1 stride-1 passes over 1024k input channels on 14k-wide lines: 7 x 4 tiles (default; their
 * input lines do not evict each other in L1) or 14 x 2 (RN_CONV_T74=0 or rn_conv_set_tile74(0),
 * A/B). The same output bits either way. */
void rn_conv_set_tile74(int on);
/* The passes of d that take those 7 x 4 tiles now (not those the plane sweep below takes):
 * 1 = forward, 2 = dx (0: none). */
int rn_conv_tile74_passes(const rn_conv_desc *d);
/* 1x1 stride-1 passes over >= 512 input channels whose input plane is <= 2 MB: one group of four
 * output-channel blocks at a time over all pixels of the plane in 7-pixel tiles (default), or line
 * by line over all blocks (RN_CONV_SWEEP1=0 or rn_conv_set_sweep1(0), A/B). The same output bits
 * either way. rn_conv_sweep1_passes: the passes of d it takes now (1 = forward, 2 = dx). */
void rn_conv_set_sweep1(int on);
int rn_conv_sweep1_passes(const rn_conv_desc *d);
void rn_conv_direct_forward_pre(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                                int threads, double *stats, const rn_conv_pre *pre);
void rn_conv_direct_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                             float *dx, int acc, float *dw, float *ws, int threads);
/* The same with the BN backward sums in the dx epilogue (bn NULL: none; see rn_bn_sums). */
void rn_conv_direct_backward_bn(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                                float *dx, int acc, float *dw, float *ws, int threads, const rn_bn_sums *bn);
/* 1x1 weight gradient of images [i0, i1) added into dwt[cout][cin] (src/kernels/conv_dw1x1.c; AVX-512
 * builds only, called per thread by rn_conv_direct_backward_bn, which sizes the per-thread `pack`
 * scratch with rn_conv_dw1x1_pack_floats; RN_CONV_DW1X1=0 turns it off). */
size_t rn_conv_dw1x1_pack_floats(const rn_conv_desc *d);
void rn_conv_dw1x1(const rn_conv_desc *d, int i0, int i1, const float *x, const float *dy, float *dwt, float *pack,
                   const rn_conv_pre *pre); /* pre: x is a lazy BN's input (stride 1), applied in the packing */
/* The same for output pixels [p0, p1) of the batch (stride 1 only; image i's pixels start at
 * i*oh*ow), dyp = the dy row of pixel p0 (x is the whole batch's): one band of the interleaved 1x1
 * backward (rn_conv_set_dw_interleave). */
void rn_conv_dw1x1_pixels(const rn_conv_desc *d, size_t p0, size_t p1, const float *x, const float *dyp, float *dwt,
                          float *pack, const rn_conv_pre *pre);
/* Small stride-1 shapes (cin + cout <= 640) read x (cin <= 512, no lazy BN) and dy (cout <= 512) in
 * place instead of packing them, and prefetch the next chunk while a chunk runs (bitwise the same
 * dW). Default on; 0 = always pack, no prefetch (A/B: rn-bench --ab dw-ip). The environment
 * variable RN_CONV_DW1X1_IP=0 sets it off at first use. */
void rn_conv_set_dw1x1_inplace(int on);
/* 1x1 stride-1 backward with dW and dx both direct: per thread, bands of its images' output
 * pixels (dy bands of about `kb` KB) take dW and then dx in turn, so that dx (and its BN-sum
 * epilogue's x, which a lazy BN's dW reads too) finds the band in cache instead of reading dy from
 * memory a second time. kb = 0: dW over all of the thread's images first, then dx (as before).
 * Default 512; the environment variable RN_CONV_IL=KB sets it. dx is bitwise the same either way;
 * dW differs only in summation order (float partial sums per 64-pixel chunk). */
void rn_conv_set_dw_interleave(int kb);
/* 1x1 forwards on the direct kernel whose output exceeds `mb` MB write it with streaming
 * (non-temporal) stores: no read for ownership, but the output is not left in the cache for its
 * reader. 0 = never. Default 16; the environment variables RN_CONV_STREAM=0 (off) and
 * RN_CONV_STREAM_MB=N set it. The results are the same bits either way. */
void rn_conv_set_stream_mb(int mb);
/* The ImageNet stem (cin 3, 7x7, stride 2, pad 3, cout a multiple of 16) on its own AVX-512 kernels
 * (src/kernels/conv_stem7.c): forward (with the output's BN statistics, as rn_conv_direct_forward)
 * and dW added into dw (it has no dx). rn_conv_forward/_backward take them for that shape unless
 * RN_CONV_STEM7=0; workspace: rn_conv_stem7_workspace floats (included by rn_conv_workspace). */
int rn_conv_stem7_shape(const rn_conv_desc *d);
size_t rn_conv_stem7_workspace(const rn_conv_desc *d, int threads);
void rn_conv_stem7_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                           int threads, double *stats);
void rn_conv_stem7_backward(const rn_conv_desc *d, int n, const float *x, const float *dy, float *dw, float *ws,
                            int threads);
/* Naive direct convolution (double accumulation) for tests: forward, dx (overwrite), dw (overwrite). */
void rn_ref_conv_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y);
void rn_ref_conv_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                          float *dx, float *dw);

/* ---------------- batch norm 2d (PyTorch conventions) ---------------- */
typedef struct {
  int c;
  float momentum; /* 0.1 */
  float eps;      /* 1e-5 */
  int relu;       /* 1: a ReLU is fused into the layer: y = max(0, bn(x)) (NaN propagates, as
                     rn_relu_forward), and the backward masks dy with (y > 0) while reading it, so
                     its results are bitwise those of rn_relu_backward followed by the plain BN
                     backward. 0: plain BN. */
} rn_bn_desc;
/* Training: batch statistics over m = n*h*w rows of c channels; saves mean and 1/sqrt(var+eps)
 * (biased var) in save[0..c) and save[c..2c); running_mean/var updated with momentum using the
 * unbiased variance (m/(m-1)). Per-channel sums are in double over a fixed partition of the rows:
 * results do not depend on the thread count. y may alias x. */
void rn_bn_forward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                         const float *beta, float *run_mean, float *run_var, float *save, float *y);
/* The same with the statistics already summed per image by the convolution that produced x
 * (rn_conv_forward_stats: nimg images, per image cout sums then cout sums of squares): the images'
 * sums are added in image order (independent of the thread count), and the statistics pass over x
 * is skipped. */
void rn_bn_forward_train_stats(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                               const float *beta, float *run_mean, float *run_var, float *save, float *y,
                               int nimg, const double *stats);
/* Training forward without the output pass (a BN whose output the reading convolution applies,
 * rn_conv_pre): statistics from stats as above (or from x when stats is NULL), saved state and
 * running statistics as above, and the float coefficients of y = [relu](x * sc + sh) in sc[c], sh[c]. */
void rn_bn_forward_train_coef(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                              const float *beta, float *run_mean, float *run_var, float *save, int nimg,
                              const double *stats, float *sc, float *sh);
/* y = [relu](x * sc + sh) with the coefficients of rn_bn_forward_train_coef: the bits of
 * rn_bn_forward_train's output (the model's backward recomputes BN outputs with it). y may alias x. */
void rn_bn_apply(const rn_bn_desc *d, int64_t m, const float *x, const float *sc, const float *sh, float *y);
/* Streaming stores for a fused BN+add's output (forward and replay) above mb MB (default 16: the
 * block outputs of ResNet-50's layers 1-3 at b32; 0 = never; -1 restores the default or the
 * environment variable RN_ADD_STREAM_MB, read at first use). Only 64-byte-aligned outputs of
 * 16-channel multiples (the model's arena); the same bits. */
void rn_bn_set_add_stream_mb(int mb);
/* Eval: running statistics. */
/* The eval forward's float coefficients: y = [relu](x * sc + sh) (rn_conv_pre applies them). */
void rn_bn_eval_coef(const rn_bn_desc *d, const float *gamma, const float *beta, const float *run_mean,
                     const float *run_var, float *sc, float *sh);
void rn_bn_forward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                        const float *beta, const float *run_mean, const float *run_var, float *y);
/* Synchronised BN (an option of data-parallel training): when fn is set, the training-mode forward
 * and backward sum their per-channel statistics (and row counts) over all ranks through
 * fn(ctx, v, n) (an in-place sum of n doubles, provided by the dist module), so every rank
 * normalises with the statistics of the global batch. NULL turns it off. */
typedef void (*rn_bn_reduce_fn)(void *ctx, double *v, int n);
void rn_bn_set_sync(rn_bn_reduce_fn fn, void *ctx);
/* Backward of the training forward (save from it). y is the forward output, read only when
 * d->relu (the ReLU mask; may be NULL otherwise). dx may alias dy (not with acc). */
void rn_bn_backward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *y,
                          const float *gamma, const float *save, const float *dy, float *dx, int acc,
                          float *dgamma, float *dbeta);
/* The same with the channel sums already computed per image by the convolution that reads this
 * BN's output (rn_conv_backward_bn: nimg images, per image c sums of g then c sums of g*x): the
 * images' sums are added in image order and the channel-sum pass over dy, y and x is skipped. */
void rn_bn_backward_train_sums(const rn_bn_desc *d, int64_t m, const float *x, const float *y, const float *gamma,
                               const float *save, const float *dy, float *dx, int acc, float *dgamma, float *dbeta,
                               int nimg, const double *sums, int dy_masked);
/* Backward of the eval-mode forward (fixed statistics: an affine map); y and dx as above. */
void rn_bn_backward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *y,
                         const float *gamma, const float *run_mean, const float *run_var,
                         const float *dy, float *dx, int acc, float *dgamma, float *dbeta);

/* BN of a residual branch fused with the residual add (and its ReLU when d->relu):
 * y = [relu](s + scale*bn(x)), s the shortcut, scale the stochastic-depth branch scale (1, 0 or
 * 1/p). Results are bitwise those of the BN node followed by rn_add_forward (and the backward ones
 * of rn_add_backward followed by the BN backward); the BN output is never stored: the forward is
 * one pass over x, s and y instead of two passes (BN, add). y may alias s, not x.
 * Training forward: stats as rn_bn_forward_train_stats (nimg images' sums) or NULL (own pass). */
/* spre (NULL: none): the shortcut s is the input of a lazy BN without ReLU (a projection shortcut's
 * BN, rn_node.lazy = 3) whose output is never stored: s' = s * spre->sc + spre->sh (FMA), the bits
 * of that BN's output, takes the place of s. */
void rn_bn_add_forward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma, const float *beta,
                             float *run_mean, float *run_var, float *save, int nimg, const double *stats,
                             const float *s, float scale, float *y, const rn_conv_pre *spre);
void rn_bn_add_forward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma, const float *beta,
                            const float *run_mean, const float *run_var, const float *s, float scale, float *y,
                            const rn_conv_pre *spre);
/* y = [relu](s + scale*(x * sc + sh)) with the coefficients of rn_bn_forward_train_coef (same
 * statistics): the bits of rn_bn_add_forward_train's output. y may alias s, not x. */
void rn_bn_add_apply(const rn_bn_desc *d, int64_t m, const float *x, const float *sc, const float *sh, const float *s,
                     float scale, float *y, const rn_conv_pre *spre);
/* Backward: dy is d(loss)/dy; writes the shortcut gradient ds (= masked dy; += with acc_s; ds may
 * alias dy when !acc_s) and the BN input gradient dx (+= with acc), and adds dgamma, dbeta. y is
 * read as the ReLU mask when d->relu. ssums (NULL: none; needs ds, !acc_s): also the backward
 * channel sums of a BN whose input is sx and whose output gradient is ds (the lazy projection BN
 * of spre), ssums[0..c) = sum ds, [c..2c) = sum ds*sx, the bits rn_bn_backward_train's own pass
 * gives (for rn_bn_backward_train_sums with nimg = 1). */
void rn_bn_add_backward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *y, const float *gamma,
                              const float *save, const float *dy, float scale, float *ds, int acc_s, float *dx,
                              int acc, float *dgamma, float *dbeta, const float *sx, double *ssums);
/* The training backward with the channel sums of gb computed per image by the convolution that
 * reads y (rn_conv_backward_bn with store_masked: dy already holds g); ds must be dy (!acc_s), so the
 * shortcut gradient is already in place and only the dx pass runs. */
void rn_bn_add_backward_train_sums(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                                   const float *save, float *dy, float scale, float *dx, int acc, float *dgamma,
                                   float *dbeta, int nimg, const double *sums);
void rn_bn_add_backward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *y, const float *gamma,
                             const float *run_mean, const float *run_var, const float *dy, float scale, float *ds,
                             int acc_s, float *dx, int acc, float *dgamma, float *dbeta);

/* ---------------- ReLU (count = n*h*w*c); y may alias x ---------------- */
void rn_relu_forward(int64_t count, const float *x, float *y);
/* dx = dy * (y > 0); uses the OUTPUT y (so in-place forward is fine). dx may alias dy. */
void rn_relu_backward(int64_t count, const float *y, const float *dy, float *dx, int acc);

/* ---------------- max pool (k x k, stride s, pad p; pads never win) ---------------- */
typedef struct {
  int c, h, w, k, stride, pad, oh, ow;
} rn_pool_desc;
rn_status rn_pool_desc_init(rn_pool_desc *d, int c, int h, int w, int k, int stride, int pad, rn_err *e);
/* argmax[n][oh][ow][c] stores the flat input index (h*w*c within the sample) of the max. */
void rn_maxpool_forward(const rn_pool_desc *d, int n, const float *x, float *y, int32_t *argmax);
void rn_maxpool_backward(const rn_pool_desc *d, int n, const int32_t *argmax, const float *dy, float *dx, int acc);
/* Forward over [relu](x * sc + sh) (pre: a lazy BN+ReLU output that is never stored, computed with
 * the BN's own instructions, so the result is bitwise that of rn_maxpool_forward on it). */
void rn_maxpool_forward_pre(const rn_pool_desc *d, int n, const float *x, float *y, int32_t *argmax,
                            const rn_conv_pre *pre);
/* Backward with each output's gradient masked by y > 0 (y: this pool's output): the gradient of a
 * fused BN+ReLU's output already masked by the ReLU (an argmax input is > 0 iff its output is). */
void rn_maxpool_backward_masked(const rn_pool_desc *d, int n, const int32_t *argmax, const float *dy, const float *y,
                                float *dx, int acc);

/* ---------------- global average pool: x[n][h][w][c] -> y[n][c] ---------------- */
void rn_avgpool_forward(int n, int hw, int c, const float *x, float *y);
void rn_avgpool_backward(int n, int hw, int c, const float *dy, float *dx, int acc);

/* ---------------- fully connected: y[n][out] = x[n][in] W^T + b ---------------- */
void rn_linear_forward(int n, int in, int out, const float *x, const float *w, const float *b, float *y);
void rn_linear_backward(int n, int in, int out, const float *x, const float *w, const float *dy,
                        float *dx, int acc, float *dw, float *db);

/* ---------------- residual add: y = a + scale * b [then ReLU] ---------------- */
/* scale is 1 normally; stochastic depth passes 0 (branch dropped: b is not read) or 1/p (kept,
 * inverted scaling). relu = 1 fuses a ReLU: y = max(0, a + scale * b), NaN propagating as in
 * rn_relu_forward. y may alias a or b. */
void rn_add_forward(int64_t count, const float *a, const float *b, float scale, int relu, float *y);
/* da (=/+= g), db (=/+= scale*g), g = dy, or with a fused ReLU (y = the forward output, non-NULL)
 * g = (y > 0 ? dy : 0): bitwise rn_relu_backward followed by the plain add backward. da or db may
 * be NULL; da (not db) may alias dy (the model writes the shortcut gradient over dy). */
void rn_add_backward(int64_t count, const float *y, const float *dy, float scale, float *da, int acc_a,
                     float *db, int acc_b);

/* ---------------- option-A shortcut: identity, stride subsampling, zero-padded channels ------- */
/* y[n][oh][ow][co] = x[n][oh*s][ow*s][co - lo] for lo <= co < lo + cin, else 0; lo = (cout-cin)/2
 * (the padding is split evenly between both ends, as the common PyTorch CIFAR ResNet does). */
typedef struct {
  int cin, cout, h, w, stride, oh, ow;
} rn_shortcut_a_desc;
rn_status rn_shortcut_a_desc_init(rn_shortcut_a_desc *d, int cin, int cout, int h, int w, int stride, rn_err *e);
void rn_shortcut_a_forward(const rn_shortcut_a_desc *d, int n, const float *x, float *y);
void rn_shortcut_a_backward(const rn_shortcut_a_desc *d, int n, const float *dy, float *dx, int acc);

/* ---------------- softmax cross-entropy ---------------- */
/* Mean over the batch of CE with label smoothing eps (target = (1-eps) one-hot + eps/classes).
 * Writes dlogits = d(mean loss)/d logits. Counts top-1 and top-5 correct predictions (either
 * pointer may be NULL). Returns the mean loss (computed in double). */
double rn_softmax_xent(int n, int classes, const float *logits, const int32_t *labels, float smoothing,
                       float *dlogits, int *top1, int *top5);

#endif
