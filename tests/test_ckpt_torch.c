/* scripts/ckpt_torch.py against real models (rn_model_build): checkpoint -> torch state_dict ->
 * torchvision load_state_dict(strict=True) (resnet18) and same logits as our forward -> back to a
 * checkpoint -> rn-ckpt-diff identical and rn_ckpt_load bitwise equal. Needs /usr/bin/python3
 * with h5py, torch and torchvision (Debian); missing modules are a failure, not a skip. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "rn/ckpt.h"
#include "rn/kernels.h"
#include "testutil.h"

static const char *src_dir, *bin_dir;

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...) {
  char cmd[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  printf("$ %s\n", cmd);
  fflush(stdout);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int same_values(const rn_model *a, const rn_model *b, int mom) {
  for (int i = 0; i < a->nparams; i++) {
    const rn_param *p = &a->params[i];
    if (memcmp(a->param + p->off, b->param + p->off, p->count * 4)) return 0;
    if (mom && p->trainable && memcmp(a->mom + p->off, b->mom + p->off, p->count * 4)) return 0;
  }
  return 1;
}

static int build(rn_model *m, const char *arch, int hw, int classes, uint64_t seed) {
  rn_model_config c;
  rn_err e;
  rn_model_config_default(&c);
  if (rn_model_config_arch(&c, arch, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  c.in_h = c.in_w = hw, c.num_classes = classes;
  if (rn_model_build(m, &c, 2, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  rn_model_init(m, seed);
  rn_rng r = rn_rng_make(seed * 77 + 1);
  for (size_t i = 0; i < m->ntrain; i++) m->mom[i] = rn_rng_normal(&r) * 0.01f;
  /* non-trivial BN statistics and affine parameters, so a swapped buffer changes the logits */
  for (int i = 0; i < m->nparams; i++) {
    rn_param *p = &m->params[i];
    if (!strstr(p->name, "bn") && !strstr(p->name, "downsample.1")) continue;
    for (size_t k = 0; k < p->count; k++) {
      float u = rn_rng_uniform(&r);
      float *v = m->param + p->off + k;
      if (strstr(p->name, "running_var")) *v = 0.5f + u;
      else if (strstr(p->name, "running_mean")) *v = 0.2f * (u - 0.5f);
      else if (strstr(p->name, "weight")) *v = 0.5f + u;
      else *v = 0.1f * (u - 0.5f);
    }
  }
  return 0;
}

