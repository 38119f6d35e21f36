/* The one BLIS wrapper: kernel-set selection from CPUID, per-shape contexts, K splitting.
 *
 * Debian's BLIS 0.9 does not recognise recent CPUs (Zen 4/5) and silently falls back to generic C
 * kernels (~10x slower). We choose the set ourselves (BLIS_ARCH_TYPE, numeric in 0.9), read before
 * bli_init(). We link the static libblis.a so that bli_gks_lookup_id() gives the contexts of other
 * kernel sets: narrow GEMMs (N or M <= 32) run ~2.5x faster on the 6x16 AVX2 kernels (zen3) than on
 * skx's 32x12 ones. BLIS 0.9 does not partition K across threads, so weight-gradient GEMMs
 * (K = batch*H*W, small M*N) are split along K here: each thread computes a partial product on one
 * BLIS thread and the partials are summed. */
#include "rn/kernels.h"

#include <blis.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  arch_t id;
} arch_entry;

static const arch_entry k_arches[] = {
    {"skx", BLIS_ARCH_SKX},   {"haswell", BLIS_ARCH_HASWELL}, {"zen3", BLIS_ARCH_ZEN3},
    {"zen2", BLIS_ARCH_ZEN2}, {"zen", BLIS_ARCH_ZEN},         {"generic", BLIS_ARCH_GENERIC},
};

static int g_inited;
static int g_threads = 1;
static arch_t g_arch = BLIS_ARCH_GENERIC, g_narrow = BLIS_ARCH_GENERIC;
static cntx_t *g_cntx, *g_cntx_narrow;
static int g_use_narrow = 1, g_use_ksplit = 1, g_own_threads = 1;
static float *g_scratch;
static size_t g_scratch_floats;
static void ukr_setup(void);

static const char *arch_name(arch_t id) {
  for (size_t i = 0; i < sizeof k_arches / sizeof *k_arches; i++)
    if (k_arches[i].id == id) return k_arches[i].name;
  return bli_arch_string(id);
}

