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
static void own_gemm_setup(void);
static size_t g_scratch_floats;

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
    own_gemm_setup();
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

#ifdef __AVX512F__
#include <immintrin.h>
/* Our own single-threaded GEMM loops around BLIS's skx micro-kernel (32x12).
 *
 * BLIS 0.9's packm kernel table ends at 31 rows, so its skx context packs every 32-row panel with
 * the generic bli_scal2m (one strided scal2v per column): in ResNet-50's GEMMs (7-wide layers, the
 * k x k weight gradients) packing took 20-30% of BLIS's time. Here the packing is AVX-512: straight
 * copies where the panel's 32 or 12 elements are contiguous, 16x16 register transposes where they
 * are not. The loops are BLIS's (NC, KC, MC blocks from the same context), on the transposed
 * problem C^T = B^T A^T: the kernel's 32-row panels come from B (our N) and its 12-column panels
 * from A (our M), so that C (row-major) is the column-major output the kernel prefers. Results
 * agree with BLIS's driver to rounding (the K blocks can end differently: BLIS lets the last one
 * grow to KC's maximum) and are the same bits from run to run. RN_OWN_GEMM=0 (or
 * rn_blas_set_own_gemm(0)) calls bli_sgemm_ex instead. */
typedef void (*sgemm_ukr_fn)(dim_t m, dim_t n, dim_t k, float *alpha, float *a, float *b, float *beta, float *c,
                             inc_t rs_c, inc_t cs_c, auxinfo_t *data, cntx_t *cntx);
enum { OG_MR = 32, OG_NR = 12 };
static int g_own_gemm = -1; /* -1: not decided yet (rn_blas_init) */
static sgemm_ukr_fn g_ukr;
static int g_mc, g_kc, g_nc;
static _Thread_local float *t_pack_a, *t_pack_b;
static _Thread_local size_t t_pack_a_n, t_pack_b_n;

static float *pack_buf(float **p, size_t *have, size_t need) {
  if (need > *have) {
    free(*p);
    *p = aligned_alloc(64, (need * sizeof(float) + 63) & ~(size_t)63);
    RN_ASSERT(*p);
    *have = need;
  }
  return *p;
}

/* out[r][0..16) = in[0..16)[r] for a 16x16 block (rows ld_in apart in, ld_out apart out) */
static inline void tr16(const float *in, size_t ld_in, float *out, size_t ld_out, int rows_in) {
  __m512 r[16], t[16];
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
      t[4 * q + s] = _mm512_shuffle_f32x4(r[4 * q + s], r[4 * (q + 1) + s], 0x88);     /* lanes 0,2 | 0,2 */
      t[4 * q + 4 + s] = _mm512_shuffle_f32x4(r[4 * q + s], r[4 * (q + 1) + s], 0xdd); /* lanes 1,3 | 1,3 */
    }
  /* t[0..3]: rows 0-7 of columns 0,8 | s ; t[4..7]: columns 4,12; t[8..11] rows 8-15 columns 0,8;
   * t[12..15] rows 8-15 columns 4,12 */
  for (int s = 0; s < 4; s++) {
    _mm512_storeu_ps(out + (size_t)s * ld_out, _mm512_shuffle_f32x4(t[s], t[8 + s], 0x88));
    _mm512_storeu_ps(out + (size_t)(8 + s) * ld_out, _mm512_shuffle_f32x4(t[s], t[8 + s], 0xdd));
    _mm512_storeu_ps(out + (size_t)(4 + s) * ld_out, _mm512_shuffle_f32x4(t[4 + s], t[12 + s], 0x88));
    _mm512_storeu_ps(out + (size_t)(12 + s) * ld_out, _mm512_shuffle_f32x4(t[4 + s], t[12 + s], 0xdd));
  }
}

/* Packs the kc x w block of a matrix whose element (p, j) is at src[p*sp + j*sj] (sp or sj is 1)
 * into panels of R columns: dst[panel][p][R], the columns past w zero. R is 32 or 12. */
