#include "rn/config.h"

#include <ctype.h>
#include <string.h>

typedef enum { T_S, T_I, T_F, T_B } ktype;
typedef struct {
  const char *key;
  size_t off;
  ktype type;
  const char *def, *help;
} keydef;

#define RN_CFG_X(k, f, t, d, h) {k, offsetof(rn_config, f), T_##t, d, h},
static const keydef k_keys[] = {RN_CONFIG_KEYS(RN_CFG_X)};
#undef RN_CFG_X
#define NKEYS (sizeof k_keys / sizeof *k_keys)

typedef struct {
  const char *name, *what;
  const char *kv[24];
} preset;

/* The paper's recipes (He et al. 2015, sections 3.4 and 4.2) and the large-batch variant of
 * Goyal et al. 2017. Every key can be overridden afterwards. */
static const preset k_presets[] = {
    {"fashion-mnist", "default job: CIFAR-style ResNet-20 on Fashion-MNIST, short step schedule (minutes)",
     {"model=cifar-resnet20", "data=datasets/fashion-mnist", "val-split=test", "aug=cifar", "batch=128",
      "lr=0.1", "schedule=step-epoch", "milestones=1.5", "epochs=2", "wd=0.0001", "momentum=0.9",
      "out=checkpoints/fashion-mnist", NULL}},
    {"fashion-mnist-full", "Fashion-MNIST, ResNet-20, 30 epochs /10 at 15 and 25",
     {"model=cifar-resnet20", "data=datasets/fashion-mnist", "val-split=test", "aug=cifar", "batch=128",
      "lr=0.1", "schedule=step-epoch", "milestones=15,25", "epochs=30", "out=checkpoints/fashion-mnist-full", NULL}},
#define CIFAR_PRESET(n, extra1, extra2)                                                                     \
  {"cifar10-resnet" #n, "He et al. CIFAR-10 ResNet-" #n ": batch 128, lr 0.1, /10 at 32k and 48k, stop at 64k" \
                        " (ResNet-110: lr 0.01 until training error < 80%)",                                \
   {"model=cifar-resnet" #n, "data=datasets/cifar10", "val-split=test", "aug=cifar", "batch=128", "lr=0.1",      \
    "schedule=step-iter", "milestones=32000,48000", "steps=64000", "wd=0.0001", "momentum=0.9",                   \
    "out=checkpoints/cifar10-resnet" #n, extra1, extra2, NULL}}
    CIFAR_PRESET(20, NULL, NULL),
    CIFAR_PRESET(32, NULL, NULL),
    CIFAR_PRESET(44, NULL, NULL),
    CIFAR_PRESET(56, NULL, NULL),
    CIFAR_PRESET(110, "const-warmup-lr=0.01", "const-warmup-until=0.8"),
    CIFAR_PRESET(1202, NULL, NULL),
#undef CIFAR_PRESET
#define IMAGENET_PRESET(n, ep, ms)                                                                          \
  {"imagenet-resnet" #n, "He et al. ImageNet ResNet-" #n ": batch 256, lr 0.1, " #ep " epochs /10 at " ms \
                         ", scale augmentation",                                                        \
   {"model=resnet" #n, "data=datasets/imagenet", "val-split=val", "aug=imagenet-paper", "eval-aug=center",    \
    "crop=224", "batch=256", "lr=0.1", "lr-ref-batch=256", "schedule=step-epoch", "milestones=" ms,           \
    "epochs=" #ep, "wd=0.0001", "momentum=0.9", "out=checkpoints/imagenet-resnet" #n, NULL}}
    IMAGENET_PRESET(18, 60, "20,40,55"),
    IMAGENET_PRESET(34, 60, "20,40,55"),
    IMAGENET_PRESET(50, 60, "20,40,55"),
    IMAGENET_PRESET(101, 60, "20,40,55"),
    IMAGENET_PRESET(152, 60, "20,40,55"),
#undef IMAGENET_PRESET
    {"imagenet-resnet50-90ep", "ImageNet ResNet-50, 90 epochs /10 at 30, 60, 80",
     {"preset=imagenet-resnet50", "epochs=90", "milestones=30,60,80", "out=checkpoints/imagenet-resnet50-90ep",
      NULL}},
    {"imagenet-resnet50-goyal", "Goyal et al.: linear scaling (0.1 x batch/256), 5-epoch warm-up, zero-init residual BN, 90 epochs",
     {"preset=imagenet-resnet50", "aug=imagenet-torch", "lr-ref-batch=256", "warmup-epochs=5", "warmup-from=0.1",
      "zero-init-residual=1", "epochs=90", "milestones=30,60,80", "out=checkpoints/imagenet-resnet50-goyal", NULL}},
};
#define NPRESETS (sizeof k_presets / sizeof *k_presets)

static const keydef *find_key(const char *key) {
  for (size_t i = 0; i < NKEYS; i++)
    if (!strcmp(k_keys[i].key, key)) return &k_keys[i];
  return NULL;
}

static rn_status parse_bool(const char *key, const char *v, int *out, rn_err *e) {
  if (!strcmp(v, "1") || !strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) *out = 1;
  else if (!strcmp(v, "0") || !strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no")) *out = 0;
  else return rn_err_set(e, RN_EINVAL, "option %s: '%s' is not a boolean (use 1/0, on/off, true/false)", key, v);
  return RN_OK;
}

rn_status rn_config_set(rn_config *c, const char *key, const char *value, const char *origin, rn_err *e) {
  const keydef *k = find_key(key);
  if (!k)
    return rn_err_set(e, RN_EINVAL, "%s: unknown option '%s' (see --help for the list)", origin, key);
  if (!strcmp(key, "preset")) return rn_config_apply_preset(c, value, e);
  char *p = (char *)c + k->off;
  char what[128];
  snprintf(what, sizeof what, "%s: option %s", origin, key);
  rn_status s = RN_OK;
  switch (k->type) {
    case T_S:
      if (strlen(value) >= 256) return rn_err_set(e, RN_EINVAL, "%s: value longer than 255 characters", what);
      strcpy(p, value);
      break;
    case T_I: s = rn_parse_int(what, value, -1000000000L, 1000000000000L, (long *)p, e); break;
    case T_F: s = rn_parse_double(what, value, (double *)p, e); break;
    case T_B: s = parse_bool(what, value, (int *)p, e); break;
  }
  return s;
}

rn_status rn_config_apply_preset(rn_config *c, const char *name, rn_err *e) {
  for (size_t i = 0; i < NPRESETS; i++) {
    if (strcmp(k_presets[i].name, name)) continue;
    for (int j = 0; k_presets[i].kv[j]; j++) {
      char buf[300];
      snprintf(buf, sizeof buf, "%s", k_presets[i].kv[j]);
      char *eq = strchr(buf, '=');
      RN_ASSERT(eq);
      *eq = 0;
      char origin[96];
      snprintf(origin, sizeof origin, "preset %s", name);
      rn_status s = rn_config_set(c, buf, eq + 1, origin, e);
      if (s) return s;
    }
    snprintf(c->preset, sizeof c->preset, "%s", name);
    return RN_OK;
  }
  char list[1024] = "";
  for (size_t i = 0; i < NPRESETS; i++) {
    strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
    strncat(list, k_presets[i].name, sizeof list - strlen(list) - 1);
  }
  return rn_err_set(e, RN_EINVAL, "preset: unknown preset '%s' (valid: %s)", name, list);
}

static void set_defaults(rn_config *c) {
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < NKEYS; i++) {
    if (!strcmp(k_keys[i].key, "preset")) continue;
    rn_status s = rn_config_set(c, k_keys[i].key, k_keys[i].def, "default", NULL);
    RN_ASSERT(s == RN_OK);
  }
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *end = s + strlen(s);
  while (end > s && isspace((unsigned char)end[-1])) *--end = 0;
  return s;
}

static rn_status load_file(rn_config *c, const char *path, rn_err *e) {
  FILE *f = fopen(path, "r");
  if (!f) return rn_err_set(e, RN_EIO, "config file %s: cannot open", path);
  char line[1024];
  int ln = 0;
  rn_status s = RN_OK;
  while (!s && fgets(line, sizeof line, f)) {
    ln++;
    char *t = trim(line);
    if (!*t || *t == '#') continue;
    char *eq = strchr(t, '=');
    char origin[600];
    snprintf(origin, sizeof origin, "config file %s line %d", path, ln);
    if (!eq) {
      s = rn_err_set(e, RN_EINVAL, "%s: expected key=value, got '%s'", origin, t);
      break;
    }
    *eq = 0;
    s = rn_config_set(c, trim(t), trim(eq + 1), origin, e);
  }
  fclose(f);
  return s;
}

rn_status rn_config_from_args(rn_config *c, int argc, char **argv, rn_err *e) {
  set_defaults(c);
  /* Pass 1: the preset (it must come first so that everything else overrides it). */
  const char *preset = "fashion-mnist", *file = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strncmp(a, "--preset=", 9)) preset = a + 9;
    else if (!strcmp(a, "--preset") && i + 1 < argc) preset = argv[++i];
    else if (!strncmp(a, "--config=", 9)) file = a + 9;
    else if (!strcmp(a, "--config") && i + 1 < argc) file = argv[++i];
  }
  rn_status s = rn_config_apply_preset(c, preset, e);
  if (s) return s;
  if (file && (s = load_file(c, file, e))) return s;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strncmp(a, "--", 2))
      return rn_err_set(e, RN_EINVAL, "command line: unexpected argument '%s' (options are --key value)", a);
    char key[128];
    const char *val;
    const char *eq = strchr(a, '=');
    if (eq) {
      snprintf(key, sizeof key, "%.*s", (int)(eq - a - 2), a + 2);
      val = eq + 1;
    } else {
      snprintf(key, sizeof key, "%s", a + 2);
      if (i + 1 >= argc) return rn_err_set(e, RN_EINVAL, "command line: option --%s needs a value", key);
      val = argv[++i];
    }
    if (!strcmp(key, "preset") || !strcmp(key, "config")) continue;
    if ((s = rn_config_set(c, key, val, "command line", e))) return s;
  }
  return RN_OK;
}

char *rn_config_text(const rn_config *c) {
  size_t cap = 16384, len = 0;
  char *t = rn_alloc(cap);
  for (size_t i = 0; i < NKEYS; i++) {
    const char *p = (const char *)c + k_keys[i].off;
    char v[300];
    switch (k_keys[i].type) {
      case T_S: snprintf(v, sizeof v, "%s", p); break;
      case T_I: snprintf(v, sizeof v, "%ld", *(const long *)p); break;
      case T_F: snprintf(v, sizeof v, "%.17g", *(const double *)p); break;
      case T_B: snprintf(v, sizeof v, "%d", *(const int *)p); break;
    }
    len += (size_t)snprintf(t + len, cap - len, "%s=%s\n", k_keys[i].key, v);
    RN_ASSERT(len < cap);
  }
  return t;
}

void rn_config_help(FILE *f) {
  for (size_t i = 0; i < NKEYS; i++)
    fprintf(f, "  --%-22s %s (default: %s)\n", k_keys[i].key, k_keys[i].help,
            *k_keys[i].def ? k_keys[i].def : "\"\"");
  fprintf(f, "  --%-22s read key=value lines from FILE (after the preset, before the command line)\n", "config FILE");
}

void rn_config_list_presets(FILE *f) {
  for (size_t i = 0; i < NPRESETS; i++) fprintf(f, "  %-26s %s\n", k_presets[i].name, k_presets[i].what);
}
