/* rn_sgemm against the naive reference: all transpose cases, narrow and wide shapes, the K-split
 * path (large K, 2 threads), our own M/N split and BLIS's threading, the narrow-kernel rule at both
 * extremes, beta 0/1, leading dimensions larger than the width. */
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "testutil.h"

static void fill(float *x, size_t n, unsigned s) {
  rn_rng r = rn_rng_make(s);
  for (size_t i = 0; i < n; i++) x[i] = rn_rng_uniform(&r) * 2 - 1;
}

static void one(int ta, int tb, int M, int N, int K, float beta, int pad) {
  int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
  float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4), *R = malloc(nc * 4);
  fill(A, na, 1 + M), fill(B, nb, 2 + N), fill(C, nc, 3 + K);
  memcpy(R, C, nc * 4);
  rn_sgemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, beta, C, ldc);
  rn_ref_sgemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, beta, R, ldc);
  double err = tu_max_rel_err(C, R, nc, 1e-3);
  CHECK(err < 1e-5 * (K > 1000 ? 10 : 1), "ta=%d tb=%d M=%d N=%d K=%d beta=%g: rel err %.3g", ta, tb, M, N, K,
        beta, err);
  free(A), free(B), free(C), free(R);
}

int main(void) {
  rn_err e;
  if (rn_blas_init(NULL, 2, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  CHECK(!rn_blas_is_generic() || !__builtin_cpu_supports("avx2"), "generic kernels on an AVX2 CPU");
  rn_blas_reserve(64 * 64);
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int beta = 0; beta < 2; beta++) {
        one(ta, tb, 37, 16, 29, (float)beta, 0);  /* narrow */
        one(ta, tb, 50, 70, 33, (float)beta, 3);  /* wide, padded ld */
        one(ta, tb, 16, 27, 9000, (float)beta, 1); /* K split */
        one(ta, tb, 64, 64, 5000, (float)beta, 0); /* K split, scratch exactly reserved */
      }
  /* Our own 2-thread split (along M, along N) and BLIS's threading, all transpose cases. */
  for (int own = 1; own >= 0; own--) {
    rn_blas_set_own_threading(own);
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        one(ta, tb, 301, 40, 200, 1.0f, 2); /* split M (quantum 16, ragged end) */
        one(ta, tb, 40, 517, 150, 0.0f, 0); /* split N */
        one(ta, tb, 16, 700, 400, 1.0f, 1); /* split N, narrow M */
      }
  }
  rn_blas_set_own_threading(1);
  /* The narrow-kernel rule at its extremes. */
  rn_blas_set_narrow_rule(0, 0);
  one(0, 1, 37, 16, 29, 1.0f, 0);
  rn_blas_set_narrow_rule(1 << 30, 1 << 30);
  one(0, 1, 64, 64, 300, 1.0f, 0);
  rn_blas_set_narrow_rule(32, 32);
  for (int ks = 0; ks < 2; ks++) {
    rn_blas_set_tuning(ks, ks);
    one(1, 0, 16, 144, 20000, 1.0f, 0);
  }
  rn_blas_set_tuning(1, 1);
  /* Our own loops around the skx micro-kernel against BLIS's driver and the reference: every
   * transpose case, ragged edges in all three dimensions (panels of 32 and 12, 16x16 transposes
   * with a remainder), several K blocks (K > KC = 384), several M blocks (M > NC = 3072), several
   * N blocks (N > MC = 480), padded leading dimensions, beta 0 over NaN garbage and beta 1. */
  if (rn_blas_own_gemm()) {
    rn_blas_set_threads(1);
    rn_blas_set_narrow_rule(0, 0); /* every shape on the skx kernels, the narrow ones too */
    const int shapes[][3] = {{1, 1, 1},      {13, 31, 17},   {12, 32, 16},  {37, 70, 385}, {100, 33, 800},
                             {3100, 40, 20}, {25, 1000, 50}, {61, 47, 1200}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++)
      for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
          for (int beta = 0; beta < 2; beta++) one(ta, tb, shapes[k][0], shapes[k][1], shapes[k][2], (float)beta, 5);
    /* beta 0 must not read C: NaN in C stays out of the result */
    float A[40 * 30], B[30 * 50], C[40 * 50], R[40 * 50];
    fill(A, 40 * 30, 7), fill(B, 30 * 50, 8);
    for (int i = 0; i < 40 * 50; i++) C[i] = R[i] = __builtin_nanf("");
    rn_sgemm(0, 0, 40, 50, 30, 1.0f, A, 30, B, 50, 0.0f, C, 50);
    rn_ref_sgemm(0, 0, 40, 50, 30, 1.0f, A, 30, B, 50, 0.0f, R, 50);
    CHECK(tu_max_rel_err(C, R, 40 * 50, 1e-3) < 1e-5, "beta 0 over NaN");
    /* the same products through BLIS's driver agree to rounding */
    float C2[40 * 50];
    rn_blas_set_own_gemm(0);
    CHECK(!rn_blas_own_gemm(), "own GEMM still on after rn_blas_set_own_gemm(0)");
    rn_sgemm(0, 0, 40, 50, 30, 1.0f, A, 30, B, 50, 0.0f, C2, 50);
    CHECK(tu_max_rel_err(C, C2, 40 * 50, 1e-3) < 1e-5, "own GEMM vs BLIS driver");
    rn_blas_set_own_gemm(1);
    CHECK(rn_blas_own_gemm(), "own GEMM off after rn_blas_set_own_gemm(1)");
    rn_blas_set_narrow_rule(32, 32);
    rn_blas_set_threads(2);
  } else {
    fprintf(stderr, "test_blas: own GEMM loops not in use here (kernel set %s): only BLIS's driver tested\n",
            rn_blas_arch());
  }
  rn_blas_set_threads(1);
  one(0, 1, 20, 30, 40, 1.0f, 0);
  rn_err bad;
  CHECK(rn_blas_init("nonsense", 1, NULL, &bad) == RN_OK, "re-init after init must only set threads");
  return tu_done("test_blas");
}
