/* rn_sgemm against the naive reference: all transpose cases, narrow and wide shapes, the K-split
 * path (large K, 2 threads), our own M/N split and BLIS's threading, the narrow-kernel rule at both
 * extremes, beta 0/1, leading dimensions larger than the width. rn_ukr (BLIS's micro-kernel on our
 * own packed panels): full and partial tiles, column- and row-strided C, beta 0 over NaN and 1. */
#include <math.h>
#include <stdint.h>
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

/* rn_ukr: C (m x n, element (i, j) at c[i*rs + j*cs]) = A B + beta C, A packed [k][32] and B
 * [k][12] with the rows / columns past m / n zero, against double sums; C's cells outside the
 * m x n tile (guards) untouched. */
static void ukr_one(int m, int n, int k, float beta, int colmajor) {
  const int MR = RN_UKR_MR, NR = RN_UKR_NR, ld = colmajor ? MR + 3 : NR + 5;
  float *a = rn_alloc(sizeof(float) * (size_t)k * MR), *b = rn_alloc(sizeof(float) * (size_t)k * NR); /* 64-aligned */
  float *c = malloc(sizeof(float) * (size_t)ld * (colmajor ? NR : MR)), *c0 = malloc(sizeof(float) * (size_t)ld * (colmajor ? NR : MR));
  const size_t nc = (size_t)ld * (colmajor ? NR : MR);
  fill(a, (size_t)k * MR, 11 + m), fill(b, (size_t)k * NR, 12 + n), fill(c0, nc, 13);
  for (int p = 0; p < k; p++) {
    for (int i = m; i < MR; i++) a[(size_t)p * MR + i] = 0;
    for (int j = n; j < NR; j++) b[(size_t)p * NR + j] = 0;
  }
  const long rs = colmajor ? 1 : ld, cs = colmajor ? ld : 1;
  memcpy(c, c0, nc * 4);
  if (beta == 0)
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++) c[i * rs + j * cs] = NAN; /* not read */
  rn_ukr(m, n, k, a, b, beta, c, rs, cs, a, b);
  double md = 0;
  int guards = 1;
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) {
      const size_t at = (size_t)(i * rs + j * cs);
      if (at >= nc) continue;
      if (i >= m || j >= n) {
        guards &= c[at] == c0[at];
        continue;
      }
      double r = beta ? (double)c0[at] : 0;
      for (int p = 0; p < k; p++) r += (double)a[(size_t)p * MR + i] * b[(size_t)p * NR + j];
      const double dd = fabs(c[at] - r);
      if (!(dd <= md)) md = dd;
    }
  CHECK(md < 1e-5 * k, "rn_ukr m=%d n=%d k=%d beta=%g %s: max abs err %.3g", m, n, k, beta,
        colmajor ? "column-major" : "row-major", md);
  CHECK(guards, "rn_ukr m=%d n=%d k=%d: wrote outside its m x n tile", m, n, k);
  rn_free(a), rn_free(b), free(c), free(c0);
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
  /* rn_ukr: available with the skx kernels (the CPU has AVX-512); off after rn_blas_set_ukr(0) */
  rn_blas_set_ukr(1); /* whatever RN_UKR says */
  CHECK(rn_ukr_ok() == (__builtin_cpu_supports("avx512f") && !strcmp(rn_blas_arch(), "skx")),
        "rn_ukr_ok %d with kernels %s", rn_ukr_ok(), rn_blas_arch());
  if (rn_ukr_ok()) {
    static const int mk[][3] = {{32, 12, 144}, {32, 12, 1}, {16, 12, 64}, {32, 5, 33}, {7, 3, 256}, {1, 1, 17}};
    for (size_t q = 0; q < sizeof mk / sizeof *mk; q++)
      for (int beta = 0; beta < 2; beta++)
        for (int cm = 0; cm < 2; cm++) ukr_one(mk[q][0], mk[q][1], mk[q][2], (float)beta, cm);
    rn_blas_set_ukr(0);
    CHECK(!rn_ukr_ok(), "rn_blas_set_ukr(0): still on");
    rn_blas_set_ukr(1);
  } else {
    printf("test_blas: rn_ukr unavailable (kernels %s): not run\n", rn_blas_arch());
  }
  rn_blas_set_threads(1);
  one(0, 1, 20, 30, 40, 1.0f, 0);
  rn_err bad;
  CHECK(rn_blas_init("nonsense", 1, NULL, &bad) == RN_OK, "re-init after init must only set threads");
  return tu_done("test_blas");
}
