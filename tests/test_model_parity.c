/* PyTorch parity, C half: builds a model, initialises it from a seed (BN affine params perturbed
 * so that they matter), runs one training forward + loss + backward and one eval forward, and
 * writes an HDF5 exchange file for scripts/torch_parity.py:
 *   /param/<state_dict key>   every parameter and BN buffer before the step (conv weights OIHW)
 *   /input                    [n][c][h][w] float32 (NCHW for torch)
 *   /labels                   [n] int32
 *   /out/logits_train [n][classes], /out/loss [1], /out/logits_eval [n][classes]
 *   /grad/<key>               every trainable parameter's gradient (conv weights OIHW)
 *   /after/<key>              BN running_mean / running_var after the training forward
 *   attributes on /: arch (string), num_classes, in_channels, in_h, in_w, batch
 * usage: test_model_parity ARCH HW BATCH CLASSES IN_CHANNELS OUT.h5 */
#include <hdf5.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/model.h"
#include "testutil.h"

static int fail(const char *what) {
  fprintf(stderr, "test_model_parity: HDF5 error: %s\n", what);
  exit(1);
}

static void write_ds(hid_t g, const char *name, hid_t type, int rank, const hsize_t *dims, const void *data) {
  hid_t sp = H5Screate_simple(rank, dims, NULL);
  if (sp < 0) fail(name);
  hid_t ds = H5Dcreate2(g, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (ds < 0) fail(name);
  if (H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) fail(name);
  H5Dclose(ds);
  H5Sclose(sp);
}

static void attr_int(hid_t f, const char *name, int v) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, name, H5T_NATIVE_INT, sp, H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0 || H5Awrite(a, H5T_NATIVE_INT, &v) < 0) fail(name);
  H5Aclose(a);
  H5Sclose(sp);
}

/* Writes a parameter-shaped array (from src at p->off), converting OHWI -> OIHW for conv weights. */
static void write_param(hid_t g, const rn_param *p, const float *src, float *tmp) {
  hsize_t dims[4];
  for (int i = 0; i < p->ndim; i++) dims[i] = (hsize_t)p->dims[i];
  const float *v = src + p->off;
  if (p->ohwi) {
    int O = p->dims[0], I = p->dims[1], H = p->dims[2], W = p->dims[3];
    for (int o = 0; o < O; o++)
      for (int i = 0; i < I; i++)
        for (int y = 0; y < H; y++)
          for (int x = 0; x < W; x++)
            tmp[(((size_t)o * I + i) * H + y) * W + x] = v[(((size_t)o * H + y) * W + x) * I + i];
    v = tmp;
  }
  write_ds(g, p->name, H5T_NATIVE_FLOAT, p->ndim, dims, v);
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s ARCH HW BATCH CLASSES IN_CHANNELS OUT.h5\n", argv[0]);
    return 2;
  }
  rn_err e = {0};
  if (rn_blas_init(NULL, 2, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  rn_model_config c;
  rn_model m;
  rn_model_config_default(&c);
  if (rn_model_config_arch(&c, argv[1], &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  int hw = atoi(argv[2]), n = atoi(argv[3]);
  c.in_h = c.in_w = hw;
  c.num_classes = atoi(argv[4]);
  c.in_channels = atoi(argv[5]);
  if (rn_model_build(&m, &c, n, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  rn_model_init(&m, 2024);
  rn_rng r = rn_rng_make(rn_key(2024, 77, 0, 0));
  for (int i = 0; i < m.nparams; i++) { /* BN gamma/beta away from 1/0 so that their use is checked */
    rn_param *p = &m.params[i];
    if (!p->trainable || p->ohwi || !strncmp(p->name, "fc.", 3)) continue;
    int is_w = strstr(p->name, ".weight") != NULL;
    for (size_t j = 0; j < p->count; j++)
      m.param[p->off + j] = is_w ? 1.0f + 0.2f * rn_rng_normal(&r) : 0.1f * rn_rng_normal(&r);
  }
  int C = c.in_channels;
  size_t nin = (size_t)n * hw * hw * C;
  float *x = rn_model_input(&m), *xt = malloc(nin * sizeof(float));
  for (size_t i = 0; i < nin; i++) x[i] = rn_rng_normal(&r);
  for (int b = 0; b < n; b++)
    for (int ch = 0; ch < C; ch++)
      for (int y = 0; y < hw; y++)
        for (int xx = 0; xx < hw; xx++)
          xt[(((size_t)b * C + ch) * hw + y) * hw + xx] = x[(((size_t)b * hw + y) * hw + xx) * C + ch];
  int32_t *labels = malloc((size_t)n * sizeof(int32_t));
  for (int i = 0; i < n; i++) labels[i] = (int32_t)rn_rng_below(&r, (uint64_t)c.num_classes);

  hid_t f = H5Fcreate(argv[6], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) fail(argv[6]);
  hid_t gp = H5Gcreate2(f, "param", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t gg = H5Gcreate2(f, "grad", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t ga = H5Gcreate2(f, "after", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t go = H5Gcreate2(f, "out", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (gp < 0 || gg < 0 || ga < 0 || go < 0) fail("groups");
  size_t maxc = 0;
  for (int i = 0; i < m.nparams; i++) maxc = m.params[i].count > maxc ? m.params[i].count : maxc;
  float *tmp = malloc(maxc * sizeof(float));
  for (int i = 0; i < m.nparams; i++) write_param(gp, &m.params[i], m.param, tmp);
  hsize_t d4[4] = {(hsize_t)n, (hsize_t)C, (hsize_t)hw, (hsize_t)hw}, d1[1] = {(hsize_t)n};
  write_ds(f, "input", H5T_NATIVE_FLOAT, 4, d4, xt);
  write_ds(f, "labels", H5T_NATIVE_INT32, 1, d1, labels);

  double t0 = rn_now();
  rn_model_zero_grad(&m);
  rn_model_forward(&m, n, 1);
  double loss = rn_model_loss(&m, n, labels, 0.0f, NULL, NULL);
  rn_model_backward(&m, n, NULL, NULL);
  double t1 = rn_now();
  hsize_t dl[2] = {(hsize_t)n, (hsize_t)c.num_classes}, one[1] = {1};
  write_ds(go, "logits_train", H5T_NATIVE_FLOAT, 2, dl, rn_model_logits(&m));
  write_ds(go, "loss", H5T_NATIVE_DOUBLE, 1, one, &loss);
  for (int i = 0; i < m.nparams; i++) {
    if (m.params[i].trainable) write_param(gg, &m.params[i], m.grad, tmp);
    else write_param(ga, &m.params[i], m.param, tmp);
  }
  rn_model_forward(&m, n, 0);
  write_ds(go, "logits_eval", H5T_NATIVE_FLOAT, 2, dl, rn_model_logits(&m));

  hid_t sp = H5Screate(H5S_SCALAR), st = H5Tcopy(H5T_C_S1);
  H5Tset_size(st, strlen(c.arch) + 1);
  hid_t a = H5Acreate2(f, "arch", st, sp, H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0 || H5Awrite(a, st, c.arch) < 0) fail("arch");
  H5Aclose(a);
  H5Tclose(st);
  H5Sclose(sp);
  attr_int(f, "num_classes", c.num_classes);
  attr_int(f, "in_channels", C);
  attr_int(f, "in_h", hw);
  attr_int(f, "in_w", hw);
  attr_int(f, "batch", n);
  H5Gclose(gp), H5Gclose(gg), H5Gclose(ga), H5Gclose(go);
  if (H5Fclose(f) < 0) fail("close");
  printf("%s %dx%dx%d batch %d: loss %.6f, train step %.3f s, %zu params -> %s\n", c.arch, C, hw, hw, n, loss,
         t1 - t0, rn_model_param_count(&m), argv[6]);
  CHECK(loss > 0, "loss %g", loss);
  free(tmp), free(xt), free(labels);
  rn_model_free(&m);
  return tu_done("test_model_parity");
}
