/* Fully connected layer: y[n][out] = x[n][in] W^T + b, W = [out][in] (PyTorch layout). */
#include "rn/kernels.h"
#include "rn/layers.h"

void rn_linear_forward(int n, int in, int out, const float *x, const float *w, const float *b, float *y) {
  if (n <= 0) return;
  rn_sgemm(0, 1, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
  if (b)
    for (int i = 0; i < n; i++) {
      float *yr = y + (size_t)i * out;
      for (int j = 0; j < out; j++) yr[j] += b[j];
    }
}

void rn_linear_backward(int n, int in, int out, const float *x, const float *w, const float *dy, float *dx,
                        int acc, float *dw, float *db) {
  if (n <= 0) return;
  if (dw) rn_sgemm(1, 0, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in); /* dW[out][in] += dy^T x */
  if (db) {
    double s[out];
    for (int j = 0; j < out; j++) s[j] = 0;
    for (int i = 0; i < n; i++)
      for (int j = 0; j < out; j++) s[j] += dy[(size_t)i * out + j];
    for (int j = 0; j < out; j++) db[j] += (float)s[j];
  }
  if (dx) rn_sgemm(0, 0, n, in, out, 1.0f, dy, out, w, in, acc ? 1.0f : 0.0f, dx, in); /* dx = dy W */
}
