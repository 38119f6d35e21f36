/* Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution (src/kernels/conv_wino.c) for 3x3, stride 1,
 * pad 1 convolutions (ResNet-50's 3x3 stride-1 convolutions of 64..512 channels, all of CIFAR's),
 * NHWC, AVX-512.
 *
 * The output is cut into m x m tiles (m = 2 or 4), each read from an (m+2) x (m+2) input tile.
 * With the transforms V = B^T d B (input tile), U = G g G^T (3x3 kernel), and Y = A^T M A (output
 * tile), the P = (m+2)^2 transformed positions xi are independent products M_xi = V_xi * U_xi over
 * the channels: P GEMMs per chunk of tiles (BLIS; up to 64 channels, the small-channel path:
 * per-thread groups of tiles and register-blocked products of our own). F(2,3): 16 multiplies
 * per 4 outputs where the direct convolution does 36 (2.25x fewer); F(4,3): 36 per 16 outputs
 * (4x fewer). The same
 * transforms give the other two passes:
 * - dx: the forward on dy with the kernel rotated by 180 degrees and U read untransposed (F(2,3):
 *   the forward's U at permuted positions, since G applied to a flipped kernel is G with its rows
 *   0 and 3 swapped; F(4,3): the rotated kernel transformed);
 * - dW: dU_xi = sum over tiles of (A dY A^T)_xi^T * V_xi (a GEMM whose K is the tile count), then
 *   dW = G^T dU G.
 * Threads split the tiles of a chunk for the transforms and the P positions for the GEMMs (each
 * thread owns its positions' dU across all chunks: no partial sums to add); on the small path
 * each thread takes its own tiles and sums its own dU, added at the end. Results differ from
 * the direct kernel by rounding only (~1e-6 relative for F(2,3), ~1e-5 for F(4,3)). */
#ifndef RN_WINO_H
#define RN_WINO_H
#include <stddef.h>
#include "rn/layers.h"

/* The shape qualifies: 3x3, stride 1, pad 1, cin and cout multiples of 16 and >= the minimum
 * channel count, and the CPU has AVX-512. The minimum is by measurement (conv_wino.c): with the
 * small-channel path 16 on images of at most 32x32 and 64 on larger ones; without it 128, or 64
 * on images of at most 16x16. RN_CONV_WINO_MINC=C or rn_conv_set_wino_min_channels(C) forces one
 * minimum C for every shape (0: the rule; tests use 16). */
int rn_conv_wino_shape(const rn_conv_desc *d);
/* The convolutions use it: the shape qualifies and it is on (default; the environment variable
 * RN_CONV_WINO=0|1 or rn_conv_set_wino sets it before models are planned). */
int rn_conv_wino_ok(const rn_conv_desc *d);
void rn_conv_set_wino(int on);
void rn_conv_set_wino_min_channels(int c);
/* Output tile size: 2 (F(2x2,3x3), 16 positions) or 4 (F(4x4,3x3), 36 positions from 6x6 input
 * tiles: 36 multiplies per 16 outputs). Automatic (0, default): 4 where the 4-wide tiles span
 * at most 8/7 of the output width (multiples of 4, and 7, 11, 14, ...) except 64 channels on
 * images larger than 32x32 (F(2,3): rounding, conv_wino.c), else 2; the environment variable
 * RN_WINO_M=2|4 or rn_conv_set_wino_tile forces one (set before planning workspaces). */
void rn_conv_set_wino_tile(int m);
int rn_conv_wino_tile(const rn_conv_desc *d);
/* Tiles per chunk (the V and M buffers hold 16 x tiles x channels each); 0 = automatic (about
 * RN_WINO_CHUNK_MB, default 8 MB, per buffer). Set before planning workspaces. */
void rn_conv_set_wino_chunk(int tiles);
/* The small-channel path (cin and cout <= 64: per-thread tile groups and own register-blocked
 * products instead of chunks and BLIS); on by default, RN_WINO_SMALL=0 or rn_conv_set_wino_small(0)
 * turns it off (A/B, tests). Set before planning workspaces. */