static void one(const char *arch, int hw, int classes, int torchvision) {
  rn_model m, m2;
  rn_err e;
  if (build(&m, arch, hw, classes, 5) || build(&m2, arch, hw, classes, 6)) {
    CHECK(0, "%s: model build failed", arch);
    return;
  }
  const char *dir = tu_tmpdir("ckpt-torch");
  rn_ckpt_state st = {.epoch = 3, .step = 42, .nranks = 1, .global_batch = 8, .seed = 1, .lr = 0.1,
                      .val_err = -1, .best_val_err = -1};
  CHECK(rn_ckpt_save(dir, &m, &st, "arch=x\n", "", 0, &e) == RN_OK, "%s: save: %s", arch, e.msg);
  char ck[4096], pt[4096], back[4096], back0[4096];
  snprintf(ck, sizeof ck, "%s/ckpt-00000042.h5", dir);
  snprintf(pt, sizeof pt, "%s/model.pt", dir);
  snprintf(back, sizeof back, "%s/back.h5", dir);
  snprintf(back0, sizeof back0, "%s/back0.h5", dir);
  const char *py = "/usr/bin/python3";
  CHECK(run("%s %s/scripts/ckpt_torch.py to-torch %s %s --check", py, src_dir, ck, pt) == 0, "%s: to-torch", arch);
  if (torchvision) {
    /* same logits from torchvision (NCHW) as from our forward (NHWC), eval mode */
    int n = 2;
    float *x = rn_model_input(&m);
    rn_rng r = rn_rng_make(99);
    size_t nx = (size_t)n * hw * hw * 3;
    for (size_t i = 0; i < nx; i++) x[i] = rn_rng_normal(&r);
    char fin[4096], flg[4096];
    snprintf(fin, sizeof fin, "%s/in.f32", dir);
    snprintf(flg, sizeof flg, "%s/logits.f32", dir);
    FILE *f = fopen(fin, "wb");
    fwrite(x, 4, nx, f);
    fclose(f);
    rn_model_forward(&m, n, 0);
    f = fopen(flg, "wb");
    fwrite(rn_model_logits(&m), 4, (size_t)n * classes, f);
    fclose(f);
    CHECK(run("%s %s/scripts/ckpt_torch.py check-forward %s %s %d %s %d %d %d 3 %s --tol 1e-4", py, src_dir, pt, arch,
              classes, fin, n, hw, hw, flg) == 0,
          "%s: torchvision logits differ", arch);
  }
  CHECK(run("%s %s/scripts/ckpt_torch.py from-torch %s %s %s --momentum template", py, src_dir, pt, ck, back) == 0,
        "%s: from-torch", arch);
  CHECK(run("%s/rn-ckpt-diff %s %s", bin_dir, ck, back) == 0, "%s: rn-ckpt-diff after round trip", arch);
  CHECK(rn_ckpt_load(back, &m2, NULL, NULL, &e) == RN_OK && same_values(&m, &m2, 1), "%s: load back: %s", arch, e.msg);
  /* zero momentum: parameters identical, momentum not */
  CHECK(run("%s %s/scripts/ckpt_torch.py from-torch %s %s %s", py, src_dir, pt, ck, back0) == 0, "%s: from-torch", arch);
  CHECK(run("%s/rn-ckpt-diff %s %s --params-only", bin_dir, ck, back0) == 0, "%s: params-only diff", arch);
  CHECK(run("%s/rn-ckpt-diff %s %s > /dev/null", bin_dir, ck, back0) == 1, "%s: momentum must differ", arch);
  CHECK(run("%s/rn-ckpt-info %s > /dev/null", bin_dir, back0) == 0, "%s: rn-ckpt-info", arch);
  rn_model_free(&m);
  rn_model_free(&m2);
}

int main(void) {
  src_dir = getenv("RN_SOURCE_DIR"), bin_dir = getenv("RN_BUILD_DIR");
  if (!src_dir || !bin_dir) {
    fprintf(stderr, "test_ckpt_torch: run through ctest (RN_SOURCE_DIR/RN_BUILD_DIR unset)\n");
    return 2;
  }
  rn_err e;
  if (rn_blas_init(NULL, 2, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 2;
  }
  one("cifar-resnet20", 32, 10, 0);
  one("resnet18", 32, 7, 1);
  /* a state_dict of the wrong model is refused, naming the key */
  rn_model a, b;
  CHECK(build(&a, "cifar-resnet20", 32, 10, 1) == 0 && build(&b, "cifar-resnet20", 32, 100, 1) == 0, "build");
  const char *dir = tu_tmpdir("ckpt-torch-bad");
  rn_ckpt_state st = {.step = 1, .val_err = -1, .best_val_err = -1};
  char d1[4096], d2[4096];
  snprintf(d1, sizeof d1, "%s/a", dir);
  snprintf(d2, sizeof d2, "%s/b", dir);
  CHECK(rn_ckpt_save(d1, &a, &st, "", "", 0, &e) == RN_OK && rn_ckpt_save(d2, &b, &st, "", "", 0, &e) == RN_OK, "save");
  CHECK(run("/usr/bin/python3 %s/scripts/ckpt_torch.py to-torch %s/ckpt-00000001.h5 %s/b.pt", src_dir, d2, dir) == 0,
        "to-torch");
  CHECK(run("/usr/bin/python3 %s/scripts/ckpt_torch.py from-torch %s/b.pt %s/ckpt-00000001.h5 %s/x.h5 2> %s/err.txt; "
            "test $? = 2 && grep -q 'fc.weight has shape \\[100, 64\\] but the template expects \\[10, 64\\]' %s/err.txt",
            src_dir, dir, d1, dir, dir, dir) == 0,
        "wrong-model state_dict must be refused naming fc.weight");
  CHECK(run("test ! -e %s/x.h5 && ! ls %s/.from-torch-* 2>/dev/null", dir, dir) == 0, "no output or temp file on error");
  rn_model_free(&a);
  rn_model_free(&b);
  return tu_done("test_ckpt_torch");
}
