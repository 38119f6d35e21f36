/* rn-bench-gemm: GEMM-shape benchmark (a program, not a test): GFLOP/s of the GEMMs that ResNet-20/50
 * convolutions issue, on one thread with the main kernel set (skx) and with the narrow set (zen3),
 * plus the 2-thread rn_sgemm of whole-batch shapes with our own split and with BLIS's threading.
 * Times are the MINIMUM over repetitions (robust to other processes stealing the CPU).
 * Usage: rn-bench-gemm [M,N,K,ta,tb ...]   (default: the built-in ResNet shape list) */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"

typedef struct {
  const char *what;
  int M, N, K, ta, tb;
} shape;

/* Per-thread chunk GEMMs of the k x k path (R rows per chunk), and the 1x1 whole-batch ones
 * (halved: one thread's share). fwd: col[R,K]*W^T; dW: dy^T[cout,R]*col[R,K]; dx: dy[R,cout]*W. */
static const shape k_shapes[] = {
    {"r20 conv1 fwd 3->16", 19424, 16, 27, 0, 1},     {"r20 conv1 dW", 16, 27, 19424, 1, 0},
    {"r20 16@32 fwd", 3648, 16, 144, 0, 1},           {"r20 16@32 dW", 16, 144, 3648, 1, 0},
    {"r20 16@32 dx", 3648, 144, 16, 0, 0},            {"r20 32@16 fwd", 1824, 32, 288, 0, 1},
    {"r20 32@16 dW", 32, 288, 1824, 1, 0},            {"r20 32@16 dx", 1824, 288, 32, 0, 0},
    {"r20 64@8 fwd", 912, 64, 576, 0, 1},             {"r20 64@8 dW", 64, 576, 912, 1, 0},
    {"r20 64@8 dx", 912, 576, 64, 0, 0},              {"r50 conv1 fwd 7x7", 3568, 64, 147, 0, 1},
    {"r50 conv1 dW", 64, 147, 3568, 1, 0},            {"r50 3x3 64@56 fwd", 912, 64, 576, 0, 1},
    {"r50 3x3 64@56 dW", 64, 576, 912, 1, 0},         {"r50 3x3 64@56 dx", 912, 576, 64, 0, 0},
    {"r50 1x1 64->256@56 fwd", 50176, 256, 64, 0, 1}, {"r50 1x1 256->64@56 fwd", 50176, 64, 256, 0, 1},
    {"r50 1x1 256->64 dx", 50176, 256, 64, 0, 0},     {"r50 1x1 256->64 dW", 64, 256, 50176, 1, 0},
    {"r50 3x3 128@28 fwd", 464, 128, 1152, 0, 1},     {"r50 3x3 128@28 dW", 128, 1152, 464, 1, 0},
    {"r50 3x3 128@28 dx", 464, 1152, 128, 0, 0},      {"r50 3x3 256@14 fwd", 256, 256, 2304, 0, 1},
    {"r50 3x3 256@14 dW", 256, 2304, 256, 1, 0},      {"r50 3x3 256@14 dx", 256, 2304, 256, 0, 0},
    {"r50 3x3 512@7 fwd", 256, 512, 4608, 0, 1},      {"r50 3x3 512@7 dW", 512, 4608, 256, 1, 0},
    {"r50 3x3 512@7 dx", 256, 4608, 512, 0, 0},       {"r50 1x1 512->2048@7 fwd", 784, 2048, 512, 0, 1},
    {"r50 fc fwd", 32, 1000, 2048, 0, 1},
};

static double time_gemm(const shape *s, int serial, float *A, float *B, float *C) {
  int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
  double flops = 2.0 * s->M * s->N * s->K, best = 1e30;
  int reps = flops > 4e9 ? 3 : flops > 4e8 ? 6 : 12;
  for (int r = 0; r < reps + 1; r++) {
    double t0 = rn_now();
    if (serial) rn_sgemm_serial(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 1.0f, C, s->N);
    else rn_sgemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 1.0f, C, s->N);
    double t = rn_now() - t0;
    if (r > 0 && t < best) best = t;
  }
  return flops / best * 1e-9;
}

int main(int argc, char **argv) {
  rn_err e;
  if (rn_blas_init(NULL, 2, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  rn_blas_reserve((size_t)4096 * 4096);
  int ns = (int)(sizeof k_shapes / sizeof *k_shapes);
  shape *list = (shape *)k_shapes;
  if (argc > 1) {
    ns = argc - 1;
    list = calloc((size_t)ns, sizeof *list);
    for (int i = 0; i < ns; i++) {
      list[i].what = argv[i + 1];
      if (sscanf(argv[i + 1], "%d,%d,%d,%d,%d", &list[i].M, &list[i].N, &list[i].K, &list[i].ta, &list[i].tb) != 5) {
        fprintf(stderr, "shape '%s': expected M,N,K,ta,tb\n", argv[i + 1]);
        return 2;
      }
    }
  }
  printf("%-26s %6s %6s %6s %2s %2s | 1 thread GF/s: %6s %6s | 2 threads GF/s: %6s %6s\n", "shape", "M", "N", "K", "ta",
         "tb", "skx", "zen3", "own", "blis");
  for (int i = 0; i < ns; i++) {
    const shape *s = &list[i];
    size_t na = (size_t)s->M * s->K + 64, nb = (size_t)s->K * s->N + 64, nc = (size_t)s->M * s->N;
    float *A = rn_alloc(na * 4), *B = rn_alloc(nb * 4), *C = rn_alloc(nc * 4);
    rn_rng r = rn_rng_make((uint64_t)i);
    for (size_t j = 0; j < na; j++) A[j] = rn_rng_uniform(&r) - 0.5f;
    for (size_t j = 0; j < nb; j++) B[j] = rn_rng_uniform(&r) - 0.5f;
    rn_blas_set_narrow_rule(0, 0);
    double skx = time_gemm(s, 1, A, B, C);
    rn_blas_set_narrow_rule(INT_MAX, INT_MAX);
    double zen = time_gemm(s, 1, A, B, C);
    rn_blas_set_narrow_rule(32, 32);
    rn_blas_set_own_threading(1);
    double own = time_gemm(s, 0, A, B, C);
    rn_blas_set_own_threading(0);
    double blis = time_gemm(s, 0, A, B, C);
    rn_blas_set_own_threading(1);
    printf("%-26s %6d %6d %6d %2d %2d |                %6.1f %6.1f |                 %6.1f %6.1f\n", s->what, s->M,
           s->N, s->K, s->ta, s->tb, skx, zen, own, blis);
    fflush(stdout);
    rn_free(A), rn_free(B), rn_free(C);
  }
  return 0;
}