void rn_conv_set_wino_small(int on);
/* The chunked path's products: positions claimed one at a time by the threads; the small path's
 * forward and dx: each thread's share of the groups of 48 tiles, and the others' from their end
 * when its own are done (default; the same bits as static shares) or static shares (RN_WINO_DYN=0
 * or rn_conv_set_wino_dynamic(0), A/B). */
void rn_conv_set_wino_dynamic(int on);
/* Prefetch ahead of the transforms along the tile rows: the inputs (x, dy), the outputs (for
 * writing) and dx's BN-sum inputs, two tiles ahead (on by default; RN_WINO_PFX=0 or
 * rn_conv_set_wino_pfx(0): off, A/B; the same bits). */
void rn_conv_set_wino_pfx(int on);
/* F(4,3)'s input transforms (inputs of at most 64 channels) carry the two columns a
 * tile shares with the next one along its row instead of transforming them again (on by default;
 * RN_WINO_CARRY=0 or rn_conv_set_wino_carry(0): off, A/B; the same bits). */
void rn_conv_set_wino_carry(int on);
/* The chunked path's products run on BLIS's micro-kernel with the transformed kernels packed once
 * per call (rn_ukr, kernels.h) where it is available and on (RN_UKR=0 or rn_blas_set_ukr(0): on
 * BLIS's driver, A/B); forward and dx give the driver's bits (the same kernel, K whole), dW differs
 * by rounding (K blocks of 256 tiles). rn_conv_wino_ukr_products: how many per-position products
 * ran on rn_ukr so far (tests). */
long rn_conv_wino_ukr_products(void);
size_t rn_conv_wino_workspace(const rn_conv_desc *d, int n, int threads); /* floats */
void rn_conv_wino_forward(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                          int threads);
/* dw += ..., dx = (or += with acc) ...; either may be NULL. */
void rn_conv_wino_backward(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                           float *dx, int acc, float *dw, float *ws, int threads);
/* The forward with the direct kernel's options (rn_conv_direct_forward_pre): stats (NULL: none)
 * the next BN's per-image channel sums and sums of squares of the stored outputs, pre (NULL:
 * none) x is a lazy BN's input, applied in the input transform (with the BN's instructions, so the
 * bits of its output; zeros in the padding). */
void rn_conv_wino_forward_ep(const rn_conv_desc *d, int n, const float *x, const float *w, float *y, float *ws,
                             int threads, double *stats, const rn_conv_pre *pre);
/* The backward with the BN backward sums in dx's output transform (rn_bn_sums; bn NULL: none; needs
 * dx): per image, in the layout of rn_conv_backward_bn. With bn->pre, x is that lazy BN's input
 * (applied in dW's input transform, and the mask is taken from it). The partial sums of each
 * thread's tiles are added in thread order: deterministic for a given thread count. */
/* The layer API (src/layers/conv.c) uses the prologue and epilogues above: a lazy BN is planned
 * before a Winograd convolution (rn_conv_pre_ok, where the direct kernel could take all its passes
 * too, whatever its width rules: rn_conv_wino_pre_any),
 * rn_conv_forward_stats fills the statistics and rn_conv_backward_bn the BN sums. Off (0; the
 * environment variable RN_WINO_BN=0, or rn_conv_set_wino_bn): as before them, the BN before a
 * Winograd convolution is stored and makes its own passes (rn-bench --ab wino-bn; a lazy BN
 * planned while it was on is still applied). */
void rn_conv_set_wino_bn(int on);
int rn_conv_wino_bn(void);
void rn_conv_wino_backward_bn(const rn_conv_desc *d, int n, const float *x, const float *w, const float *dy,
                              float *dx, int acc, float *dw, float *ws, int threads, const rn_bn_sums *bn);
#endif