static int cpu_has(const char *what) {
  __builtin_cpu_init();
  if (!strcmp(what, "avx512")) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  if (!strcmp(what, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return 0;
}

/* Whether a kernel set can run on this CPU (an illegal-instruction crash otherwise). */
static int arch_runs_here(arch_t id) {
  switch (id) {
    case BLIS_ARCH_SKX: return cpu_has("avx512");
    case BLIS_ARCH_HASWELL: case BLIS_ARCH_ZEN3: case BLIS_ARCH_ZEN2: case BLIS_ARCH_ZEN: return cpu_has("avx2");
    case BLIS_ARCH_GENERIC: return 1;
    default: return 0;
  }
}

rn_status rn_blas_init(const char *override, int threads, FILE *log, rn_err *e) {
  if (threads < 1) return rn_err_set(e, RN_EINVAL, "threads: %d is not a positive thread count", threads);
  if (!g_inited) {
    if (!override || !*override) override = getenv("RN_BLIS_ARCH");
    int chosen = -1;
    if (override && *override && strcmp(override, "auto")) {
      for (size_t i = 0; i < sizeof k_arches / sizeof *k_arches; i++)
        if (!strcmp(k_arches[i].name, override)) chosen = (int)k_arches[i].id;
      if (chosen < 0)
        return rn_err_set(e, RN_EINVAL,
                          "blis-arch: unknown kernel set '%s' (valid: auto, skx, haswell, zen3, zen2, zen, generic)",
                          override);
      if (!arch_runs_here((arch_t)chosen))
        return rn_err_set(e, RN_EINVAL, "blis-arch: kernel set '%s' needs instructions this CPU lacks", override);
    } else {
      chosen = cpu_has("avx512") ? BLIS_ARCH_SKX : cpu_has("avx2") ? BLIS_ARCH_ZEN3 : BLIS_ARCH_GENERIC;
    }
    char num[16];
    snprintf(num, sizeof num, "%d", chosen);
    setenv("BLIS_ARCH_TYPE", num, 1);
    bli_init();
    g_arch = (arch_t)bli_arch_query_id();
    cntx_t **c = bli_gks_lookup_id(g_arch);
    g_cntx = c ? c[BLIS_NAT] : NULL;
    g_narrow = g_arch;
    g_cntx_narrow = g_cntx;
    if (g_arch == BLIS_ARCH_SKX && cpu_has("avx2")) {
      cntx_t **z = bli_gks_lookup_id(BLIS_ARCH_ZEN3);
      if (z && z[BLIS_NAT]) {
        g_narrow = BLIS_ARCH_ZEN3;
        g_cntx_narrow = z[BLIS_NAT];
      }
    }
    g_inited = 1;
    ukr_setup();
    const char *gp = getenv("RN_GEMM_PAR");
    if (gp && *gp) g_own_threads = atoi(gp) != 0;
    if (log) {
      fprintf(log, "BLIS kernels: %s (narrow GEMMs: %s), %d thread%s\n", arch_name(g_arch), arch_name(g_narrow),
              threads, threads == 1 ? "" : "s");
      if (g_arch == BLIS_ARCH_GENERIC && (cpu_has("avx2") || cpu_has("avx512")))
        fprintf(log,
                "WARNING: BLIS is using its GENERIC C kernels on a CPU with AVX2/AVX-512: training will be ~10x slower. "
                "Choose a kernel set with --blis-arch (skx, zen3, haswell).\n");
      else if (g_arch == BLIS_ARCH_GENERIC)
        fprintf(log, "WARNING: BLIS is using its GENERIC C kernels: expect slow training.\n");
    }
  }
  rn_blas_set_threads(threads);
  return RN_OK;
}

const char *rn_blas_arch(void) { return arch_name(g_arch); }
const char *rn_blas_narrow_arch(void) { return arch_name(g_narrow); }
int rn_blas_is_generic(void) { return g_arch == BLIS_ARCH_GENERIC; }
int rn_blas_threads(void) { return g_threads; }

void rn_blas_set_threads(int threads) {
  RN_ASSERT(threads >= 1);
  g_threads = threads;
  bli_thread_set_num_threads(threads);
  omp_set_num_threads(threads);
}

void rn_blas_set_tuning(int narrow_kernels, int ksplit) {
  g_use_narrow = narrow_kernels;
  g_use_ksplit = ksplit;
}

void rn_blas_set_own_threading(int own) { g_own_threads = own != 0; }
int rn_blas_own_threading(void) { return g_own_threads; }

void rn_blas_reserve(size_t mn) {
  size_t need = mn * (size_t)(g_threads > 1 ? g_threads - 1 : 1);
  if (need <= g_scratch_floats) return;
  rn_free(g_scratch);
  g_scratch = rn_alloc(need * sizeof(float));
  g_scratch_floats = need;
}

/* The native micro-kernel (rn_ukr). BLIS 0.9's kernels take m and n and handle partial tiles
 * themselves; auxinfo carries only the prefetch hints. */
typedef void (*sgemm_ukr_fn)(dim_t m, dim_t n, dim_t k, float *alpha, float *a, float *b, float *beta, float *c,
                             inc_t rs_c, inc_t cs_c, auxinfo_t *data, cntx_t *cntx);
static sgemm_ukr_fn g_ukr;
static int g_ukr_on;

static void ukr_setup(void) {
  const char *v = getenv("RN_UKR");
  g_ukr = NULL;
  g_ukr_on = !(v && v[0] == '0');
  if (g_arch != BLIS_ARCH_SKX || !g_cntx) return;
  if (bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MR, g_cntx) != RN_UKR_MR ||
      bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NR, g_cntx) != RN_UKR_NR ||
      !bli_cntx_l3_nat_ukr_prefers_cols_dt(BLIS_FLOAT, BLIS_GEMM_UKR, g_cntx))
    return;
  g_ukr = (sgemm_ukr_fn)bli_cntx_get_l3_nat_ukr_dt(BLIS_FLOAT, BLIS_GEMM_UKR, g_cntx);
}

int rn_ukr_ok(void) { return g_ukr != NULL && g_ukr_on; }
void rn_blas_set_ukr(int on) { g_ukr_on = on != 0; }

void rn_ukr(int m, int n, int k, const float *a, const float *b, float beta, float *c, long rs_c, long cs_c,
            const float *a_next, const float *b_next) {
  RN_ASSERT(g_ukr && m >= 1 && m <= RN_UKR_MR && n >= 1 && n <= RN_UKR_NR && k >= 1);
  float one = 1.0f;
  auxinfo_t aux;
  memset(&aux, 0, sizeof aux);
  bli_auxinfo_set_next_a((void *)a_next, &aux);
  bli_auxinfo_set_next_b((void *)b_next, &aux);
  g_ukr(m, n, k, &one, (float *)a, (float *)b, &beta, c, rs_c, cs_c, &aux, g_cntx);
}

static void gemm_one(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc, cntx_t *cntx, int nt) {
  rntm_t rntm = BLIS_RNTM_INITIALIZER;
  bli_rntm_set_num_threads(nt, &rntm);
  bli_sgemm_ex(transa ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, transb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, M, N, K,
               &alpha, (float *)A, lda, 1, (float *)B, ldb, 1, &beta, C, ldc, 1, cntx, &rntm);
}

