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
  rn_blas_set_threads(1);
  one(0, 1, 20, 30, 40, 1.0f, 0);
  rn_err bad;
  CHECK(rn_blas_init("nonsense", 1, NULL, &bad) == RN_OK, "re-init after init must only set threads");
  return tu_done("test_blas");
}
