/* unit: SGD (PyTorch's formulation, weight-decay exemption), LR schedules (step by iteration and
 * epoch, cosine, linear warm-up, linear scaling rule, the constant warm-up of ResNet-110), and the
 * configuration (presets, override order, key=value files, errors naming key and value). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rn/config.h"
#include "rn/optim.h"
#include "testutil.h"

static void test_sgd(void) {
  /* A hand-made model: two trainable params (a weight with decay, a bias without) and a buffer. */
  rn_param ps[3] = {{.name = "w", .count = 3, .off = 0, .trainable = 1},
                    {.name = "b", .count = 2, .off = 3, .trainable = 1, .no_decay = 1},
                    {.name = "rm", .count = 2, .off = 5, .trainable = 0}};
  float param[7] = {1, -2, 0.5f, 0.25f, -1, 7, 7}, grad[5] = {0.1f, 0.2f, -0.3f, 1, -1}, mom[5] = {0};
  rn_model m;
  memset(&m, 0, sizeof m);
  m.params = ps, m.nparams = 3, m.param = param, m.grad = grad, m.mom = mom, m.ntrain = 5, m.ntotal = 7;
  double p[5], b[5] = {0};
  for (int i = 0; i < 5; i++) p[i] = param[i];
  const double lr = 0.1, mu = 0.9, wd = 0.01;
  for (int step = 0; step < 3; step++) {
    for (int i = 0; i < 5; i++) {
      double wdi = (step == 2 && i >= 3) ? 0 : wd; /* step 2 exempts the bias */
      double d = grad[i] + wdi * p[i];
      b[i] = mu * b[i] + d;
      p[i] -= lr * b[i];
    }
    rn_sgd_step(&m, (float)lr, (float)mu, (float)wd, step == 2);
  }
  double err = 0;
  for (int i = 0; i < 5; i++) err = fmax(err, fabs(p[i] - param[i]) + fabs(b[i] - mom[i]));
  CHECK(err < 1e-6, "SGD differs from PyTorch's formula by %g", err);
  CHECK(param[5] == 7 && param[6] == 7, "SGD touched a BN buffer");
}

static void test_sched(void) {
  rn_sched s = {.kind = RN_SCHED_STEP_ITER, .base_lr = 0.1, .gamma = 0.1, .nmilestones = 2,
                .milestones = {32000, 48000}, .global_batch = 128};
  CHECK(fabs(rn_sched_lr(&s, 0, 0, 1) - 0.1) < 1e-12, "step-iter start");
  CHECK(fabs(rn_sched_lr(&s, 31999, 0, 1) - 0.1) < 1e-12, "step-iter before 32k");
  CHECK(fabs(rn_sched_lr(&s, 32000, 0, 1) - 0.01) < 1e-12, "step-iter at 32k");
  CHECK(fabs(rn_sched_lr(&s, 48000, 0, 1) - 0.001) < 1e-12, "step-iter at 48k");
  /* ResNet-110: 0.01 until the training error drops below 80%, then the schedule. */
  s.const_warmup_lr = 0.01;
  CHECK(fabs(rn_sched_lr(&s, 100, 0, 0) - 0.01) < 1e-12, "constant warm-up");
  CHECK(fabs(rn_sched_lr(&s, 100, 0, 1) - 0.1) < 1e-12, "after constant warm-up");
  /* Goyal et al.: 0.1 x 1024/256, 5-epoch linear warm-up from 0.1 of the target, /10 at 30. */
  rn_sched g = {.kind = RN_SCHED_STEP_EPOCH, .base_lr = 0.1, .ref_batch = 256, .global_batch = 1024,
                .gamma = 0.1, .nmilestones = 1, .milestones = {30}, .warmup_epochs = 5, .warmup_from = 0.1};
  CHECK(fabs(rn_sched_peak_lr(&g) - 0.4) < 1e-12, "linear scaling rule");
  CHECK(fabs(rn_sched_lr(&g, 0, 0, 1) - 0.04) < 1e-12, "warm-up start %g", rn_sched_lr(&g, 0, 0, 1));
  CHECK(fabs(rn_sched_lr(&g, 0, 2.5, 1) - 0.22) < 1e-12, "warm-up middle %g", rn_sched_lr(&g, 0, 2.5, 1));
  CHECK(fabs(rn_sched_lr(&g, 0, 5, 1) - 0.4) < 1e-12, "warm-up end");
  CHECK(fabs(rn_sched_lr(&g, 0, 30, 1) - 0.04) < 1e-12, "epoch milestone");
  rn_sched c = {.kind = RN_SCHED_COSINE, .base_lr = 0.2, .total_epochs = 10};
  CHECK(fabs(rn_sched_lr(&c, 0, 0, 1) - 0.2) < 1e-12, "cosine start");
  CHECK(fabs(rn_sched_lr(&c, 0, 5, 1) - 0.1) < 1e-9, "cosine middle");
  CHECK(fabs(rn_sched_lr(&c, 0, 10, 1)) < 1e-12, "cosine end");
  rn_sched_kind k;
  rn_err e;
  CHECK(rn_sched_parse_kind("linear", &k, &e) == RN_EINVAL && strstr(e.msg, "'linear'"), "bad schedule: %s", e.msg);
}

