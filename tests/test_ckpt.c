/* Checkpoint module: round trip, OIHW layout, corrupted/mismatched files, resume fallback, crash at
 * every writer stage (fork + SIGKILL), ENOSPC (simulated, and a real full tmpfs when mount is
 * permitted), keep-K pruning and best retention. Uses a hand-built rn_model (no builder needed). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rn/ckpt.h"
#include "testutil.h"

/* ---------------- a small hand-built model ---------------- */
typedef struct {
  const char *name;
  int ndim, d[4], trainable, ohwi;
} pdef;

static void fake_model(rn_model *m, const char *arch, int classes, int fc_in, int extra, uint64_t seed) {
  pdef defs[] = {
      {"conv1.weight", 4, {8, 3, 3, 3}, 1, 1},
      {"bn1.weight", 1, {8}, 1, 0},
      {"bn1.bias", 1, {8}, 1, 0},
      {"layer1.0.conv1.weight", 4, {16, 8, 3, 1}, 1, 1}, /* non-square kernel catches H/W swaps */
      {"layer1.0.bn1.weight", 1, {16}, 1, 0},
      {"layer1.0.bn1.bias", 1, {16}, 1, 0},
      {"layer1.0.downsample.0.weight", 4, {16, 8, 1, 1}, 1, 1},
      {"fc.weight", 2, {classes, fc_in}, 1, 0},
      {"fc.bias", 1, {classes}, 1, 0},
      {"extra.weight", 1, {5}, 1, 0},
      {"bn1.running_mean", 1, {8}, 0, 0},
      {"bn1.running_var", 1, {8}, 0, 0},
      {"layer1.0.bn1.running_mean", 1, {16}, 0, 0},
      {"layer1.0.bn1.running_var", 1, {16}, 0, 0},
  };
  int nd = (int)(sizeof defs / sizeof defs[0]);
  memset(m, 0, sizeof *m);
  rn_model_config *c = &m->cfg;
  snprintf(c->arch, sizeof c->arch, "%s", arch);
  c->depth = 20, c->cifar = 1, c->shortcut = RN_SHORTCUT_A, c->sd_pl = 1.0f;
  c->in_channels = 3, c->in_h = 32, c->in_w = 32, c->num_classes = classes;
  c->bn_momentum = 0.1f, c->bn_eps = 1e-5f;
  m->params = calloc((size_t)nd, sizeof(rn_param));
  size_t off = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < nd; i++) {
      if (defs[i].trainable != !pass) continue;
      if (!strcmp(defs[i].name, "extra.weight") && !extra) continue;
      rn_param *p = &m->params[m->nparams++];
      snprintf(p->name, sizeof p->name, "%s", defs[i].name);
      p->ndim = defs[i].ndim, p->count = 1;
      for (int k = 0; k < p->ndim; k++) p->dims[k] = defs[i].d[k], p->count *= (size_t)defs[i].d[k];
      p->trainable = defs[i].trainable, p->ohwi = defs[i].ohwi, p->off = off;
      off += rn_align16(p->count);
    }
    if (pass == 0) m->ntrain = off;
  }
  m->ntotal = off;
  m->param = rn_alloc(m->ntotal * sizeof(float));
  m->mom = rn_alloc(m->ntrain * sizeof(float));
  m->grad = rn_alloc(m->ntrain * sizeof(float));
  rn_rng r = rn_rng_make(seed);
  for (size_t i = 0; i < m->ntotal; i++) m->param[i] = rn_rng_normal(&r);
  for (size_t i = 0; i < m->ntrain; i++) m->mom[i] = rn_rng_normal(&r);
}

static void free_model(rn_model *m) {
  rn_free(m->param), rn_free(m->mom), rn_free(m->grad), free(m->params);
}

/* number of datasets the writer creates */
static int ndatasets(const rn_model *m) {
  int n = 2;
  for (int i = 0; i < m->nparams; i++) {
    n += 1 + m->params[i].trainable;
    if (strstr(m->params[i].name, ".running_mean")) n++;
  }
  return n;
}

static int same_values(const rn_model *a, const rn_model *b) {
  for (int i = 0; i < a->nparams; i++) {
    const rn_param *p = &a->params[i];
    if (memcmp(a->param + p->off, b->param + p->off, p->count * 4)) return 0;
    if (p->trainable && memcmp(a->mom + p->off, b->mom + p->off, p->count * 4)) return 0;
  }
  return 1;
}

typedef struct {
  float *param, *mom;
} snap;
static snap take(const rn_model *m) {
  snap s = {malloc(m->ntotal * 4), malloc(m->ntrain * 4)};
  memcpy(s.param, m->param, m->ntotal * 4), memcpy(s.mom, m->mom, m->ntrain * 4);
  return s;
}
static int untouched(const rn_model *m, snap s) {
  int ok = !memcmp(s.param, m->param, m->ntotal * 4) && !memcmp(s.mom, m->mom, m->ntrain * 4);
  free(s.param), free(s.mom);
  return ok;
}

static rn_ckpt_state mkstate(int64_t step, double val) {
  rn_ckpt_state s = {.epoch = step / 10, .step = step, .epoch_offset = (step % 10) * 256, .samples = step * 256,
                     .nranks = 2, .global_batch = 256, .seed = 0xDEADBEEFCAFEull, .lr = 0.1 + step * 1e-3,
                     .val_err = val, .best_val_err = val, .flags = RN_CKPT_FLAG_WARMUP_DONE};
  return s;
}

