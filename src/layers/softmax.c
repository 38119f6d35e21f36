/* Softmax cross-entropy with label smoothing (PyTorch CrossEntropyLoss(label_smoothing=eps)):
 * target t = (1-eps) onehot(label) + eps/C; loss_i = logsumexp(z_i) - sum_j t_j z_ij;
 * returns the mean over the batch; dlogits = (softmax(z) - t) / n. Computed in double per row. */
#include <math.h>

#include "rn/kernels.h"
#include "rn/layers.h"

double rn_softmax_xent(int n, int classes, const float *logits, const int32_t *labels, float smoothing,
                       float *dlogits, int *top1, int *top5) {
  RN_ASSERT(n >= 0 && classes >= 1);
  double total = 0;
  int c1 = 0, c5 = 0;
  const double eps = smoothing, off = eps / classes, on = 1.0 - eps + off;
  int T = rn_blas_threads();
  if ((int64_t)n * classes < 32768) T = 1;
#pragma omp parallel for num_threads(T) schedule(static) reduction(+ : total, c1, c5)
  for (int i = 0; i < n; i++) {
    const float *z = logits + (size_t)i * classes;
    int lab = labels[i];
    RN_ASSERT(lab >= 0 && lab < classes);
    double mx = z[0];
    for (int j = 1; j < classes; j++)
      if (z[j] > mx) mx = z[j];
    double se = 0, sz = 0;
    for (int j = 0; j < classes; j++) se += exp((double)z[j] - mx), sz += z[j];
    double lse = mx + log(se);
    total += lse - (on - off) * z[lab] - off * sz;
    if (dlogits) {
      float *g = dlogits + (size_t)i * classes;
      double inv = 1.0 / se, invn = 1.0 / n;
      for (int j = 0; j < classes; j++) g[j] = (float)((exp((double)z[j] - mx) * inv - off) * invn);
      g[lab] = (float)((exp((double)z[lab] - mx) * inv - on) * invn);
    }
    /* rank of the label: classes scoring higher, ties broken towards the lower index */
    int rank = 0;
    float zl = z[lab];
    for (int j = 0; j < classes; j++) rank += z[j] > zl || (z[j] == zl && j < lab);
    c1 += rank < 1;
    c5 += rank < 5;
  }
  if (top1) *top1 = c1;
  if (top5) *top5 = c5;
  return n ? total / n : 0.0;
}