static void test_config(void) {
  rn_config c;
  rn_err e;
  char *argv1[] = {"rn-train", "--preset", "cifar10-resnet110", "--lr=0.05", "--batch", "64", NULL};
  CHECK(rn_config_from_args(&c, 6, argv1, &e) == RN_OK, "%s", e.msg);
  CHECK(!strcmp(c.model, "cifar-resnet110") && c.steps == 64000 && !strcmp(c.milestones, "32000,48000"),
        "preset not applied: %s %ld %s", c.model, c.steps, c.milestones);
  CHECK(c.lr == 0.05 && c.batch == 64 && c.const_warmup_lr == 0.01, "override order: lr %g batch %ld", c.lr, c.batch);
  /* Presets that build on presets. */
  char *argv2[] = {"rn-train", "--preset", "imagenet-resnet50-goyal", NULL};
  CHECK(rn_config_from_args(&c, 3, argv2, &e) == RN_OK, "%s", e.msg);
  CHECK(!strcmp(c.model, "resnet50") && c.warmup_epochs == 5 && c.zero_init_residual == 1 && c.epochs == 90,
        "goyal preset");
  /* A key=value file sits between the preset and the command line. */
  char path[] = "/tmp/rn-cfg-XXXXXX";
  int fd = mkstemp(path);
  const char *txt = "# comment\nmodel = cifar-resnet56\nlr=0.2\n\nbatch=32\n";
  CHECK(write(fd, txt, strlen(txt)) == (ssize_t)strlen(txt), "write");
  close(fd);
  char *argv3[] = {"rn-train", "--config", path, "--batch", "16", NULL};
  CHECK(rn_config_from_args(&c, 5, argv3, &e) == RN_OK, "%s", e.msg);
  CHECK(!strcmp(c.model, "cifar-resnet56") && c.lr == 0.2 && c.batch == 16, "config file order");
  FILE *f = fopen(path, "w");
  fputs("lr=0.1\nbogus-key=3\n", f);
  fclose(f);
  CHECK(rn_config_from_args(&c, 3, argv3, &e) == RN_EINVAL && strstr(e.msg, "line 2") && strstr(e.msg, "bogus-key"),
        "file error must name line and key: %s", e.msg);
  f = fopen(path, "w");
  fputs("no equals sign here\n", f);
  fclose(f);
  CHECK(rn_config_from_args(&c, 3, argv3, &e) == RN_EINVAL && strstr(e.msg, "line 1"), "%s", e.msg);
  unlink(path);
  char *argv4[] = {"rn-train", "--batch", "12x", NULL};
  CHECK(rn_config_from_args(&c, 3, argv4, &e) == RN_EINVAL && strstr(e.msg, "batch") && strstr(e.msg, "12x"),
        "bad integer: %s", e.msg);
  char *argv5[] = {"rn-train", "--preset", "imagenet-resnet9000", NULL};
  CHECK(rn_config_from_args(&c, 3, argv5, &e) == RN_EINVAL && strstr(e.msg, "imagenet-resnet9000") &&
            strstr(e.msg, "cifar10-resnet56"),
        "unknown preset must list valid ones: %s", e.msg);
  char *argv6[] = {"rn-train", "--overlap", "maybe", NULL};
  CHECK(rn_config_from_args(&c, 3, argv6, &e) == RN_EINVAL && strstr(e.msg, "maybe"), "bad bool: %s", e.msg);
  char *argv7[] = {"rn-train", "--epochs", NULL};
  CHECK(rn_config_from_args(&c, 2, argv7, &e) == RN_EINVAL && strstr(e.msg, "needs a value"), "%s", e.msg);
  char *argv8[] = {"rn-train", "stray", NULL};
  CHECK(rn_config_from_args(&c, 2, argv8, &e) == RN_EINVAL && strstr(e.msg, "stray"), "%s", e.msg);
  /* The resolved text parses back to the same configuration. */
  char *argv9[] = {"rn-train", "--preset", "fashion-mnist", "--label-smoothing", "0.1", NULL};
  CHECK(rn_config_from_args(&c, 5, argv9, &e) == RN_OK, "%s", e.msg);
  char *t = rn_config_text(&c), *orig = strdup(t);
  rn_config c2;
  char *argv10[] = {"rn-train", NULL};
  rn_config_from_args(&c2, 1, argv10, &e);
  int bad = 0;
  for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n")) {
    char *eq = strchr(line, '=');
    *eq = 0;
    if (strcmp(line, "preset")) bad |= rn_config_set(&c2, line, eq + 1, "round trip", &e) != RN_OK;
  }
  rn_free(t);
  char *t2 = rn_config_text(&c2);
  CHECK(!bad && !strcmp(orig, t2), "configuration text does not round-trip");
  rn_free(t2);
  free(orig);
}

int main(void) {
  test_sgd();
  test_sched();
  test_config();
  return tu_done("test_optim_config");
}