static const char *cfg_text = "arch=cifar-resnet20\nbatch=128\nlr=0.1\n";

static char *pjoin(const char *d, const char *n) {
  static char buf[8][4096];
  static int k;
  char *b = buf[k++ & 7];
  snprintf(b, 4096, "%s/%s", d, n);
  return b;
}

static void copy_file(const char *src, const char *dst) {
  FILE *a = fopen(src, "rb"), *b = fopen(dst, "wb");
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
  fclose(a), fclose(b);
}

static long file_size(const char *p) {
  struct stat sb;
  return stat(p, &sb) ? -1 : (long)sb.st_size;
}

static int count_tmp(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *de;
  while (d && (de = readdir(d))) {
    size_t l = strlen(de->d_name);
    if (l > 4 && !strcmp(de->d_name + l - 4, ".tmp")) n++;
  }
  if (d) closedir(d);
  return n;
}

static int exists(const char *p) { return access(p, F_OK) == 0; }

static void read_ptr(const char *dir, const char *which, char *out, size_t len) {
  out[0] = 0;
  FILE *f = fopen(pjoin(dir, which), "r");
  if (!f) return;
  if (!fgets(out, (int)len, f)) out[0] = 0;
  fclose(f);
  out[strcspn(out, "\n")] = 0;
}

/* dataset byte offset in the file (contiguous layout) */
static haddr_t ds_offset(const char *path, const char *ds) {
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, ds, H5P_DEFAULT);
  haddr_t off = H5Dget_offset(d);
  H5Dclose(d), H5Fclose(f);
  return off;
}

static void flip_byte(const char *path, long off) {
  int fd = open(path, O_RDWR);
  unsigned char b;
  if (pread(fd, &b, 1, off) != 1) b = 0;
  b ^= 0x10;
  if (pwrite(fd, &b, 1, off) != 1) perror("pwrite");
  close(fd);
}

#define HAS(msg, s) (strstr((msg), (s)) != NULL)

/* ---------------- tests ---------------- */

static void test_roundtrip(void) {
  const char *dir = tu_tmpdir("ckpt-rt");
  rn_model a, b;
  fake_model(&a, "cifar-resnet20", 10, 16, 0, 1);
  fake_model(&b, "cifar-resnet20", 10, 16, 0, 2);
  rn_err e;
  rn_ckpt_state st = mkstate(1234, 0.25), st2;
  memset(&st2, 0, sizeof st2);
  CHECK(rn_ckpt_save(dir, &a, &st, cfg_text, "{\"step\":1}\n", 3, &e) == RN_OK, "save: %s", e.msg);
  char p[4096];
  snprintf(p, sizeof p, "%s/ckpt-00001234.h5", dir);
  CHECK(exists(p), "%s missing", p);
  char lp[256];
  read_ptr(dir, "latest", lp, sizeof lp);
  CHECK(!strcmp(lp, "ckpt-00001234.h5"), "latest = '%s'", lp);
  read_ptr(dir, "best", lp, sizeof lp);
  CHECK(!strcmp(lp, "ckpt-00001234.h5"), "best = '%s'", lp);
  CHECK(rn_ckpt_verify(p, &e) == RN_OK, "verify: %s", e.msg);
  char *cfg = NULL;
  CHECK(!same_values(&a, &b), "models should differ before load");
  CHECK(rn_ckpt_load(p, &b, &st2, &cfg, &e) == RN_OK, "load: %s", e.msg);
  CHECK(same_values(&a, &b), "params/momentum not bitwise equal after load");
  CHECK(!memcmp(&st, &st2, sizeof st), "state differs after load (step %lld vs %lld)", (long long)st2.step,
        (long long)st.step);
  CHECK(cfg && !strcmp(cfg, cfg_text), "config text '%s'", cfg ? cfg : "(null)");
  free(cfg);
  char *met = NULL;
  CHECK(rn_ckpt_read_text(p, "metrics", &met, &e) == RN_OK && !strcmp(met, "{\"step\":1}\n"), "metrics");
  free(met);
  rn_ckpt_state st3;
  CHECK(rn_ckpt_read_state(p, &st3, &e) == RN_OK && !memcmp(&st, &st3, sizeof st), "read_state");
  rn_model_config c;
  CHECK(rn_ckpt_read_config(p, &c, &e) == RN_OK && !strcmp(c.arch, "cifar-resnet20") && c.num_classes == 10 &&
            c.bn_eps == 1e-5f && c.shortcut == RN_SHORTCUT_A,
        "read_config: %s", c.arch);

  /* NULL texts are stored as empty strings; diff of identical files */
  const char *p2 = tu_tmpdir("ckpt-rt2");
  CHECK(rn_ckpt_save(p2, &a, &st, NULL, NULL, 0, &e) == RN_OK, "save NULL texts: %s", e.msg);
  char *q = pjoin(p2, "ckpt-00001234.h5");
  CHECK(rn_ckpt_read_text(q, "config", &cfg, &e) == RN_OK && cfg[0] == 0, "empty config");
  free(cfg);
  int same = 0;
  CHECK(rn_ckpt_diff(p, q, 0, stdout, &same, &e) == RN_OK && same, "diff of identical params: %s", e.msg);
  b.param[b.params[3].off + 7] += 1.0f;
  rn_ckpt_state s5 = mkstate(5, -1);
  CHECK(rn_ckpt_save(p2, &b, &s5, NULL, NULL, 0, &e) == RN_OK, "save");
  FILE *mf = tmpfile();
  CHECK(rn_ckpt_diff(p, pjoin(p2, "ckpt-00000005.h5"), 0, mf, &same, &e) == RN_OK && !same, "diff must differ");
  char out[2048] = {0};
  rewind(mf);
  size_t nr = fread(out, 1, sizeof out - 1, mf);
  out[nr] = 0;
  fclose(mf);
  CHECK(HAS(out, "/model/layer1.0.conv1.weight") && HAS(out, "max abs diff 1"), "diff output: %s", out);
  /* momentum-only difference: --params-only says identical */
  b.param[b.params[3].off + 7] -= 1.0f;
  b.mom[3] += 1.0f;
  rn_ckpt_state s6 = mkstate(6, -1);
  CHECK(rn_ckpt_save(p2, &b, &s6, NULL, NULL, 0, &e) == RN_OK, "save");
  CHECK(rn_ckpt_diff(p, pjoin(p2, "ckpt-00000006.h5"), 1, stdout, &same, &e) == RN_OK && same, "params-only diff");
  mf = tmpfile();
  CHECK(rn_ckpt_diff(p, pjoin(p2, "ckpt-00000006.h5"), 0, mf, &same, &e) == RN_OK && !same, "momentum diff");
  fclose(mf);
  free_model(&a), free_model(&b);
}