static void pack_panels(const float *src, size_t sp, size_t sj, int kc, int w, int R, float *dst) {
  for (int j0 = 0; j0 < w; j0 += R) {
    const int r = w - j0 < R ? w - j0 : R;
    float *d = dst + (size_t)j0 * kc;
    const float *s = src + (size_t)j0 * sj;
    if (sj == 1) { /* rows contiguous: masked copies */
      const __mmask16 m0 = r >= 16 ? 0xffff : (__mmask16)((1u << r) - 1);
      const __mmask16 m1 = r <= 16 ? 0 : r >= 32 ? 0xffff : (__mmask16)((1u << (r - 16)) - 1);
      if (R == 32)
        for (int p = 0; p < kc; p++) {
          _mm512_store_ps(d + (size_t)p * 32, _mm512_maskz_loadu_ps(m0, s + (size_t)p * sp));
          _mm512_store_ps(d + (size_t)p * 32 + 16, _mm512_maskz_loadu_ps(m1, s + (size_t)p * sp + 16));
        }
      else
        for (int p = 0; p < kc; p++)
          _mm512_mask_storeu_ps(d + (size_t)p * 12, 0x0fff, _mm512_maskz_loadu_ps(m0, s + (size_t)p * sp));
      continue;
    }
    /* columns contiguous (sp == 1): 16x16 transposes; column j is at s + j*sj */
    int p = 0;
    float tmp[16 * 16];
    for (; p + 16 <= kc; p += 16)
      for (int c0 = 0; c0 < R; c0 += 16) {
        const int rows = r - c0 < 16 ? (r - c0 > 0 ? r - c0 : 0) : 16;
        if (R - c0 >= 16) {
          tr16(s + (size_t)c0 * sj + p, sj, d + (size_t)p * R + c0, (size_t)R, rows);
        } else { /* the 12-wide panel: transpose into tmp, keep 12 of 16 */
          tr16(s + (size_t)c0 * sj + p, sj, tmp, 16, rows);
          for (int i = 0; i < 16; i++)
            _mm512_mask_storeu_ps(d + (size_t)(p + i) * R + c0, 0x0fff, _mm512_loadu_ps(tmp + i * 16));
        }
      }
    for (; p < kc; p++)
      for (int j = 0; j < R; j++) d[(size_t)p * R + j] = j < r ? s[(size_t)j * sj + p] : 0.0f;
  }
}

static void own_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
  /* the transposed problem: kernel rows = our N (from B), kernel columns = our M (from A) */
  const size_t b_sp = transb ? 1 : (size_t)ldb, b_sj = transb ? (size_t)ldb : 1; /* B(p, j) */
  const size_t a_sp = transa ? (size_t)lda : 1, a_si = transa ? 1 : (size_t)lda; /* A(i, p) */
  const int NC = g_nc, KC = g_kc, MC = g_mc;
  float *pb = pack_buf(&t_pack_b, &t_pack_b_n, (size_t)KC * ((NC < M ? NC : M) + OG_NR));
  float *pa = pack_buf(&t_pack_a, &t_pack_a_n, (size_t)KC * ((MC < N ? MC : N) + OG_MR));
  auxinfo_t aux;
  memset(&aux, 0, sizeof aux);
  if (K <= 0) { /* C = beta C */
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
    return;
  }
  for (int jc = 0; jc < M; jc += NC) {
    const int nc = M - jc < NC ? M - jc : NC;
    for (int pc = 0; pc < K; pc += KC) {
      const int kc = K - pc < KC ? K - pc : KC;
      float be = pc == 0 ? beta : 1.0f;
      pack_panels(A + (size_t)jc * a_si + (size_t)pc * a_sp, a_sp, a_si, kc, nc, OG_NR, pb);
      for (int ic = 0; ic < N; ic += MC) {
        const int mc = N - ic < MC ? N - ic : MC;
        pack_panels(B + (size_t)pc * b_sp + (size_t)ic * b_sj, b_sp, b_sj, kc, mc, OG_MR, pa);
        for (int jr = 0; jr < nc; jr += OG_NR) {
          const int n = nc - jr < OG_NR ? nc - jr : OG_NR;
          for (int ir = 0; ir < mc; ir += OG_MR) {
            const int m = mc - ir < OG_MR ? mc - ir : OG_MR;
            float *ap = pa + (size_t)ir * kc, *bp = pb + (size_t)jr * kc;
            aux.a_next = ir + OG_MR < mc ? ap + (size_t)OG_MR * kc : pa;
            aux.b_next = ir + OG_MR < mc ? bp : bp + (size_t)OG_NR * kc;
            g_ukr(m, n, kc, &alpha, ap, bp, &be, C + (size_t)(jc + jr) * ldc + ic + ir, 1, ldc, &aux, g_cntx);
          }
        }
      }
    }
  }
}

static void own_gemm_setup(void) {
  const char *v = getenv("RN_OWN_GEMM");
  int want = !(v && v[0] == '0');
  g_own_gemm = 0;
  if (!want || g_arch != BLIS_ARCH_SKX || !g_cntx) return;
  if (bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MR, g_cntx) != OG_MR ||
      bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NR, g_cntx) != OG_NR ||
      !bli_cntx_l3_nat_ukr_prefers_cols_dt(BLIS_FLOAT, BLIS_GEMM_UKR, g_cntx))
    return;
  g_ukr = (sgemm_ukr_fn)bli_cntx_get_l3_nat_ukr_dt(BLIS_FLOAT, BLIS_GEMM_UKR, g_cntx);
  g_mc = (int)bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MC, g_cntx);
  g_kc = (int)bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_KC, g_cntx);
  g_nc = (int)bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NC, g_cntx);
  g_own_gemm = g_ukr && g_mc % OG_MR == 0 && g_nc % OG_NR == 0 && g_kc > 0;
}
#else
static int g_own_gemm = 0;
static void own_gemm_setup(void) {}
#endif

void rn_blas_set_own_gemm(int on) {
  if (on) own_gemm_setup();
  else g_own_gemm = 0;
}
int rn_blas_own_gemm(void) { return g_own_gemm > 0; }

static void gemm_one(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc, cntx_t *cntx, int nt) {
#ifdef __AVX512F__
  if (g_own_gemm > 0 && nt == 1 && cntx == g_cntx) {
    own_sgemm(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
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