static int g_narrow_n = 32, g_narrow_m = 32;

void rn_blas_set_narrow_rule(int n_max, int m_max) { g_narrow_n = n_max, g_narrow_m = m_max; }
void rn_blas_narrow_rule(int *n_max, int *m_max) { *n_max = g_narrow_n, *m_max = g_narrow_m; }

static cntx_t *pick_cntx(int M, int N) {
  if (g_use_narrow && (N <= g_narrow_n || M <= g_narrow_m)) return g_cntx_narrow;
  return g_cntx;
}

void rn_sgemm_serial(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
  RN_ASSERT(g_inited);
  if (M <= 0 || N <= 0) return;
  gemm_one(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, pick_cntx(M, N), 1);
}

void rn_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
              int ldb, float beta, float *C, int ldc) {
  RN_ASSERT(g_inited);
  if (M <= 0 || N <= 0) return;
  cntx_t *cntx = pick_cntx(M, N);
  int T = g_threads;
  size_t mn = (size_t)M * (size_t)N;
  /* Split K when it dominates: BLIS parallelises M and N only, which are small here. */
  if (g_use_ksplit && T > 1 && K >= 4096 && (size_t)K >= 8 * (size_t)(M > N ? M : N) &&
      mn * (size_t)(T - 1) <= g_scratch_floats) {
    int kc = (K + T - 1) / T;
#pragma omp parallel num_threads(T)
    {
      int t = omp_get_thread_num();
      int k0 = t * kc, k1 = k0 + kc < K ? k0 + kc : K;
      const float *At = transa ? A + (size_t)k0 * lda : A + k0;
      const float *Bt = transb ? B + k0 : B + (size_t)k0 * ldb;
      if (t == 0) {
        gemm_one(transa, transb, M, N, k1 - k0, alpha, At, lda, Bt, ldb, beta, C, ldc, cntx, 1);
      } else {
        float *P = g_scratch + (size_t)(t - 1) * mn;
        if (k1 > k0) gemm_one(transa, transb, M, N, k1 - k0, alpha, At, lda, Bt, ldb, 0.0f, P, N, cntx, 1);
        else memset(P, 0, mn * sizeof *P);
      }
#pragma omp barrier
      /* Sum the partials into C, rows split across threads. */
#pragma omp for schedule(static)
      for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (int u = 1; u < T; u++) {
          const float *p = g_scratch + (size_t)(u - 1) * mn + (size_t)i * N;
          for (int j = 0; j < N; j++) c[j] += p[j];
        }
      }
    }
    return;
  }
  if (T == 1 || !g_own_threads) {
    gemm_one(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, cntx, T);
    return;
  }
  /* Our own split into single-threaded GEMMs: along M (rows of C, multiples of 16) when it is
   * large enough, else along N; tiny products run on the calling thread. */
  double flops = 2.0 * M * N * K;
  if (flops < 4e6) {
    gemm_one(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, cntx, 1);
    return;
  }
  int splitm = M >= 32 * T || M >= N;
  int D = splitm ? M : N;
  if (D < 2 * T) {
    gemm_one(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, cntx, 1);
    return;
  }
#pragma omp parallel num_threads(T)
  {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    int q = D / 16 >= nt ? 16 : 1; /* block quantum */
    int nb = (D + q - 1) / q;
    int b0 = (int)((int64_t)nb * t / nt), b1 = (int)((int64_t)nb * (t + 1) / nt);
    int i0 = b0 * q, i1 = b1 * q < D ? b1 * q : D;
    if (i1 > i0) {
      if (splitm) {
        const float *At = transa ? A + i0 : A + (size_t)i0 * lda;
        gemm_one(transa, transb, i1 - i0, N, K, alpha, At, lda, B, ldb, beta, C + (size_t)i0 * ldc, ldc,
                 pick_cntx(i1 - i0, N), 1);
      } else {
        const float *Bt = transb ? B + (size_t)i0 * ldb : B + i0;
        gemm_one(transa, transb, M, i1 - i0, K, alpha, A, lda, Bt, ldb, beta, C + i0, ldc, pick_cntx(M, i1 - i0),
                 1);
      }
    }
  }
}

void rn_ref_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc) {
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double s = 0;
      for (int k = 0; k < K; k++) {
        double a = transa ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
        double b = transb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
        s += a * b;
      }
      float *c = &C[(size_t)i * ldc + j];
      *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
    }
}