static void test_layout(void) {
  const char *dir = tu_tmpdir("ckpt-layout");
  rn_model a;
  fake_model(&a, "cifar-resnet20", 10, 16, 0, 3);
  rn_err e;
  rn_ckpt_state st = mkstate(77, -1);
  CHECK(rn_ckpt_save(dir, &a, &st, cfg_text, "", 1, &e) == RN_OK, "save: %s", e.msg);
  const char *p = pjoin(dir, "ckpt-00000077.h5");
  hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
  CHECK(f >= 0, "open");
  const char *names[2] = {"layer1.0.conv1.weight", "conv1.weight"};
  for (int pass = 0; pass < 2; pass++)
    for (int n = 0; n < 2; n++) {
      const rn_param *q = NULL;
      for (int i = 0; i < a.nparams; i++)
        if (!strcmp(a.params[i].name, names[n])) q = &a.params[i];
      char ds[256];
      snprintf(ds, sizeof ds, "%s/%s", pass ? "/optim/momentum" : "/model", names[n]);
      hid_t d = H5Dopen2(f, ds, H5P_DEFAULT);
      hid_t sp = H5Dget_space(d);
      hsize_t dims[4] = {0};
      int nd = H5Sget_simple_extent_dims(sp, dims, NULL);
      CHECK(nd == 4 && (int)dims[0] == q->dims[0] && (int)dims[1] == q->dims[1] && (int)dims[2] == q->dims[2] &&
                (int)dims[3] == q->dims[3],
            "%s shape", ds);
      float *buf = malloc(q->count * 4);
      H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
      const float *src = (pass ? a.mom : a.param) + q->off;
      int O = q->dims[0], I = q->dims[1], H = q->dims[2], W = q->dims[3], bad = 0;
      for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
          for (int h = 0; h < H; h++)
            for (int w = 0; w < W; w++) {
              float got = buf[((o * I + i) * H + h) * W + w];      /* OIHW in the file */
              float want = src[((o * H + h) * W + w) * I + i];     /* OHWI in memory */
              bad += memcmp(&got, &want, 4) != 0;
            }
      CHECK(bad == 0, "%s: %d elements not at their OIHW position", ds, bad);
      free(buf);
      H5Sclose(sp), H5Dclose(d);
    }
  /* fc.weight is [out][in] both in memory and in the file */
  {
    const rn_param *q = &a.params[7];
    hid_t d = H5Dopen2(f, "/model/fc.weight", H5P_DEFAULT);
    float *buf = malloc(q->count * 4);
    H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    CHECK(!memcmp(buf, a.param + q->off, q->count * 4), "fc.weight layout");
    free(buf);
    H5Dclose(d);
  }
  /* num_batches_tracked = step, int64 scalar, and every dataset has crc32 */
  {
    hid_t d = H5Dopen2(f, "/model/layer1.0.bn1.num_batches_tracked", H5P_DEFAULT);
    CHECK(d >= 0, "num_batches_tracked missing");
    long long v = -1;
    H5Dread(d, H5T_NATIVE_LLONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v);
    CHECK(v == 77, "num_batches_tracked = %lld", v);
    CHECK(H5Aexists(d, "crc32") > 0, "crc32 on num_batches_tracked");
    H5Dclose(d);
    int fv = 0;
    hid_t at = H5Aopen(f, "format_version", H5P_DEFAULT);
    H5Aread(at, H5T_NATIVE_INT, &fv);
    H5Aclose(at);
    CHECK(fv == 1, "format_version %d", fv);
  }
  H5Fclose(f);
  free_model(&a);
}

