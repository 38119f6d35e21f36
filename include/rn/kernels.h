/* kernels: the one BLIS wrapper (kernel-set selection, per-shape contexts, K-split), plus
 * vectorised helpers shared by layers. */
#ifndef RN_KERNELS_H
#define RN_KERNELS_H
#include "rn/core.h"

/* Picks the BLIS kernel set for this CPU (from CPUID) unless `override` names one
 * ("auto"/NULL, "skx", "haswell", "zen3", "zen2", "zen", "generic"; the environment variable
 * RN_BLIS_ARCH is used when override is NULL). Must run before any other BLIS call (it sets
 * BLIS_ARCH_TYPE, then bli_init()). Sets the BLIS thread count. Prints one line to `log` (may be
 * NULL) naming the sets in use, and a loud warning if the generic C kernels end up in use.
 * Safe to call again (later calls only change the thread count). */
rn_status rn_blas_init(const char *override, int threads, FILE *log, rn_err *e);
const char *rn_blas_arch(void);        /* main kernel set in use, e.g. "skx" */
const char *rn_blas_narrow_arch(void); /* kernel set used for narrow GEMMs (N <= 32), e.g. "zen3" */
int rn_blas_is_generic(void);
int rn_blas_threads(void);
void rn_blas_set_threads(int threads);
/* Tuning switches (for the benchmark's A/B figures): per-shape narrow kernels, K splitting. */
void rn_blas_set_tuning(int narrow_kernels, int ksplit);

/* Row-major single-precision GEMM: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
 * op(A) = A (lda >= K) or A^T when transa (A stored [K][M], lda >= M); likewise B.
 * Chooses the kernel set per shape and splits K across threads when K is large and M*N small
 * (weight gradients), summing the partial products. Uses the calling thread plus the BLIS
 * thread pool; must not be called from inside an OpenMP parallel region unless `threads`==1
 * via rn_sgemm_serial. */
void rn_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);
/* The same GEMM on one thread (for use inside a parallel region). */
void rn_sgemm_serial(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                     int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* Reserves the K-split scratch for products up to M*N floats (call when planning a model, so no
 * allocation happens inside a step). */
void rn_blas_reserve(size_t mn);

/* Who threads rn_sgemm (benchmarks' A/B): 1 (default) = our own OpenMP split of M, N or K into
 * single-threaded BLIS calls (one fork/join per GEMM, libgomp's barriers, which sleep after a
 * short spin); 0 = BLIS's own OpenMP threading (its barriers spin without yielding: a descheduled
 * thread stalls the others). The environment variable RN_GEMM_PAR=0|1 sets the default. */
void rn_blas_set_own_threading(int own);
int rn_blas_own_threading(void);
/* The per-shape kernel rule: the narrow set (rn_blas_narrow_arch) is used when N <= n_max or
 * M <= m_max (and narrow kernels are on). Defaults come from tests/test_perf_gemm measurements
 * (docs/PERF.md). Benchmarks may change them (0, 0 = main set only; INT_MAX = narrow set only). */
void rn_blas_set_narrow_rule(int n_max, int m_max);
void rn_blas_narrow_rule(int *n_max, int *m_max);
/* BLIS's native single-precision micro-kernel, for loops that pack their own panels (Winograd's
 * GEMMs: the transformed kernels packed once per call instead of once per GEMM). Available only
 * on the skx kernel set (RN_UKR_MR x RN_UKR_NR = 32 x 12, column-preferring); 0 otherwise, and
 * after rn_blas_set_ukr(0) (the benchmarks' A/B; the environment variable RN_UKR=0 sets it at
 * rn_blas_init). rn_ukr: C (m x n, m <= 32, n <= 12; element (i, j) at c[i*rs_c + j*cs_c]) =
 * A B + beta C (beta 0: C is not read), A packed [k][32] (rows past m zero), B packed [k][12]
 * (columns past n zero), both 64-byte aligned; a_next / b_next: the panels of the next call
 * (prefetch hints only). */
#define RN_UKR_MR 32
#define RN_UKR_NR 12
int rn_ukr_ok(void);
void rn_blas_set_ukr(int on);
void rn_ukr(int m, int n, int k, const float *a, const float *b, float beta, float *c, long rs_c, long cs_c,
            const float *a_next, const float *b_next);
/* The single-precision FMA peak of `threads` threads right now (GFLOP/s): the best of 12
 * repetitions of ~50 ms (~0.7 s) of register-only FMA chains (AVX-512, else AVX2; 0 without
 * either). For benchmarks' "% of peak". */
double rn_fma_peak_gflops(int threads);
/* Naive references for tests: plain triple loop in double accumulation. */
void rn_ref_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif
