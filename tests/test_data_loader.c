/* Loader: prefetch == synchronous == direct reads, rank-count invariance, resume, eval coverage,
 * 10-crop, and bad input (broken shards, impossible batch splits). */
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "rn/data.h"
#include "testutil.h"

enum { N = 37, H = 6, W = 5, C = 3, CLS = 5, IMG = H * W * C };
static uint8_t g_pix[N * IMG];
static int32_t g_lab[N];

static void make_raw(const char *dir, const char *split, int64_t per_shard) {
  rn_shard_meta m;
  memset(&m, 0, sizeof m);
  m.height = H, m.width = W, m.channels = C, m.classes = CLS, m.encoding = RN_ENC_RAW;
  rn_shardw *w;
  rn_err e = {0};
  float mean[3] = {0.4f, 0.5f, 0.6f}, std[3] = {0.2f, 0.25f, 0.3f};
  CHECK(rn_shardw_open(&w, dir, split, &m, NULL, N, per_shard, &e) == RN_OK, "shardw_open: %s", e.msg);
  for (int i = 0; i < N; i++) CHECK(rn_shardw_add(w, g_pix + i * IMG, IMG, g_lab[i], &e) == RN_OK, "add: %s", e.msg);
  CHECK(rn_shardw_finish(w, mean, std, 0, 0, 0, &e) == RN_OK, "finish: %s", e.msg);
}

typedef struct {
  int64_t idx[N * 10];
  float img[N * 10][IMG];
  int32_t lab[N * 10];
  int n;
} run_t;

/* Runs one epoch (from offset) and collects the indices/images in order. */
static rn_status run_epoch(rn_dataset *d, rn_loader_config c, int epoch, int64_t offset, int max_steps, run_t *r,
                           rn_err *e) {
  rn_loader *L;
  rn_status st = rn_loader_open(&L, d, &c, e);
  if (st) return st;
  if ((st = rn_loader_start_epoch(L, epoch, offset, e))) {
    rn_loader_close(L);
    return st;
  }
  int cap = rn_loader_batch_capacity(L), nout = rn_aug_outputs(c.aug);
  float *buf = malloc(sizeof(float) * cap * IMG);
  int32_t *lab = malloc(sizeof(int32_t) * cap);
  r->n = 0;
  for (int s = 0; max_steps < 0 || s < max_steps; s++) {
    int n;
    if ((st = rn_loader_next(L, buf, lab, &n, e)) || n == 0) break;
    int cnt;
    const int64_t *ix = rn_loader_last_indices(L, &cnt);
    CHECK(cnt * nout == n, "indices %d vs images %d", cnt, n);
    for (int k = 0; k < n; k++) {
      r->idx[r->n] = ix[k / nout];
      memcpy(r->img[r->n], buf + (size_t)k * IMG, sizeof r->img[0]);
      r->lab[r->n] = lab[k];
      r->n++;
    }
  }
  CHECK(rn_loader_wait_seconds(L) >= 0, "wait seconds");
  free(buf), free(lab);
  rn_loader_close(L);
  return st;
}

static rn_loader_config cfg(int B, int rank, int P, rn_aug aug, int train, int workers) {
  rn_loader_config c = {B, rank, P, 99, aug, H, W, train, 3, workers, 0};
  return c;
}

static void test_loader(const char *dir) {
  rn_dataset d;
  rn_err e = {0};
  if (rn_dataset_open(&d, dir, "train", &e)) {
    CHECK(0, "open: %s", e.msg);
    return;
  }
  CHECK(d.n == N && d.nshards == 3, "n %lld shards %d", (long long)d.n, d.nshards);
  static run_t a, b, r3;
  /* synchronous vs 2 prefetch threads vs direct reads */
  CHECK(run_epoch(&d, cfg(4, 0, 1, RN_AUG_CIFAR, 1, 0), 2, 0, -1, &a, &e) == RN_OK, "sync: %s", e.msg);
  CHECK(run_epoch(&d, cfg(4, 0, 1, RN_AUG_CIFAR, 1, 2), 2, 0, -1, &b, &e) == RN_OK, "prefetch: %s", e.msg);
  CHECK(a.n == (N / 4) * 4 && b.n == a.n, "counts %d %d", a.n, b.n);
  CHECK(!memcmp(a.idx, b.idx, sizeof(int64_t) * a.n) && !memcmp(a.img, b.img, sizeof(float) * IMG * a.n) &&
            !memcmp(a.lab, b.lab, 4 * a.n),
        "prefetch differs from synchronous");
  int64_t perm[N];
  rn_sampler_epoch_order(99, 2, N, perm);
  float ref[IMG];
  int bad = 0;
  for (int k = 0; k < a.n; k++) {
    rn_augment(g_pix + perm[k] * IMG, H, W, C, RN_AUG_CIFAR, rn_sampler_aug_key(99, 2, perm[k]), H, W, 0, d.meta.mean,
               d.meta.std, ref);
    if (a.idx[k] != perm[k] || a.lab[k] != g_lab[perm[k]] || memcmp(ref, a.img[k], sizeof ref)) bad++;
  }
  CHECK(bad == 0, "loader differs from direct read+augment at %d samples", bad);
  /* rank-count invariance: G = 12 as 1x12, 2x6, 3x4, 4x3: same global batches */
  CHECK(run_epoch(&d, cfg(12, 0, 1, RN_AUG_CIFAR, 1, 1), 2, 0, -1, &a, &e) == RN_OK, "P=1: %s", e.msg);
  for (int P = 2; P <= 4; P++) {
    int B = 12 / P, good = 1;
    for (int r = 0; r < P; r++) {
      CHECK(run_epoch(&d, cfg(B, r, P, RN_AUG_CIFAR, 1, 2), 2, 0, -1, &b, &e) == RN_OK, "P=%d: %s", P, e.msg);
      for (int k = 0; k < b.n; k++) {
        int step = k / B, pos = step * 12 + r * B + k % B;
        if (b.idx[k] != a.idx[pos] || memcmp(b.img[k], a.img[pos], sizeof b.img[0]) || b.lab[k] != a.lab[pos]) good = 0;
      }
      CHECK(b.n == 3 * B, "P=%d r=%d: %d samples", P, r, b.n);
    }
    CHECK(good, "P=%d: batches differ from P=1", P);
  }
  /* a different batch size: same order, same augmentation per sample */
  CHECK(run_epoch(&d, cfg(8, 0, 1, RN_AUG_CIFAR, 1, 2), 2, 0, -1, &b, &e) == RN_OK, "B=8: %s", e.msg);
  bad = 0;
  for (int k = 0; k < b.n; k++)
    if (b.idx[k] != a.idx[k] || memcmp(b.img[k], a.img[k], sizeof b.img[0])) bad++;
  CHECK(b.n == 32 && bad == 0, "B=8 vs B=12: %d differ", bad);
  /* resume: 2 steps at G=8, then resume at offset 16 with G=6 (2 ranks x 3): same global order */
  run_t *full = &a;
  CHECK(run_epoch(&d, cfg(2, 0, 1, RN_AUG_CIFAR, 1, 2), 5, 0, -1, full, &e) == RN_OK, "full: %s", e.msg);
  bad = 0;
  for (int r = 0; r < 2; r++) {
    CHECK(run_epoch(&d, cfg(3, r, 2, RN_AUG_CIFAR, 1, 2), 5, 16, -1, &r3, &e) == RN_OK, "resume: %s", e.msg);
    CHECK(r3.n == (N - 16) / 6 * 3, "resume count %d", r3.n);
    for (int k = 0; k < r3.n; k++) {
      int pos = 16 + (k / 3) * 6 + r * 3 + k % 3;
      if (r3.idx[k] != full->idx[pos] || memcmp(r3.img[k], full->img[pos], sizeof r3.img[0])) bad++;
    }
  }
  CHECK(bad == 0, "resume differs at %d samples", bad);
  /* eval: every sample exactly once for P = 1..4, in order */
  for (int P = 1; P <= 4; P++) {
    int cnt[N] = {0}, total = 0, order = 1;
    for (int r = 0; r < P; r++) {
      CHECK(run_epoch(&d, cfg(4, r, P, RN_AUG_EVAL_CENTER, 0, 2), 0, 0, -1, &b, &e) == RN_OK, "eval: %s", e.msg);
      for (int k = 0; k < b.n; k++) {
        cnt[b.idx[k]]++;
        if (k && b.idx[k] != b.idx[k - 1] + 1) order = 0;
      }
      total += b.n;
    }
    int once = 1;
    for (int i = 0; i < N; i++) once &= cnt[i] == 1;
    CHECK(once && total == N && order, "eval P=%d: coverage (total %d)", P, total);
  }
  /* 10-crop: 10 images per sample, labels repeated */
  rn_loader_config tc = cfg(4, 0, 1, RN_AUG_EVAL_10CROP, 0, 2);
  tc.out_h = 4, tc.out_w = 4;
  {
    rn_loader *L;
    CHECK(rn_loader_open(&L, &d, &tc, &e) == RN_OK, "10crop open: %s", e.msg);
    CHECK(rn_loader_batch_capacity(L) == 40, "10crop capacity");
    rn_loader_start_epoch(L, 0, 0, &e);
    float *buf = malloc(sizeof(float) * 40 * 4 * 4 * C);
    int32_t lab[40];
    int n = 0;
    CHECK(rn_loader_next(L, buf, lab, &n, &e) == RN_OK && n == 40, "10crop n=%d", n);
    float ref10[10 * 4 * 4 * C];
    rn_augment(g_pix + 1 * IMG, H, W, C, RN_AUG_EVAL_10CROP, 0, 4, 4, 0, d.meta.mean, d.meta.std, ref10);
    CHECK(!memcmp(buf + 10 * 4 * 4 * C, ref10, sizeof ref10) && lab[10] == g_lab[1] && lab[19] == g_lab[1],
          "10crop sample 1");
    /* restart mid-epoch and close with batches in flight */
    rn_loader_start_epoch(L, 0, 0, &e);
    CHECK(rn_loader_next(L, buf, lab, &n, &e) == RN_OK && n == 40 && !memcmp(buf + 10 * 4 * 4 * C, ref10, sizeof ref10),
          "restart");
    free(buf);
    rn_loader_close(L);
  }
  /* impossible configurations */
  rn_loader *L = NULL;
  rn_loader_config c = cfg(0, 0, 1, RN_AUG_NONE, 1, 1);
  CHECK(rn_loader_open(&L, &d, &c, &e) == RN_EINVAL && strstr(e.msg, "local_batch = 0") && strstr(e.msg, "train.manifest"),
        "B=0: %s", e.msg);
  c = cfg(10, 0, 4, RN_AUG_NONE, 1, 1);
  CHECK(rn_loader_open(&L, &d, &c, &e) == RN_EINVAL && strstr(e.msg, "global batch 40") && strstr(e.msg, "37"),
        "G>N: %s", e.msg);
  c = cfg(4, 0, 1, RN_AUG_NONE, 1, 1);
  if (rn_loader_open(&L, &d, &c, &e) == RN_OK) {
    CHECK(rn_loader_start_epoch(L, 0, 38, &e) == RN_EINVAL && strstr(e.msg, "offset 38"), "bad offset: %s", e.msg);
    CHECK(rn_loader_start_epoch(L, -1, 0, &e) == RN_EINVAL && strstr(e.msg, "epoch = -1"), "bad epoch: %s", e.msg);
    rn_loader_close(L);
  }
  rn_dataset_close(&d);
}

/* ---- bad shards ---- */
typedef struct {
  hid_t img_type, lab_type;
  int n, h, w, c, rank, attr_h, classes, bad_label, skip_attr;
} spec;

static void write_h5(const char *path, spec s) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t sc = H5Screate(H5S_SCALAR);
  const char *ints[] = {"format_version", "num_classes", "height", "width", "channels", "max_height", "max_width", "max_bytes"};
  long long vals[] = {1, s.classes, s.attr_h, s.w, s.c, s.attr_h, s.w, (long long)s.attr_h * s.w * s.c};
  for (int i = 0; i < 8; i++) {
    if (s.skip_attr == i + 1) continue;
    hid_t a = H5Acreate2(f, ints[i], H5T_STD_I64LE, sc, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_LLONG, &vals[i]);
    H5Aclose(a);
  }
  hid_t st = H5Tcopy(H5T_C_S1);
  H5Tset_size(st, 4);
  hid_t a = H5Acreate2(f, "encoding", st, sc, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, st, "raw");
  H5Aclose(a);
  H5Tclose(st);
  hsize_t cd[1] = {(hsize_t)s.c};
  hid_t cs = H5Screate_simple(1, cd, NULL);
  float mv[3] = {0.5f, 0.5f, 0.5f};
  a = H5Acreate2(f, "mean", H5T_IEEE_F32LE, cs, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_FLOAT, mv);
  H5Aclose(a);
  a = H5Acreate2(f, "std", H5T_IEEE_F32LE, cs, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_FLOAT, mv);
  H5Aclose(a);
  H5Sclose(cs);
  hid_t vs = H5Tcopy(H5T_C_S1);
  H5Tset_size(vs, H5T_VARIABLE);
  hsize_t nd[1] = {(hsize_t)s.classes};
  hid_t ns = H5Screate_simple(1, nd, NULL);
  const char *names[16] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"};
  a = H5Acreate2(f, "class_names", vs, ns, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, vs, names);
  H5Aclose(a);
  H5Sclose(ns);
  H5Tclose(vs);
  hsize_t dims[4] = {(hsize_t)s.n, (hsize_t)s.h, (hsize_t)s.w, (hsize_t)s.c};
  hid_t ds = H5Screate_simple(s.rank, dims, NULL);
  hid_t d = H5Dcreate2(f, "images", s.img_type, ds, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  size_t tot = (size_t)s.n * s.h * s.w * s.c;
  uint8_t *buf = calloc(tot + 1, 1);
  if (s.n) H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
  free(buf);
  H5Dclose(d);
  H5Sclose(ds);
  hsize_t ld[1] = {(hsize_t)s.n};
  ds = H5Screate_simple(1, ld, NULL);
  d = H5Dcreate2(f, "labels", s.lab_type, ds, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  int32_t *lab = calloc((size_t)s.n + 1, 4);
  if (s.n > 3) lab[3] = s.bad_label;
  if (s.n) H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, lab);
  free(lab);
  H5Dclose(d);
  H5Sclose(ds);
  H5Sclose(sc);
  H5Fclose(f);
}