/* Each bad file: clear error naming the file and the dataset/field; model untouched. */
static void expect_load_fail(const char *what, const char *path, rn_model *m, const char *s1, const char *s2) {
  rn_err e;
  memset(&e, 0, sizeof e);
  snap sn = take(m);
  rn_ckpt_state st = mkstate(999, 0.9), st0 = st;
  char *cfg = (char *)"sentinel";
  rn_status s = rn_ckpt_load(path, m, &st, &cfg, &e);
  CHECK(s != RN_OK, "%s: load should fail", what);
  CHECK(untouched(m, sn), "%s: model modified by a failed load", what);
  CHECK(!memcmp(&st, &st0, sizeof st) && !strcmp(cfg, "sentinel"), "%s: state/config modified", what);
  CHECK(HAS(e.msg, path), "%s: message does not name the file: %s", what, e.msg);
  CHECK(!s1 || HAS(e.msg, s1), "%s: message lacks '%s': %s", what, s1, e.msg);
  CHECK(!s2 || HAS(e.msg, s2), "%s: message lacks '%s': %s", what, s2, e.msg);
  printf("  %-22s -> %s\n", what, e.msg);
}

static void test_bad_files(void) {
  const char *dir = tu_tmpdir("ckpt-bad");
  rn_model a;
  fake_model(&a, "cifar-resnet20", 10, 16, 0, 4);
  rn_err e;
  rn_ckpt_state st = mkstate(10, -1);
  CHECK(rn_ckpt_save(dir, &a, &st, cfg_text, "", 0, &e) == RN_OK, "save: %s", e.msg);
  const char *good = pjoin(dir, "ckpt-00000010.h5");
  long sz = file_size(good);
  rn_model b;
  fake_model(&b, "cifar-resnet20", 10, 16, 0, 5);

  /* truncated */
  const char *t = pjoin(dir, "trunc.h5");
  copy_file(good, t);
  CHECK(truncate(t, sz / 2) == 0, "truncate");
  expect_load_fail("truncated", t, &b, "truncated", NULL);
  CHECK(rn_ckpt_verify(t, &e) != RN_OK, "verify truncated");
  /* truncated inside the last dataset only */
  copy_file(good, t);
  CHECK(truncate(t, sz - 8) == 0, "truncate");
  expect_load_fail("truncated-8", t, &b, NULL, NULL);

  /* bit flip inside a parameter's data */
  const char *fl = pjoin(dir, "flip.h5");
  copy_file(good, fl);
  haddr_t off = ds_offset(fl, "/model/layer1.0.conv1.weight");
  CHECK(off != HADDR_UNDEF, "H5Dget_offset");
  flip_byte(fl, (long)off + 13);
  expect_load_fail("bit flip", fl, &b, "checksum mismatch", "/model/layer1.0.conv1.weight");
  CHECK(rn_ckpt_verify(fl, &e) != RN_OK && HAS(e.msg, "layer1.0.conv1.weight"), "verify flip: %s", e.msg);
  /* bit flip in a momentum buffer and in the config text */
  copy_file(good, fl);
  flip_byte(fl, (long)ds_offset(fl, "/optim/momentum/fc.bias") + 2);
  expect_load_fail("momentum flip", fl, &b, "checksum mismatch", "/optim/momentum/fc.bias");
  copy_file(good, fl);
  flip_byte(fl, (long)ds_offset(fl, "/config") + 3);
  expect_load_fail("config flip", fl, &b, "checksum mismatch", "/config");

  /* wrong arch */
  rn_model o;
  fake_model(&o, "cifar-resnet32", 10, 16, 0, 6);
  const char *d2 = tu_tmpdir("ckpt-bad2");
  CHECK(rn_ckpt_save(d2, &o, &st, cfg_text, "", 0, &e) == RN_OK, "save: %s", e.msg);
  expect_load_fail("wrong arch", pjoin(d2, "ckpt-00000010.h5"), &b, "arch is 'cifar-resnet32'", "'cifar-resnet20'");
  free_model(&o);
  /* wrong class count */
  fake_model(&o, "cifar-resnet20", 100, 16, 0, 6);
  const char *d3 = tu_tmpdir("ckpt-bad3");
  CHECK(rn_ckpt_save(d3, &o, &st, cfg_text, "", 0, &e) == RN_OK, "save: %s", e.msg);
  expect_load_fail("wrong classes", pjoin(d3, "ckpt-00000010.h5"), &b, "num_classes is 100", "but 10");
  free_model(&o);
  /* wrong channels / input size */
  fake_model(&o, "cifar-resnet20", 10, 16, 0, 6);
  o.cfg.in_channels = 1;
  const char *d4 = tu_tmpdir("ckpt-bad4");
  CHECK(rn_ckpt_save(d4, &o, &st, cfg_text, "", 0, &e) == RN_OK, "save: %s", e.msg);
  expect_load_fail("wrong channels", pjoin(d4, "ckpt-00000010.h5"), &b, "in_channels is 1", NULL);
  o.cfg.in_channels = 3, o.cfg.in_h = 64;
  st.step = 11;
  CHECK(rn_ckpt_save(d4, &o, &st, cfg_text, "", 0, &e) == RN_OK, "save: %s", e.msg);
  expect_load_fail("wrong input size", pjoin(d4, "ckpt-00000011.h5"), &b, "in_h is 64", NULL);
  free_model(&o);
  /* same description, different shape / missing / unexpected dataset */
  fake_model(&o, "cifar-resnet20", 10, 24, 0, 6);
  const char *d5 = tu_tmpdir("ckpt-bad5");
  st.step = 10;
  CHECK(rn_ckpt_save(d5, &o, &st, cfg_text, "", 0, &e) == RN_OK, "save: %s", e.msg);
  expect_load_fail("wrong shape", pjoin(d5, "ckpt-00000010.h5"), &b, "/model/fc.weight", "[10,24]");
  free_model(&o);
  fake_model(&o, "cifar-resnet20", 10, 16, 1, 6);
  snap sn = take(&o);
  CHECK(rn_ckpt_load(good, &o, NULL, NULL, &e) != RN_OK && HAS(e.msg, "/model/extra.weight") && HAS(e.msg, "missing"),
        "missing dataset: %s", e.msg);
  CHECK(untouched(&o, sn), "model touched");
  const char *d6 = tu_tmpdir("ckpt-bad6");
  CHECK(rn_ckpt_save(d6, &o, &st, cfg_text, "", 0, &e) == RN_OK, "save: %s", e.msg);
  expect_load_fail("unexpected dataset", pjoin(d6, "ckpt-00000010.h5"), &b, "extra.weight", "not a parameter");
  free_model(&o);

  /* newer format version */
  const char *nv = pjoin(dir, "newer.h5");
  copy_file(good, nv);
  hid_t f = H5Fopen(nv, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t at = H5Aopen(f, "format_version", H5P_DEFAULT);
  int two = 2;
  H5Awrite(at, H5T_NATIVE_INT, &two);
  H5Aclose(at), H5Fclose(f);
  expect_load_fail("newer version", nv, &b, "format version 2", "newer");
  CHECK(rn_ckpt_verify(nv, &e) != RN_OK && HAS(e.msg, "newer"), "verify newer: %s", e.msg);
  CHECK(rn_ckpt_verify(good, &e) == RN_OK, "good still verifies: %s", e.msg);

  /* non-HDF5, empty, missing, HDF5 but not a checkpoint */
  const char *tx = pjoin(dir, "text.h5");
  FILE *tf = fopen(tx, "w");
  fprintf(tf, "this is not a checkpoint\n");
  fclose(tf);
  expect_load_fail("non-HDF5", tx, &b, "not an HDF5 file", NULL);
  const char *em = pjoin(dir, "empty.h5");
  fclose(fopen(em, "w"));
  expect_load_fail("empty file", em, &b, "empty", NULL);
  expect_load_fail("missing file", pjoin(dir, "nope.h5"), &b, "No such file", NULL);
  const char *oh = pjoin(dir, "other.h5");
  f = H5Fcreate(oh, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(f);
  expect_load_fail("other HDF5", oh, &b, "not a resnet-mpi checkpoint", "/format");
  /* a required /state attribute removed */
  const char *ns = pjoin(dir, "nostate.h5");
  copy_file(good, ns);
  f = H5Fopen(ns, H5F_ACC_RDWR, H5P_DEFAULT);
  H5Adelete_by_name(f, "/state", "epoch_offset", H5P_DEFAULT);
  H5Fclose(f);
  expect_load_fail("missing attribute", ns, &b, "/state/epoch_offset", "missing");
  CHECK(rn_ckpt_verify(ns, &e) != RN_OK && HAS(e.msg, "epoch_offset"), "verify missing attr: %s", e.msg);

  /* empty and absent directories: nothing found, not an error */
  char path[4096];
  int found = 1;
  CHECK(rn_ckpt_find_resume(tu_tmpdir("ckpt-empty"), path, sizeof path, &found, stderr, &e) == RN_OK && !found,
        "empty dir");
  found = 1;
  CHECK(rn_ckpt_find_resume("/nonexistent/rn-ckpt", path, sizeof path, &found, stderr, &e) == RN_OK && !found,
        "absent dir");
  /* bad fault spec is rejected (typos in tests must not pass silently) */
  setenv("RN_CKPT_FAULT", "kill@nowhere", 1);
  CHECK(rn_ckpt_save(dir, &a, &st, "", "", 0, &e) == RN_EINVAL && HAS(e.msg, "RN_CKPT_FAULT"), "bad fault spec");
  unsetenv("RN_CKPT_FAULT");
  free_model(&a), free_model(&b);
}

static void test_fallback(void) {
  const char *dir = tu_tmpdir("ckpt-fb");
  rn_model a;
  fake_model(&a, "cifar-resnet20", 10, 16, 0, 7);
  rn_err e;
  rn_ckpt_state s1 = mkstate(100, -1), s2 = mkstate(200, -1), s3 = mkstate(300, -1);
  CHECK(rn_ckpt_save(dir, &a, &s1, cfg_text, "", 0, &e) == RN_OK, "save");
  CHECK(rn_ckpt_save(dir, &a, &s2, cfg_text, "", 0, &e) == RN_OK, "save");
  CHECK(rn_ckpt_save(dir, &a, &s3, cfg_text, "", 0, &e) == RN_OK, "save");
  /* corrupt 300 (named by latest) and 200: resume must fall back to 100 with two warnings */
  const char *p3 = pjoin(dir, "ckpt-00000300.h5"), *p2 = pjoin(dir, "ckpt-00000200.h5");
  flip_byte(p3, (long)ds_offset(p3, "/model/fc.weight") + 1);
  CHECK(truncate(p2, file_size(p2) / 3) == 0, "truncate");
  char path[4096], warn[4096] = {0};
  int found = 0;
  FILE *w = tmpfile();
  CHECK(rn_ckpt_find_resume(dir, path, sizeof path, &found, w, &e) == RN_OK && found, "find_resume: %s", e.msg);
  CHECK(found && !strcmp(path, pjoin(dir, "ckpt-00000100.h5")), "resume picked %s", path);
  rewind(w);
  size_t n = fread(warn, 1, sizeof warn - 1, w);
  warn[n] = 0;
  fclose(w);
  printf("  fallback warnings:\n%s", warn);
  CHECK(HAS(warn, p3) && HAS(warn, "checksum mismatch") && HAS(warn, "/model/fc.weight"), "warning for 300: %s", warn);
  CHECK(HAS(warn, p2), "warning for 200: %s", warn);
  /* latest pointing nowhere: scan finds the newest valid */
  FILE *lf = fopen(pjoin(dir, "latest"), "w");
  fprintf(lf, "garbage\n");
  fclose(lf);
  w = tmpfile();
  CHECK(rn_ckpt_find_resume(dir, path, sizeof path, &found, w, &e) == RN_OK && found &&
            !strcmp(path, pjoin(dir, "ckpt-00000100.h5")),
        "garbage latest: %s", path);
  fclose(w);
  /* everything invalid: not found, no error */
  flip_byte(pjoin(dir, "ckpt-00000100.h5"), (long)ds_offset(pjoin(dir, "ckpt-00000100.h5"), "/metrics"));
  CHECK(rn_ckpt_find_resume(dir, path, sizeof path, &found, NULL, &e) == RN_OK && !found, "all invalid");
  free_model(&a);
}

/* Crash at each writer stage: previous checkpoint intact, latest valid, find_resume returns it. */
static void test_kill(void) {
  rn_model a, b, c;
  fake_model(&a, "cifar-resnet20", 10, 16, 0, 8);
  fake_model(&b, "cifar-resnet20", 10, 16, 0, 9);
  fake_model(&c, "cifar-resnet20", 10, 16, 0, 10);
  int nds = ndatasets(&a);
  char stages[16][32];
  int ns = 0;
  snprintf(stages[ns++], 32, "create");
  int ks[4] = {0, 1, nds / 2, nds};
  for (int i = 0; i < 4; i++) snprintf(stages[ns++], 32, "dataset:%d", ks[i]);
  const char *rest[] = {"flush", "fsync", "rename", "latest", "best", "prune"};
  for (int i = 0; i < 6; i++) snprintf(stages[ns++], 32, "%s", rest[i]);
  for (int si = 0; si < ns; si++) {
    const char *dir = tu_tmpdir("ckpt-kill");
    rn_err e;
    rn_ckpt_state s1 = mkstate(100, 0.5), s2 = mkstate(200, 0.4);
    CHECK(rn_ckpt_save(dir, &a, &s1, cfg_text, "", 1, &e) == RN_OK, "save: %s", e.msg);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
      char spec[64];
      snprintf(spec, sizeof spec, "kill@%.31s", stages[si]);
      setenv("RN_CKPT_FAULT", spec, 1);
      rn_err ce;
      rn_ckpt_save(dir, &b, &s2, cfg_text, "", 1, &ce);
      _exit(3); /* reached only if the fault did not fire */
    }
    int wst = 0;
    waitpid(pid, &wst, 0);
    CHECK(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL, "stage %s: child not killed (status %d)", stages[si], wst);
    int committed = !strcmp(stages[si], "prune") || !strcmp(stages[si], "best");
    const char *want = committed ? "ckpt-00000200.h5" : "ckpt-00000100.h5";
    char lp[256];
    read_ptr(dir, "latest", lp, sizeof lp);
    CHECK(!strcmp(lp, want), "stage %s: latest = '%s', expected %s", stages[si], lp, want);
    CHECK(rn_ckpt_verify(pjoin(dir, lp), &e) == RN_OK, "stage %s: latest invalid: %s", stages[si], e.msg);
    /* previous checkpoint intact: loads with exactly the old values */
    rn_ckpt_state st;
    CHECK(rn_ckpt_load(pjoin(dir, "ckpt-00000100.h5"), &c, &st, NULL, &e) == RN_OK && same_values(&a, &c) &&
              st.step == 100,
          "stage %s: previous checkpoint damaged: %s", stages[si], e.msg);
    char path[4096];
    int found = 0;
    CHECK(rn_ckpt_find_resume(dir, path, sizeof path, &found, stderr, &e) == RN_OK && found &&
              !strcmp(path, pjoin(dir, want)),
          "stage %s: find_resume -> %s", stages[si], found ? path : "(none)");
    if (!strcmp(stages[si], "rename"))
      CHECK(rn_ckpt_verify(pjoin(dir, "ckpt-00000200.h5"), &e) == RN_OK, "renamed file must be complete: %s", e.msg);
    /* the next save cleans up temp files and works */
    rn_ckpt_state s3 = mkstate(300, -1);
    CHECK(rn_ckpt_save(dir, &b, &s3, cfg_text, "", 1, &e) == RN_OK, "stage %s: next save: %s", stages[si], e.msg);
    CHECK(count_tmp(dir) == 0, "stage %s: %d temp files left after the next save", stages[si], count_tmp(dir));
    read_ptr(dir, "latest", lp, sizeof lp);
    CHECK(!strcmp(lp, "ckpt-00000300.h5"), "stage %s: latest after next save %s", stages[si], lp);
  }
  printf("  kill: %d stages checked (datasets per file: %d)\n", ns, nds);
  free_model(&a), free_model(&b), free_model(&c);
}

/* A failed save (simulated or real ENOSPC): error naming the file and the dataset, previous
 * checkpoint and pointers intact, no temp file. */
static void check_failed_save(const char *what, const char *dir, rn_model *old, rn_model *nw, const char *s1,
                              const char *s2) {
  rn_err e;
  rn_ckpt_state s2st = mkstate(200, 0.1);
  rn_status s = rn_ckpt_save(dir, nw, &s2st, cfg_text, "", 1, &e);
  printf("  %s -> %s\n", what, s ? e.msg : "(no error)");
  CHECK(s == RN_EIO, "%s: expected RN_EIO, got %d", what, (int)s);
  CHECK(HAS(e.msg, "ckpt-00000200.h5"), "%s: message does not name the file: %s", what, e.msg);
  CHECK(!s1 || HAS(e.msg, s1), "%s: message lacks '%s': %s", what, s1, e.msg);
  CHECK(!s2 || HAS(e.msg, s2), "%s: message lacks '%s': %s", what, s2, e.msg);
  CHECK(count_tmp(dir) == 0, "%s: temp file left", what);
  CHECK(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0, "%s: %ld HDF5 objects left open", what,
        (long)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL));
  CHECK(!exists(pjoin(dir, "ckpt-00000200.h5")), "%s: partial checkpoint visible", what);
  char lp[256];
  read_ptr(dir, "latest", lp, sizeof lp);
  CHECK(!strcmp(lp, "ckpt-00000100.h5"), "%s: latest = %s", what, lp);
  read_ptr(dir, "best", lp, sizeof lp);
  CHECK(!strcmp(lp, "ckpt-00000100.h5"), "%s: best = %s", what, lp);
  rn_model c;
  fake_model(&c, "cifar-resnet20", old->cfg.num_classes, old->params[7].dims[1], 0, 99);
  CHECK(rn_ckpt_load(pjoin(dir, "ckpt-00000100.h5"), &c, NULL, NULL, &e) == RN_OK && same_values(old, &c),
        "%s: previous checkpoint damaged: %s", what, e.msg);
  free_model(&c);
}

static void test_enospc(void) {
  rn_model a, b;
  fake_model(&a, "cifar-resnet20", 10, 16, 0, 11);
  fake_model(&b, "cifar-resnet20", 10, 16, 0, 12);
  rn_err e;
  rn_ckpt_state s1 = mkstate(100, 0.5);
  int ks[3] = {0, 5, ndatasets(&a) - 1};
  for (int i = 0; i < 3; i++) {
    const char *dir = tu_tmpdir("ckpt-enospc");
    CHECK(rn_ckpt_save(dir, &a, &s1, cfg_text, "", 1, &e) == RN_OK, "save: %s", e.msg);
    char spec[64];
    snprintf(spec, sizeof spec, "enospc@dataset:%d", ks[i]);
    setenv("RN_CKPT_FAULT", spec, 1);
    check_failed_save(spec, dir, &a, &b, "No space left on device", "dataset /");
    unsetenv("RN_CKPT_FAULT");
  }
  free_model(&a), free_model(&b);

  /* a real full disk: a tiny tmpfs that holds one checkpoint but not two */
  const char *mnt = tu_tmpdir("ckpt-tmpfs");
  rn_model big, big2;
  fake_model(&big, "cifar-resnet20", 1000, 64, 0, 13); /* fc 1000x64: ~0.5 MB with momentum */
  fake_model(&big2, "cifar-resnet20", 1000, 64, 0, 14);
  const char *probe = tu_tmpdir("ckpt-probe");
  CHECK(rn_ckpt_save(probe, &big, &s1, cfg_text, "", 1, &e) == RN_OK, "probe save: %s", e.msg);
  long sz = file_size(pjoin(probe, "ckpt-00000100.h5"));
  long pg = 4096, fullpages = (sz + pg - 1) / pg;
  /* free space left after the first checkpoint: half of one (fails inside H5Dwrite) and all but 3
   * pages (fails near the end: last datasets or the metadata flush at close) */
  long spare[2] = {(sz / 2 + pg - 1) / pg * pg, (fullpages - 3) * pg};
  for (int v = 0; v < 2; v++) {
  long size = fullpages * pg + spare[v] + 2 * pg;
  char opts[64];
  snprintf(opts, sizeof opts, "size=%ld", size);
  if (mount("tmpfs", mnt, "tmpfs", 0, opts) != 0) {
    printf("  real full disk: UNAVAILABLE here (mount tmpfs: %s); only the simulated ENOSPC cases ran, the real-disk "
           "case is NOT counted as passed\n", strerror(errno));
    break;
  } else {
    int before = tu_pass + tu_fail, fails = tu_fail;
    CHECK(rn_ckpt_save(mnt, &big, &s1, cfg_text, "", 1, &e) == RN_OK, "first save on tmpfs (%ld bytes): %s", size,
          e.msg);
    check_failed_save("real full tmpfs", mnt, &big, &big2, "No space left on device", NULL);
    /* after freeing space the writer works again */
    CHECK(umount(mnt) == 0, "umount: %s", strerror(errno));
    printf("  real full disk (tmpfs of %ld bytes, checkpoint %ld bytes): %d checks, %d failed\n", size, sz,
           tu_pass + tu_fail - before, tu_fail - fails);
  }
  }
  rmdir(mnt);
  free_model(&big), free_model(&big2);
}