/* Writes dir/<tag>.manifest listing the given files, opens it and checks the error mentions all words. */
static void expect_fail(const char *dir, const char *tag, const char *f1, const char *f2, rn_status code,
                        const char *w1, const char *w2, const char *w3) {
  char man[1024];
  snprintf(man, sizeof man, "%s/%s.manifest", dir, tag);
  FILE *f = fopen(man, "w");
  fprintf(f, "%s\n", f1);
  if (f2) fprintf(f, "%s\n", f2);
  fclose(f);
  rn_dataset d;
  rn_err e = {0};
  rn_status st = rn_dataset_open(&d, man, NULL, &e);
  CHECK(st == code && (!w1 || strstr(e.msg, w1)) && (!w2 || strstr(e.msg, w2)) && (!w3 || strstr(e.msg, w3)),
        "%s: status %d message: %s", tag, (int)st, e.msg);
  if (!st) rn_dataset_close(&d);
}

static void test_bad(const char *dir) {
  char p[1024];
  spec ok = {H5T_STD_U8LE, H5T_STD_I32LE, 6, 4, 4, 1, 4, 4, 10, 2, 0};
#define W(name, s) (snprintf(p, sizeof p, "%s/%s", dir, name), write_h5(p, s))
  W("good.h5", ok);
  expect_fail(dir, "good", "good.h5", NULL, RN_OK, NULL, NULL, NULL);
  expect_fail(dir, "missing", "good.h5", "nope.h5", RN_EIO, "nope.h5", "cannot open", NULL);
  spec s = ok;
  s.n = 0;
  W("empty.h5", s);
  expect_fail(dir, "empty", "empty.h5", NULL, RN_EFORMAT, "empty.h5", "'images'", "N = 0");
  s = ok, s.img_type = H5T_STD_I16LE;
  W("i16.h5", s);
  expect_fail(dir, "dtype", "i16.h5", NULL, RN_EFORMAT, "i16.h5", "'images'", "uint8");
  s = ok, s.h = 5;
  W("shape.h5", s);
  expect_fail(dir, "shape", "shape.h5", NULL, RN_EFORMAT, "shape.h5", "'images'", "(N,4,4,1)");
  s = ok, s.rank = 3;
  W("rank.h5", s);
  expect_fail(dir, "rank", "rank.h5", NULL, RN_EFORMAT, "rank.h5", "'images'", "rank 3");
  s = ok, s.lab_type = H5T_IEEE_F32LE;
  W("flab.h5", s);
  expect_fail(dir, "labdtype", "flab.h5", NULL, RN_EFORMAT, "flab.h5", "'labels'", "int32");
  s = ok, s.bad_label = 10;
  W("lab10.h5", s);
  expect_fail(dir, "label", "lab10.h5", NULL, RN_EFORMAT, "lab10.h5", "'labels'[3] = 10", "num_classes=10");
  s = ok, s.bad_label = -1;
  W("labm1.h5", s);
  expect_fail(dir, "labelneg", "labm1.h5", NULL, RN_EFORMAT, "labm1.h5", "'labels'[3] = -1", NULL);
  s = ok, s.skip_attr = 2;
  W("noattr.h5", s);
  expect_fail(dir, "noattr", "noattr.h5", NULL, RN_EFORMAT, "noattr.h5", "'num_classes'", "missing");
  s = ok, s.h = 5, s.attr_h = 5;
  W("h5.h5", s);
  expect_fail(dir, "inconsistent", "good.h5", "h5.h5", RN_EFORMAT, "h5.h5", "'height' = 5", "good.h5");
  snprintf(p, sizeof p, "%s/text.h5", dir);
  FILE *f = fopen(p, "w");
  fprintf(f, "hello, I am not HDF5\n");
  fclose(f);
  expect_fail(dir, "nonhdf5", "text.h5", NULL, RN_EFORMAT, "text.h5", "not an HDF5 file", NULL);
  /* truncated: a real shard cut at several lengths */
  s = ok, s.n = 200, s.h = 16, s.w = 16;
  s.attr_h = 16;
  W("big.h5", s);
  snprintf(p, sizeof p, "%s/big.h5", dir);
  FILE *in = fopen(p, "rb");
  fseek(in, 0, SEEK_END);
  long sz = ftell(in);
  uint8_t *all = malloc(sz);
  fseek(in, 0, SEEK_SET);
  CHECK(fread(all, 1, sz, in) == (size_t)sz, "read big");
  fclose(in);
  long cuts[3] = {sz / 2, sz - 100, 1000};
  for (int i = 0; i < 3; i++) {
    char name[64];
    snprintf(name, sizeof name, "trunc%d.h5", i);
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *o = fopen(p, "wb");
    fwrite(all, 1, cuts[i], o);
    fclose(o);
    char tag[32];
    snprintf(tag, sizeof tag, "trunc%d", i);
    expect_fail(dir, tag, name, NULL, RN_EFORMAT, name, NULL, NULL);
  }
  free(all);
  /* missing manifest */
  rn_dataset d;
  rn_err e = {0};
  CHECK(rn_dataset_open(&d, dir, "nosplit", &e) == RN_EIO && strstr(e.msg, "nosplit.manifest"), "no manifest: %s", e.msg);
  /* corrupt JPEG inside a jpeg shard: error at read time naming shard and index */
  char jd[1024];
  snprintf(jd, sizeof jd, "%s/jpeg", dir);
  rn_shard_meta m;
  memset(&m, 0, sizeof m);
  m.channels = 3, m.classes = 2, m.encoding = RN_ENC_JPEG;
  rn_shardw *w;
  CHECK(rn_shardw_open(&w, jd, "train", &m, NULL, 3, 10, &e) == RN_OK, "jpeg shardw: %s", e.msg);
  tjhandle tc = tjInitCompress();
  uint8_t img[8 * 8 * 3];
  for (int i = 0; i < 192; i++) img[i] = (uint8_t)(i * 5);
  unsigned char *jb = NULL;
  unsigned long jl = 0;
  tjCompress2(tc, img, 8, 0, 8, TJPF_RGB, &jb, &jl, TJSAMP_444, 90, 0);
  uint8_t junk[100];
  memset(junk, 0x5a, sizeof junk);
  rn_shardw_add(w, jb, jl, 0, &e);
  rn_shardw_add(w, junk, sizeof junk, 1, &e);
  rn_shardw_add(w, jb, jl / 2, 1, &e); /* truncated JPEG */
  CHECK(rn_shardw_finish(w, NULL, NULL, 8, 8, (int64_t)jl, &e) == RN_OK, "jpeg finish: %s", e.msg);
  tjFree(jb);
  tjDestroy(tc);
  if (rn_dataset_open(&d, jd, "train", &e) == RN_OK) {
    rn_image im;
    rn_image_init(&im, &d, &e);
    int32_t lab;
    CHECK(rn_dataset_read(&d, 0, &im, &lab, &e) == RN_OK && im.w == 8 && im.h == 8, "good jpeg: %s", e.msg);
    rn_status st = rn_dataset_read(&d, 1, &im, &lab, &e);
    CHECK(st == RN_EFORMAT && strstr(e.msg, "train-00000.h5") && strstr(e.msg, "'images'[1]") && strstr(e.msg, "JPEG"),
          "corrupt jpeg: %s", e.msg);
    st = rn_dataset_read(&d, 2, &im, &lab, &e);
    CHECK(st == RN_EFORMAT && strstr(e.msg, "'images'[2]"), "truncated jpeg: %s", e.msg);
    rn_image_free(&im);
    /* through the prefetching loader */
    rn_loader_config c = {3, 0, 1, 1, RN_AUG_EVAL_CENTER, 8, 8, 0, 2, 2, 0};
    rn_loader *L;
    if (rn_loader_open(&L, &d, &c, &e) == RN_OK) {
      float buf[3 * 8 * 8 * 3];
      int32_t labs[3];
      int n;
      rn_loader_start_epoch(L, 0, 0, &e);
      st = rn_loader_next(L, buf, labs, &n, &e);
      CHECK(st == RN_EFORMAT && strstr(e.msg, "'images'[1]") && n == 0, "loader corrupt jpeg: %s", e.msg);
      rn_loader_close(L);
    } else {
      CHECK(0, "jpeg loader: %s", e.msg);
    }
    rn_dataset_close(&d);
  } else {
    CHECK(0, "jpeg open: %s", e.msg);
  }
#undef W
}

int main(void) {
  uint32_t s = 7;
  for (int i = 0; i < N * IMG; i++) s = s * 1664525u + 1013904223u, g_pix[i] = (uint8_t)(s >> 24);
  for (int i = 0; i < N; i++) g_lab[i] = (i * 3) % CLS;
  const char *dir = tu_tmpdir("data-loader");
  make_raw(dir, "train", 16);
  test_loader(dir); /* small raw split: served from the in-memory copy */
  setenv("RN_DATA_CACHE_MB", "0", 1);
  test_loader(dir); /* per-sample HDF5 reads */
  test_bad(tu_tmpdir("data-bad"));
  unsetenv("RN_DATA_CACHE_MB");
  test_bad(tu_tmpdir("data-bad2"));
  return tu_done("test_data_loader");
}