static void test_prune(void) {
  const char *dir = tu_tmpdir("ckpt-prune");
  rn_model a;
  fake_model(&a, "cifar-resnet20", 10, 16, 0, 15);
  rn_err e;
  double val[7] = {0.5, 0.3, 0.4, 0.35, 0.6, -1, 0.3};
  for (int i = 0; i < 6; i++) {
    rn_ckpt_state s = mkstate(i + 1, val[i]);
    CHECK(rn_ckpt_save(dir, &a, &s, cfg_text, "", 2, &e) == RN_OK, "save %d: %s", i + 1, e.msg);
    if (i == 2) {
      CHECK(exists(pjoin(dir, "ckpt-00000002.h5")) && exists(pjoin(dir, "ckpt-00000003.h5")) &&
                !exists(pjoin(dir, "ckpt-00000001.h5")),
            "after 3 saves: keep {2,3}");
    }
  }
  int want[6] = {0, 1, 0, 0, 1, 1};
  for (int i = 0; i < 6; i++) {
    char n[64];
    rn_ckpt_filename(i + 1, n, sizeof n);
    CHECK(exists(pjoin(dir, n)) == want[i], "%s: exists %d, expected %d", n, exists(pjoin(dir, n)), want[i]);
  }
  char lp[256];
  read_ptr(dir, "best", lp, sizeof lp);
  CHECK(!strcmp(lp, "ckpt-00000002.h5"), "best = %s", lp);
  read_ptr(dir, "latest", lp, sizeof lp);
  CHECK(!strcmp(lp, "ckpt-00000006.h5"), "latest = %s", lp);
  /* tie does not replace the best; a better one does and the old best is pruned */
  rn_ckpt_state s7 = mkstate(7, 0.3), s8 = mkstate(8, 0.1);
  CHECK(rn_ckpt_save(dir, &a, &s7, cfg_text, "", 2, &e) == RN_OK, "save 7");
  read_ptr(dir, "best", lp, sizeof lp);
  CHECK(!strcmp(lp, "ckpt-00000002.h5"), "tie: best = %s", lp);
  CHECK(rn_ckpt_save(dir, &a, &s8, cfg_text, "", 2, &e) == RN_OK, "save 8");
  read_ptr(dir, "best", lp, sizeof lp);
  CHECK(!strcmp(lp, "ckpt-00000008.h5"), "better: best = %s", lp);
  CHECK(!exists(pjoin(dir, "ckpt-00000002.h5")) && exists(pjoin(dir, "ckpt-00000007.h5")) &&
            !exists(pjoin(dir, "ckpt-00000006.h5")),
        "old best pruned, keep 2 = {7,8}");
  /* keep <= 0 keeps everything */
  const char *d2 = tu_tmpdir("ckpt-keepall");
  for (int i = 0; i < 4; i++) {
    rn_ckpt_state s = mkstate(i + 1, -1);
    CHECK(rn_ckpt_save(d2, &a, &s, cfg_text, "", 0, &e) == RN_OK, "save");
  }
  CHECK(exists(pjoin(d2, "ckpt-00000001.h5")) && exists(pjoin(d2, "ckpt-00000004.h5")) && !exists(pjoin(d2, "best")),
        "keep 0 keeps all; no best without val_err");
  /* re-saving an existing step replaces it atomically */
  a.param[0] += 1;
  rn_ckpt_state s4 = mkstate(4, -1);
  CHECK(rn_ckpt_save(d2, &a, &s4, cfg_text, "", 0, &e) == RN_OK, "re-save");
  rn_model c;
  fake_model(&c, "cifar-resnet20", 10, 16, 0, 16);
  CHECK(rn_ckpt_load(pjoin(d2, "ckpt-00000004.h5"), &c, NULL, NULL, &e) == RN_OK && same_values(&a, &c), "re-save load");
  free_model(&c);
  free_model(&a);
}

int main(void) {
  /* HDF5 prints its own error stacks for the test's own deliberate failures otherwise */
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  unsetenv("RN_CKPT_FAULT");
  test_roundtrip();
  test_layout();
  test_bad_files();
  test_fallback();
  test_kill();
  test_enospc();
  test_prune();
  return tu_done("test_ckpt");
}
