/* model: configuration, graph construction, memory planning, init, summary.
 *
 * Graph (post-activation, torchvision):
 *   stem      conv1 -> bn1 -> relu [-> maxpool (ImageNet)]
 *   basic     conv1 -> bn1 -> relu -> conv2 -> bn2 -> add(shortcut) -> relu
 *   bottleneck conv1(1x1) -> bn1 -> relu -> conv2(3x3) -> bn2 -> relu -> conv3(1x1) -> bn3 -> add -> relu
 *   shortcut  identity | downsample.0 (conv 1x1, stride) -> downsample.1 (bn) | option A (pad/subsample)
 *   head      avgpool -> fc
 * Pre-activation (He et al. 2016, "Identity mappings"; fb.resnet.torch preresnet):
 *   stem      ImageNet: conv1 -> bn1 -> relu -> maxpool; CIFAR: conv1 only
 *   basic     bn1 -> relu -> conv1 -> bn2 -> relu -> conv2 -> add
 *   bottleneck bn1 -> relu -> conv1 -> bn2 -> relu -> conv2 -> bn3 -> relu -> conv3 -> add
 *   shortcut  identity / option A on the block input x; projection "downsample.0" (conv only, no BN)
 *             on the pre-activated input relu(bn1(x)) as in the paper's code
 *   head      final_bn -> relu -> avgpool -> fc   (names: "final_bn.weight", ...)
 * Plain twins drop the shortcut and the add (post-activation: ... bn2 -> relu).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/model.h"

const char *rn_op_name(rn_op op) {
  switch (op) {
    case RN_OP_CONV: return "conv";
    case RN_OP_BN: return "bn";
    case RN_OP_RELU: return "relu";
    case RN_OP_MAXPOOL: return "maxpool";
    case RN_OP_AVGPOOL: return "avgpool";
    case RN_OP_LINEAR: return "linear";
    case RN_OP_ADD: return "add";
    case RN_OP_SHORTCUT_A: return "shortcut_a";
  }
  return "?";
}

const char *rn_node_kind(const rn_node *n) {
  if (n->relu && n->op == RN_OP_BN) return "bn+relu";
  if (n->op == RN_OP_ADD && n->bn_add) return n->relu ? "bn+add+relu" : "bn+add";
  if (n->relu && n->op == RN_OP_ADD) return "add+relu";
  return rn_op_name(n->op);
}

/* Fusion setting: -1 = not decided yet (environment RN_FUSE, read once). */
static int g_fusion = -1;
int rn_model_set_fusion(int on) {
  int prev = g_fusion;
  g_fusion = on < 0 ? -1 : on > 3 ? 3 : on;
  return prev;
}
/* Recompute setting: -1 = not decided yet (environment RN_RECOMPUTE, read once). */
static int g_recompute = -1;
int rn_model_set_recompute(int on) {
  int prev = g_recompute;
  g_recompute = on < 0 ? -1 : on > 0;
  return prev;
}
/* Recompute budget: MB the arena may grow above the planned peak to keep the costliest replays
 * (-1 = not decided yet: environment RN_RECOMPUTE_MB, read once; default 0). */
static double g_recompute_mb = -1;
double rn_model_set_recompute_mb(double mb) {
  double prev = g_recompute_mb;
  g_recompute_mb = mb < 0 || !(mb == mb) ? -1 : mb;
  return prev;
}
static double recompute_mb(void) {
  static double env = -1;
  if (g_recompute_mb >= 0) return g_recompute_mb;
  if (env < 0) {
    const char *s = getenv("RN_RECOMPUTE_MB");
    char *end = NULL;
    double v = s && *s ? strtod(s, &end) : 0;
    env = s && *s && end && !*end && v >= 0 ? v : 0;
  }
  return env;
}
double rn_model_recompute_all_mb(const rn_model *m) {
  /* rounded up to 0.1 MB, so that the figure printed is itself a budget that keeps them all */
  return ceil((double)m->recompute_all_floats * sizeof(float) / 1e5) / 10;
}
static int recompute_on(void) {
  static int env = -1;
  if (g_recompute >= 0) return g_recompute;
  if (env < 0) {
    const char *s = getenv("RN_RECOMPUTE");
    env = s && !strcmp(s, "0") ? 0 : 1;
  }
  return env;
}

/* Branch-BN gradient over its input (RN_DX_OVER_X): -1 = not decided yet (environment, read once). */
static int g_dx_over_x = -1;
int rn_model_set_dx_over_input(int on) {
  int prev = g_dx_over_x;
  g_dx_over_x = on < 0 ? -1 : on > 0;
  return prev;
}
static int dx_over_x_on(void) {
  static int env = -1;
  if (g_dx_over_x >= 0) return g_dx_over_x;
  if (env < 0) {
    const char *s = getenv("RN_DX_OVER_X");
    env = s && !strcmp(s, "0") ? 0 : 1;
  }
  return env;
}

static int fusion_on(void) {
  static int env = -1;
  if (g_fusion >= 0) return g_fusion;
  if (env < 0) {
    const char *s = getenv("RN_FUSE");
    env = s && !strcmp(s, "0") ? 0 : s && !strcmp(s, "1") ? 1 : s && !strcmp(s, "2") ? 2 : 3;
  }
  return env;
}

void rn_model_config_default(rn_model_config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->arch, sizeof c->arch, "resnet50");
  c->depth = 50;
  c->bottleneck = 1;
  c->shortcut = RN_SHORTCUT_B;
  c->sd_pl = 1.0f;
  c->bn_momentum = 0.1f;
  c->bn_eps = 1e-5f;
}

#define RN_VALID_ARCHS                                                                            \
  "resnet18, resnet34, resnet50, resnet101, resnet152, plain18, plain34, plain50, plain101, "      \
  "plain152, cifar-resnet<6n+2> (e.g. cifar-resnet20, 32, 44, 56, 110, 1202), cifar-plain<6n+2>"

static int parse_depth(const char *s, int *out) {
  if (!*s) return 0;
  long v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return 0;
    v = v * 10 + (*p - '0');
    if (v > 100000) return 0;
  }
  *out = (int)v;
  return 1;
}

rn_status rn_model_config_arch(rn_model_config *c, const char *arch, rn_err *e) {
  if (!arch) arch = "";
  int depth = 0, cifar = 0, plain = 0;
  const char *num = NULL;
  if (!strncmp(arch, "cifar-resnet", 12)) cifar = 1, num = arch + 12;
  else if (!strncmp(arch, "cifar-plain", 11)) cifar = 1, plain = 1, num = arch + 11;
  else if (!strncmp(arch, "resnet", 6)) num = arch + 6;
  else if (!strncmp(arch, "plain", 5)) plain = 1, num = arch + 5;
  if (!num || !parse_depth(num, &depth))
    return rn_err_set(e, RN_EINVAL, "model: unknown architecture '%s' (valid: %s)", arch, RN_VALID_ARCHS);
  if (cifar) {
    if (depth < 8 || (depth - 2) % 6 != 0)
      return rn_err_set(e, RN_EINVAL,
                        "model: architecture '%s': CIFAR depth %d is not of the form 6n+2 with n >= 1 "
                        "(valid: %s)", arch, depth, RN_VALID_ARCHS);
  } else if (depth != 18 && depth != 34 && depth != 50 && depth != 101 && depth != 152) {
    return rn_err_set(e, RN_EINVAL, "model: architecture '%s': ImageNet depth %d is not one of 18, 34, 50, "
                      "101, 152 (valid: %s)", arch, depth, RN_VALID_ARCHS);
  }
  if (strlen(arch) >= sizeof c->arch)
    return rn_err_set(e, RN_EINVAL, "model: architecture name '%s' too long", arch);
  snprintf(c->arch, sizeof c->arch, "%s", arch);
  c->depth = depth;
  c->cifar = cifar;
  c->plain = plain;
  c->bottleneck = !cifar && depth >= 50;
  c->shortcut = cifar ? RN_SHORTCUT_A : RN_SHORTCUT_B;
  return RN_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Builder: growable arrays (allocation only at build time). */
typedef struct {
  rn_model *m;
  int cap_nodes, cap_tensors, cap_params;
  rn_err *e;
  rn_status st;
} builder;

static void *grow(void *p, int *cap, int need, size_t elem) {
  if (need <= *cap) return p;
  int nc = *cap ? *cap * 2 : 64;
  while (nc < need) nc *= 2;
  void *q = realloc(p, (size_t)nc * elem);
  RN_ASSERT(q);
  memset((char *)q + (size_t)*cap * elem, 0, (size_t)(nc - *cap) * elem);
  *cap = nc;
  return q;
}

static int new_tensor(builder *b, int h, int w, int c) {
  rn_model *m = b->m;
  m->tensors = grow(m->tensors, &b->cap_tensors, m->ntensors + 1, sizeof(rn_tensor));
  rn_tensor *t = &m->tensors[m->ntensors];
  t->h = h, t->w = w, t->c = c;
  return m->ntensors++;
}

static int new_param(builder *b, const char *module, const char *leaf, int ndim, const int *dims,
                     int trainable, int no_decay, int ohwi) {
  rn_model *m = b->m;
  m->params = grow(m->params, &b->cap_params, m->nparams + 1, sizeof(rn_param));
  rn_param *p = &m->params[m->nparams];
  snprintf(p->name, sizeof p->name, "%s.%s", module, leaf);
  p->ndim = ndim;
  p->count = 1;
  for (int i = 0; i < ndim; i++) p->dims[i] = dims[i], p->count *= (size_t)dims[i];
  p->trainable = trainable;
  p->no_decay = no_decay;
  p->ohwi = ohwi;
  return m->nparams++;
}

static rn_node *new_node(builder *b, rn_op op, const char *name, int in, int in2) {
  rn_model *m = b->m;
  m->nodes = grow(m->nodes, &b->cap_nodes, m->nnodes + 1, sizeof(rn_node));
  rn_node *n = &m->nodes[m->nnodes++];
  n->op = op;
  snprintf(n->name, sizeof n->name, "%s", name ? name : "");
  n->in = in, n->in2 = in2, n->out = -1;
  for (int i = 0; i < 4; i++) n->param[i] = -1;
  n->block = -1;
  n->survival = 1.0f;
  n->scale = 1.0f;
  return n;
}

static int conv(builder *b, const char *name, int x, int cout, int k, int stride, int pad) {
  if (b->st) return x;
  rn_tensor t = b->m->tensors[x];
  rn_conv_desc d;
  if (rn_conv_desc_init(&d, t.c, cout, k, k, stride, pad, t.h, t.w, b->e)) {
    b->st = rn_err_prefix(b->e, "model %s: layer %s (input %dx%dx%d)", b->m->cfg.arch, name, t.h, t.w, t.c);
    return x;
  }
  int dims[4] = {cout, t.c, k, k};
  int w = new_param(b, name, "weight", 4, dims, 1, 0, 1);
  int y = new_tensor(b, d.oh, d.ow, cout);
  rn_node *n = new_node(b, RN_OP_CONV, name, x, -1);
  n->u.conv = d;
  n->param[0] = w;
  n->out = y;
  return y;
}

static int bn(builder *b, const char *name, int x) {
  if (b->st) return x;
  rn_tensor t = b->m->tensors[x];
  int dims[1] = {t.c};
  int g = new_param(b, name, "weight", 1, dims, 1, 1, 0);
  int be = new_param(b, name, "bias", 1, dims, 1, 1, 0);
  int rm = new_param(b, name, "running_mean", 1, dims, 0, 1, 0);
  int rv = new_param(b, name, "running_var", 1, dims, 0, 1, 0);
  int y = new_tensor(b, t.h, t.w, t.c);
  rn_node *n = new_node(b, RN_OP_BN, name, x, -1);
  n->u.bn.c = t.c;
  n->u.bn.momentum = b->m->cfg.bn_momentum;
  n->u.bn.eps = b->m->cfg.bn_eps;
  n->param[0] = g, n->param[1] = be, n->param[2] = rm, n->param[3] = rv;
  n->out = y;
  return y;
}

static int relu(builder *b, int x) {
  if (b->st) return x;
  rn_tensor t = b->m->tensors[x];
  int y = new_tensor(b, t.h, t.w, t.c);
  rn_node *n = new_node(b, RN_OP_RELU, "", x, -1);
  n->out = y;
  return y;
}

static int maxpool(builder *b, int x) {
  if (b->st) return x;
  rn_tensor t = b->m->tensors[x];
  rn_pool_desc d;
  if (rn_pool_desc_init(&d, t.c, t.h, t.w, 3, 2, 1, b->e)) {
    b->st = rn_err_prefix(b->e, "model %s: maxpool (input %dx%dx%d)", b->m->cfg.arch, t.h, t.w, t.c);
    return x;
  }
  int y = new_tensor(b, d.oh, d.ow, t.c);
  rn_node *n = new_node(b, RN_OP_MAXPOOL, "", x, -1);
  n->u.pool = d;
  n->out = y;
  return y;
}

static int shortcut_a(builder *b, int x, int cout, int stride) {
  if (b->st) return x;
  rn_tensor t = b->m->tensors[x];
  rn_shortcut_a_desc d;
  if (rn_shortcut_a_desc_init(&d, t.c, cout, t.h, t.w, stride, b->e)) {
    b->st = rn_err_prefix(b->e, "model %s: option-A shortcut", b->m->cfg.arch);
    return x;
  }
  int y = new_tensor(b, d.oh, d.ow, cout);
  rn_node *n = new_node(b, RN_OP_SHORTCUT_A, "", x, -1);
  n->u.sa = d;
  n->out = y;
  return y;
}

static int add(builder *b, int sc, int branch, int block, float survival) {
  if (b->st) return sc;
  rn_tensor ts = b->m->tensors[sc], tb = b->m->tensors[branch];
  if (ts.h != tb.h || ts.w != tb.w || ts.c != tb.c) {
    b->st = rn_err_set(b->e, RN_EINVAL, "model %s: block %d: shortcut %dx%dx%d does not match branch %dx%dx%d",
                       b->m->cfg.arch, block, ts.h, ts.w, ts.c, tb.h, tb.w, tb.c);
    return sc;
  }
  int y = new_tensor(b, tb.h, tb.w, tb.c);
  rn_node *n = new_node(b, RN_OP_ADD, "", sc, branch);
  n->block = block;
  n->survival = survival;
  n->out = y;
  return y;
}

/* One residual block. x: block input. Returns the block output. */
static int block(builder *b, const char *pre, int x, int planes, int stride, int blk, int is_first) {
  const rn_model_config *c = &b->m->cfg;
  char nm[96];
#define NM(s) (snprintf(nm, sizeof nm, "%s.%s", pre, s), nm)
  int cin = b->m->tensors[x].c;
  int expansion = c->bottleneck ? 4 : 1;
  int cout = planes * expansion;
  int shape_change = stride != 1 || cin != cout;
  int proj = !c->plain && (c->shortcut == RN_SHORTCUT_C || (c->shortcut == RN_SHORTCUT_B && shape_change));
  int opt_a = !c->plain && !proj && shape_change; /* option A where shapes change */
  (void)is_first;
  float surv = 1.0f;
  if (c->sd_pl < 1.0f && !c->plain)
    surv = 1.0f - (float)(blk + 1) / (float)b->m->nblocks * (1.0f - c->sd_pl);
  int s1 = c->stride_in_1x1 ? stride : 1, s3 = c->stride_in_1x1 ? 1 : stride;
  int y, sc = x;
  if (!c->preact) {
    if (!c->bottleneck) {
      y = conv(b, NM("conv1"), x, planes, 3, stride, 1);
      y = relu(b, bn(b, NM("bn1"), y));
      y = conv(b, NM("conv2"), y, planes, 3, 1, 1);
      y = bn(b, NM("bn2"), y);
    } else {
      y = conv(b, NM("conv1"), x, planes, 1, s1, 0);
      y = relu(b, bn(b, NM("bn1"), y));
      y = conv(b, NM("conv2"), y, planes, 3, s3, 1);
      y = relu(b, bn(b, NM("bn2"), y));
      y = conv(b, NM("conv3"), y, cout, 1, 1, 0);
      y = bn(b, NM("bn3"), y);
    }
    if (c->plain) return relu(b, y);
    if (proj) {
      sc = conv(b, NM("downsample.0"), x, cout, 1, stride, 0);
      sc = bn(b, NM("downsample.1"), sc);
    } else if (opt_a) {
      sc = shortcut_a(b, x, cout, stride);
    }
    return relu(b, add(b, sc, y, blk, surv));
  }
  /* pre-activation */
  int a = relu(b, bn(b, NM("bn1"), x));
  if (!c->bottleneck) {
    y = conv(b, NM("conv1"), a, planes, 3, stride, 1);
    y = relu(b, bn(b, NM("bn2"), y));
    y = conv(b, NM("conv2"), y, planes, 3, 1, 1);
  } else {
    y = conv(b, NM("conv1"), a, planes, 1, s1, 0);
    y = relu(b, bn(b, NM("bn2"), y));
    y = conv(b, NM("conv2"), y, planes, 3, s3, 1);
    y = relu(b, bn(b, NM("bn3"), y));
    y = conv(b, NM("conv3"), y, cout, 1, 1, 0);
  }
  if (c->plain) return y;
  if (proj) sc = conv(b, NM("downsample.0"), a, cout, 1, stride, 0);
  else if (opt_a) sc = shortcut_a(b, x, cout, stride);
  return add(b, sc, y, blk, surv);
#undef NM
}

static void build_graph(builder *b) {
  rn_model *m = b->m;
  const rn_model_config *c = &m->cfg;
  static const int layers18[4] = {2, 2, 2, 2}, layers34[4] = {3, 4, 6, 3}, layers101[4] = {3, 4, 23, 3},
                   layers152[4] = {3, 8, 36, 3};
  int nstages, per[4];
  if (c->cifar) {
    nstages = 3;
    for (int i = 0; i < 3; i++) per[i] = (c->depth - 2) / 6;
  } else {
    nstages = 4;
    const int *l = c->depth == 18 ? layers18 : c->depth == 101 ? layers101 : c->depth == 152 ? layers152 : layers34;
    memcpy(per, l, sizeof per);
  }
  m->nblocks = 0;
  for (int i = 0; i < nstages; i++) m->nblocks += per[i];
  int width = c->width;

  int x = new_tensor(b, c->in_h, c->in_w, c->in_channels);
  m->input = x;
  if (c->cifar) {
    x = conv(b, "conv1", x, width, 3, 1, 1);
    if (!c->preact) x = relu(b, bn(b, "bn1", x));
  } else {
    x = conv(b, "conv1", x, width, 7, 2, 3);
    x = relu(b, bn(b, "bn1", x));
    x = maxpool(b, x);
  }
  int blk = 0;
  for (int s = 0; s < nstages; s++) {
    for (int j = 0; j < per[s]; j++) {
      char pre[32];
      snprintf(pre, sizeof pre, "layer%d.%d", s + 1, j);
      x = block(b, pre, x, width << s, (s > 0 && j == 0) ? 2 : 1, blk++, j == 0);
    }
  }
  if (c->preact) x = relu(b, bn(b, "final_bn", x));
  if (b->st) return;
  /* global average pool */
  rn_tensor t = m->tensors[x];
  int p = new_tensor(b, 1, 1, t.c);
  rn_node *n = new_node(b, RN_OP_AVGPOOL, "", x, -1);
  n->out = p;
  /* fc */
  int dw[2] = {c->num_classes, t.c}, db[1] = {c->num_classes};
  int w = new_param(b, "fc", "weight", 2, dw, 1, 0, 0);
  int bi = new_param(b, "fc", "bias", 1, db, 1, 1, 0);
  int y = new_tensor(b, 1, 1, c->num_classes);
  n = new_node(b, RN_OP_LINEAR, "fc", p, -1);
  n->u.lin.in = t.c;
  n->u.lin.out = c->num_classes;
  n->param[0] = w, n->param[1] = bi;
  n->out = y;
  m->logits = y;
}

/* ------------------------------------------------------------------------------------------ */
/* Fusion: a ReLU whose input is produced by a BN or add node and read by nothing else is merged
 * into that node (node->relu = 1, node->out = the ReLU's output); the ReLU node is removed. The
 * pre-ReLU tensor stays in the tensor list, unused (no producer, no consumer: plan() gives it no
 * memory). Tensor ids of everything else, parameters and names are unchanged. */
static void fuse(rn_model *m) {
  int T = m->ntensors;
  int *nuse = calloc((size_t)T, sizeof(int)), *producer = malloc((size_t)T * sizeof(int));
  RN_ASSERT(nuse && producer);
  for (int t = 0; t < T; t++) producer[t] = -1;
  for (int k = 0; k < m->nnodes; k++) {
    nuse[m->nodes[k].in]++;
    if (m->nodes[k].in2 >= 0) nuse[m->nodes[k].in2]++;
  }
  int w = 0;
  for (int k = 0; k < m->nnodes; k++) {
    rn_node n = m->nodes[k];
    int p = n.op == RN_OP_RELU ? producer[n.in] : -1;
    if (p >= 0 && nuse[n.in] == 1 && (m->nodes[p].op == RN_OP_BN || m->nodes[p].op == RN_OP_ADD) &&
        !m->nodes[p].relu) {
      rn_node *q = &m->nodes[p];
      q->relu = 1;
      if (q->op == RN_OP_BN) q->u.bn.relu = 1;
      q->out = n.out;
      producer[n.in] = -1;
      producer[n.out] = p;
      continue;
    }
    m->nodes[w] = n;
    producer[n.out] = w++;
  }
  m->nnodes = w;
  free(nuse);
  free(producer);
}

/* Fusion level 2: the BN producing an add's branch input (in2), read by nothing else and without a
 * fused ReLU, is merged into the add (node->bn_add = 1): the add takes the BN's input as in2, its
 * parameters, descriptor and name, and runs where the add ran (the BN's input, a conv output, is
 * kept for the BN backward anyway). The BN's output tensor is left unused; the BN node is removed.
 * Blocks with a projection shortcut keep their separate BN (see the loop). */
static void fuse_bn_add(rn_model *m) {
  int T = m->ntensors;
  int *nuse = calloc((size_t)T, sizeof(int)), *producer = malloc((size_t)T * sizeof(int));
  char *drop = calloc((size_t)m->nnodes, 1);
  RN_ASSERT(nuse && producer && drop);
  for (int t = 0; t < T; t++) producer[t] = -1;
  for (int k = 0; k < m->nnodes; k++) {
    nuse[m->nodes[k].in]++;
    if (m->nodes[k].in2 >= 0) nuse[m->nodes[k].in2]++;
    producer[m->nodes[k].out] = k;
  }
  for (int k = 0; k < m->nnodes; k++) {
    rn_node *a = &m->nodes[k];
    if (a->op != RN_OP_ADD || a->bn_add) continue;
    int p = producer[a->in2];
    if (p < 0 || nuse[a->in2] != 1 || m->nodes[p].op != RN_OP_BN || m->nodes[p].relu) continue;
    /* Also across a projection shortcut (its conv and BN run between the BN and the add): the BN's
     * gradients are then final before the projection's, and the backward reports them once those
     * are too (rn_model_backward keeps the grad-ready ranges descending). */
    const rn_node *b = &m->nodes[p];
    a->bn_add = 1;
    a->u.bn = b->u.bn;
    a->u.bn.relu = a->relu;
    for (int i = 0; i < 4; i++) a->param[i] = b->param[i];
    memcpy(a->name, b->name, sizeof a->name);
    a->in2 = b->in;
    drop[p] = 1;
  }
  int w = 0;
  for (int k = 0; k < m->nnodes; k++)
    if (!drop[k]) m->nodes[w++] = m->nodes[k];
  m->nnodes = w;
  free(nuse);
  free(producer);
  free(drop);
}

/* ------------------------------------------------------------------------------------------ */
/* Planning */

static size_t tsize(const rn_model *m, int t) {
  const rn_tensor *x = &m->tensors[t];
  return rn_align16((size_t)m->batch * (size_t)x->h * (size_t)x->w * (size_t)x->c);
}

/* Gradient arena placement (offline, greedy by size): every tensor that has a consumer has a
 * gradient, live over the node indices [producer, last consumer] (backward runs from its last
 * consumer, which writes it first, down to its producer, which reads it last). A tensor t with
 * root[t] != t shares the buffer of root[t] (in-place backward, see plan()); a group is placed as
 * one buffer live over the union of its members' intervals. Groups are placed largest first, each
 * at the lowest offset where it overlaps no already placed group whose live interval intersects
 * its own. Ties between equal sizes are broken in four orders (by id, by start, by end
 * descending, by length descending), the smallest arena wins (first one on equal sizes). Returns
 * the arena size (floats). */
static size_t place_order(rn_model *m, const int *ord, int n, const int *lo, const int *hi, size_t *goff, size_t *b0,
                          size_t *b1) {
  size_t peak = 0;
  for (int i = 0; i < n; i++) {
    int t = ord[i], nb = 0;
    size_t size = tsize(m, t);
    for (int j = 0; j < i; j++) { /* placed groups live at the same time, sorted by offset */
      int u = ord[j];
      if ((lo[t] > lo[u] ? lo[t] : lo[u]) > (hi[t] < hi[u] ? hi[t] : hi[u])) continue;
      size_t o = goff[u], e = o + tsize(m, u);
      int q = nb++;
      while (q > 0 && b0[q - 1] > o) b0[q] = b0[q - 1], b1[q] = b1[q - 1], q--;
      b0[q] = o, b1[q] = e;
    }
    size_t off = 0;
    for (int q = 0; q < nb && b0[q] < off + size; q++)
      if (b1[q] > off) off = b1[q];
    goff[t] = off;
    if (off + size > peak) peak = off + size;
  }
  return peak;
}

static size_t place_grads(rn_model *m, const int *producer, const int *born, const int *root) {
  int T = m->ntensors, n = 0;
  int *ord = malloc((size_t)T * sizeof(int)), *lo = malloc((size_t)T * sizeof(int)), *hi = malloc((size_t)T * sizeof(int));
  size_t *b0 = malloc((size_t)T * sizeof(size_t)), *b1 = malloc((size_t)T * sizeof(size_t));
  size_t *goff = malloc((size_t)T * sizeof(size_t)), *best_goff = malloc((size_t)T * sizeof(size_t));
  RN_ASSERT(ord && lo && hi && b0 && b1 && goff && best_goff);
  for (int t = 0; t < T; t++) lo[t] = T + 1, hi[t] = -2;
  for (int t = 0; t < T; t++) {
    if (born[t] < 0) continue;
    int r = root[t];
    RN_ASSERT(born[r] >= 0 && tsize(m, r) == tsize(m, t));
    if (producer[t] < lo[r]) lo[r] = producer[t];
    if (born[t] > hi[r]) hi[r] = born[t];
  }
  size_t best = (size_t)-1;
  for (int tie = 0; tie < 4; tie++) {
    n = 0;
    for (int t = 0; t < T; t++)
      if (born[t] >= 0 && root[t] == t) ord[n++] = t;
    for (int i = 1; i < n; i++) { /* insertion sort (stable): size descending, then the tie order */
      int t = ord[i], j = i;
      for (; j > 0; j--) {
        int u = ord[j - 1];
        size_t st = tsize(m, t), su = tsize(m, u);
        int before = st > su;
        if (st == su) {
          if (tie == 1) before = lo[t] < lo[u];
          else if (tie == 2) before = hi[t] > hi[u];
          else if (tie == 3) before = hi[t] - lo[t] > hi[u] - lo[u];
        }
        if (!before) break;
        ord[j] = u;
      }
      ord[j] = t;
    }
    size_t peak = place_order(m, ord, n, lo, hi, goff, b0, b1);
    if (peak < best) {
      best = peak;
      memcpy(best_goff, goff, (size_t)T * sizeof(size_t));
    }
  }
  for (int t = 0; t < T; t++) m->tensors[t].goff = born[t] >= 0 ? best_goff[root[t]] : (size_t)-1;
  free(ord);
  free(lo);
  free(hi);
  free(b0);
  free(b1);
  free(goff);
  free(best_goff);
  return best;
}

/* 1 if node n's backward reads its own output (ReLU: the mask). */
static int needs_output(const rn_node *n) {
  return n->op == RN_OP_RELU || ((n->op == RN_OP_BN || n->op == RN_OP_ADD) && n->relu);
}

/* 1 if node n's backward reads its input activation(s). */
static int needs_input(const rn_node *n) {
  return n->op == RN_OP_CONV || n->op == RN_OP_BN || n->op == RN_OP_LINEAR;
}

/* 1 if node n's backward reads its input in2 (a fused BN+add: the BN's input). */
static int needs_input2(const rn_node *n) { return n->op == RN_OP_ADD && n->bn_add; }

/* 1 if node n's backward may write d(in) over d(out) (same shape, acc_in = 0; see plan()). */
static int inplace_grad(const rn_node *n) {
  return n->op == RN_OP_ADD || n->op == RN_OP_BN || n->op == RN_OP_RELU;
}

/* Tensor t may be overwritten in place by its only consumer: it has a producer node, exactly one
 * consumer, and the producer's backward does not read it. (Its consumer is elementwise: the
 * caller's business.) */
static int private_in(const rn_model *m, const int *nuse, const int *producer, int t) {
  return nuse[t] == 1 && producer[t] >= 0 && !needs_output(&m->nodes[producer[t]]) && !m->nodes[producer[t]].lazy;
}

/* ------------------------------------------------------------------------------------------ */
/* Activation arena: liveness planning with recompute.
 *
 * Time runs over the forward (node k at time k) and then the backward (node k at time 2N-1-k).
 * Tensors that share a buffer (in-place forward, below) form a group, placed as one buffer. A
 * group is kept from its first producer to its last reader: the last forward reader, or the
 * earliest node (in node order) whose backward reads it, whichever comes later in time. A
 * recomputed group (rn_node.rp_at) instead has two buffers: a forward one, live until its last
 * forward reader, and a backward one that its replay writes just before the backward of the
 * highest node reading it in the backward (or of a recomputed group reading it, whichever is
 * first), live until its last backward reader. Only groups produced by cheap elementwise nodes
 * (BN, add, ReLU, option-A shortcut) are recomputed, and only where that lowers the peak: all
 * candidates start recomputed, then each one (those replayed first in the backward first) is kept
 * instead when that leaves the peak unchanged. Buffers are placed largest first at the lowest
 * offset free over their live interval (place_items). */

typedef struct {
  size_t size, off;
  int lo, hi;
} act_item;

static int cmp_range(const void *a, const void *b) {
  const size_t *x = a, *y = b;
  return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Places items in the order ord (greedy lowest fit); returns the arena size. buf: 2n scratch. */
static size_t place_in_order(act_item *it, const int *ord, int n, size_t *buf) {
  size_t peak = 0;
  for (int i = 0; i < n; i++) {
    act_item *a = &it[ord[i]];
    int nb = 0;
    for (int j = 0; j < i; j++) {
      const act_item *b = &it[ord[j]];
      if (a->lo > b->hi || b->lo > a->hi) continue;
      buf[2 * nb] = b->off, buf[2 * nb + 1] = b->off + b->size;
      nb++;
    }
    qsort(buf, (size_t)nb, 2 * sizeof(size_t), cmp_range);
    size_t off = 0;
    for (int q = 0; q < nb && buf[2 * q] < off + a->size; q++)
      if (buf[2 * q + 1] > off) off = buf[2 * q + 1];
    a->off = off;
    if (off + a->size > peak) peak = off + a->size;
  }
  return peak;
}

static const act_item *g_items;
static int g_tie;
static int cmp_item(const void *pa, const void *pb) {
  const act_item *a = &g_items[*(const int *)pa], *b = &g_items[*(const int *)pb];
  if (a->size != b->size) return a->size > b->size ? -1 : 1;
  int d = 0;
  if (g_tie == 1) d = a->lo - b->lo;
  else if (g_tie == 2) d = b->hi - a->hi;
  else if (g_tie == 3) d = (b->hi - b->lo) - (a->hi - a->lo);
  if (d) return d;
  return *(const int *)pa - *(const int *)pb;
}

/* Largest first; ties in `ties` orders (1: by index only; 4: also by start, end descending, length
 * descending), the smallest arena wins. Leaves the winning offsets in it[]. */
static size_t place_items(act_item *it, int n, int ties) {
  int *ord = malloc((size_t)(n ? n : 1) * sizeof(int));
  size_t *buf = malloc((size_t)(n ? n : 1) * 2 * sizeof(size_t)), *best_off = malloc((size_t)(n ? n : 1) * sizeof(size_t));
  RN_ASSERT(ord && buf && best_off);
  size_t best = (size_t)-1;
  for (int tie = 0; tie < ties; tie++) {
    for (int i = 0; i < n; i++) ord[i] = i;
    g_items = it, g_tie = tie;
    qsort(ord, (size_t)n, sizeof(int), cmp_item);
    size_t peak = place_in_order(it, ord, n, buf);
    if (peak < best) {
      best = peak;
      for (int i = 0; i < n; i++) best_off[i] = it[i].off;
    }
  }
  for (int i = 0; i < n; i++) it[i].off = best_off[i];
  free(ord);
  free(buf);
  free(best_off);
  return n ? best : 0;
}

/* 1 if node n can be replayed in the backward from its inputs (elementwise, no state but the BN's
 * coefficients, which rc_coef keeps). */
static int replayable(const rn_node *n) {
  return (n->op == RN_OP_BN && !n->lazy) || n->op == RN_OP_ADD || n->op == RN_OP_RELU || n->op == RN_OP_SHORTCUT_A;
}

/* Calls f(t) for every activation tensor node k's backward may read (a superset is safe: it only
 * keeps a tensor longer). */
#define BWD_READS(m, k, f)                                                                             \
  do {                                                                                                 \
    const rn_node *n_ = &(m)->nodes[k];                                                                \
    if (needs_input(n_)) f(n_->in);                                                                    \
    if (needs_input2(n_)) f(n_->in2);                                                                  \
    if (needs_output(n_) || (n_->op == RN_OP_MAXPOOL && n_->pre_bn >= 0)) f(n_->out);                  \
    if (n_->op == RN_OP_ADD && n_->pre_bn >= 0) f((m)->nodes[n_->pre_bn].in); /* lazy shortcut BN */    \
    if (n_->op == RN_OP_CONV) {                                                                        \
      if (n_->pre_bn >= 0) f((m)->nodes[n_->pre_bn].in);                                               \
      for (int q_ = 0; q_ < (m)->nnodes; q_++) /* bn_prev (set after plan): the BN's input */          \
        if ((m)->nodes[q_].out == n_->in && ((m)->nodes[q_].op == RN_OP_BN || (m)->nodes[q_].bn_add)) \
          f((m)->nodes[q_].bn_add ? (m)->nodes[q_].in2 : (m)->nodes[q_].in);                           \
    }                                                                                                  \
  } while (0)

typedef struct {
  int G;               /* groups */
  int *members, *mstart; /* members of group g: members[mstart[g] .. mstart[g+1]) by producer order */
  int *lo, *fend;      /* first producer, last forward use (times) */
  int *bmin, *bmax;    /* lowest / highest node whose backward reads a member (-1: none) */
  int *cand, *rc, *rp, *low, *fhi;
  int *istart, *ilist; /* input groups of group g: ilist[istart[g] .. istart[g+1]) */
  int *maxprod, *order; /* groups by highest producer descending */
  size_t *size;
  int *fpar;           /* forward: group whose buffer this recomputed add output overwrites (-1) */
  int ng, T;           /* gradient groups (placed after the activation items) */
  const int *glo, *ghi, *groot, *gborn;
  /* Gradient over its input (see plan_act): mgk[q] = the fused BN+add node whose dx pass may write
   * the gradient of group q's single tensor over it (-1: none), tq[t] = that group for gradient
   * root t (-1); mged[q] = 1 where it does for the current rc (act_intervals), merge = 0: never. */
  int *mgk, *tq, *mged, merge;
} act_groups;

/* rp and low for the current rc; returns the number of items (kept: 1, recomputed: 2) written. */
static int act_intervals(const rn_model *m, act_groups *g, act_item *it, int *item_of) {
  const int N = m->nnodes;
  for (int q = 0; q < g->G; q++) g->rp[q] = -1, g->low[q] = g->bmin[q];
  for (int i = 0; i < g->G; i++) {
    int h = g->order[i];
    if (g->rc[h] && g->bmax[h] > g->rp[h]) g->rp[h] = g->bmax[h];
    if (!g->rc[h]) continue;
    for (int j = g->istart[h]; j < g->istart[h + 1]; j++) {
      int q = g->ilist[j];
      if (g->rc[q] && g->rp[h] > g->rp[q]) g->rp[q] = g->rp[h];
      if (g->low[q] < 0 || g->rp[h] < g->low[q]) g->low[q] = g->rp[h];
    }
  }
  /* forward buffers shared along in-place adds (fpar): the first one lives until the last ends */
  for (int q = 0; q < g->G; q++) g->fhi[q] = g->fend[q];
  for (int i = 0; i < g->G; i++) {
    int h = g->order[i], q = g->fpar[h];
    if (q >= 0 && g->fhi[h] > g->fhi[q]) g->fhi[q] = g->fhi[h];
  }
  /* a kept tensor whose last reader in the backward is the node that first writes its gradient, a
   * fused BN+add, shares one buffer with that gradient (its dx pass writes it over the input) */
  for (int q = 0; q < g->G; q++) g->mged[q] = g->merge && g->mgk[q] >= 0 && !g->rc[q] && g->low[q] == g->mgk[q];
  int n = 0;
  for (int q = 0; q < g->G; q++) {
    int bend = g->low[q] >= 0 ? 2 * N - 1 - g->low[q] : -1;
    if (g->mged[q]) {
      const int t = g->members[g->mstart[q]], gend = 2 * N - 1 - g->glo[t];
      RN_ASSERT(g->tq[t] == q && gend >= bend);
      bend = gend;
    }
    item_of[q] = n;
    if (g->rc[q]) {
      if (g->fpar[q] >= 0) it[n++] = (act_item){0, 0, g->lo[q], g->lo[q]}; /* in its parent's buffer */
      else it[n++] = (act_item){g->size[q], 0, g->lo[q], g->fhi[q]};
      it[n++] = (act_item){g->size[q], 0, 2 * N - 1 - g->rp[q], bend};
    } else {
      it[n++] = (act_item){g->size[q], 0, g->lo[q], bend > g->fend[q] ? bend : g->fend[q]};
    }
  }
  for (int t = 0; t < g->T; t++)
    if (g->gborn[t] >= 0 && g->groot[t] == t) {
      const int lo = 2 * N - 1 - g->ghi[t];
      if (g->tq[t] >= 0 && g->mged[g->tq[t]]) it[n++] = (act_item){0, 0, lo, lo}; /* in the input's buffer */
      else it[n++] = (act_item){tsize(m, t), 0, lo, 2 * N - 1 - g->glo[t]};
    }
  return n;
}

static void plan_act(rn_model *m, const int *nuse, const int *producer, const int *gborn, const int *groot) {
  const int T = m->ntensors, N = m->nnodes;
  int *root = malloc((size_t)T * sizeof(int)), *gid = malloc((size_t)T * sizeof(int));
  int *lastF = malloc((size_t)T * sizeof(int)), *minB = malloc((size_t)T * sizeof(int)),
      *maxB = malloc((size_t)T * sizeof(int));
  RN_ASSERT(root && gid && lastF && minB && maxB);
  for (int t = 0; t < T; t++) root[t] = -1, gid[t] = -1, lastF[t] = -1, minB[t] = -1, maxB[t] = -1;
  /* Groups. Every tensor gets its own buffer, except:
   *  - tensors left unused by the fusion pass get none; lazy BN outputs go to the untouched tail;
   *  - ReLU runs in place (relu backward needs only its output; its input is a BN or add output
   *    with no other consumer, and neither BN nor add backward needs its own output);
   *  - add writes into its shortcut input, or else into its residual-branch input, when that is
   *    private: consumed by nothing else and not needed by its producer's backward (projection
   *    conv/BN output, option-A output, the branch's last BN (post-activation) or conv
   *    (pre-activation) output; never a fused BN+ReLU output: its backward reads it as the mask).
   * The backward of an add with a fused ReLU reads the add's output, i.e. that shared buffer: it
   * holds the add's output until backward, since its input was dead after the add. */
  for (int t = 0; t < T; t++) {
    int k = producer[t];
    const rn_node *n = k >= 0 ? &m->nodes[k] : NULL;
    if (!n && nuse[t] == 0 && t != m->input) continue; /* unused (fused away) */
    if (n && n->lazy) continue;                          /* at the end, below */
    if (n && n->op == RN_OP_RELU && private_in(m, nuse, producer, n->in)) root[t] = root[n->in];
    else if (n && n->op == RN_OP_ADD && private_in(m, nuse, producer, n->in)) root[t] = root[n->in];
    else if (n && n->op == RN_OP_ADD && !n->bn_add && private_in(m, nuse, producer, n->in2)) root[t] = root[n->in2];
    else root[t] = t;
  }
  /* uses */
  for (int k = 0; k < N; k++) {
    const rn_node *n = &m->nodes[k];
    lastF[n->in] = k;
    if (n->in2 >= 0) lastF[n->in2] = k;
    if (n->pre_bn >= 0) lastF[m->nodes[n->pre_bn].in] = k;
#define BREAD(t)                           \
  do {                                     \
    if (minB[t] < 0 || k < minB[t]) minB[t] = k; \
    if (k > maxB[t]) maxB[t] = k;          \
  } while (0)
    BWD_READS(m, k, BREAD);
#undef BREAD
  }
  act_groups g = {0};
  for (int t = 0; t < T; t++)
    if (root[t] == t) gid[t] = g.G++;
  const int G = g.G;
  g.mstart = calloc((size_t)G + 1, sizeof(int)), g.members = malloc((size_t)T * sizeof(int));
  g.lo = malloc((size_t)G * sizeof(int)), g.fend = malloc((size_t)G * sizeof(int));
  g.bmin = malloc((size_t)G * sizeof(int)), g.bmax = malloc((size_t)G * sizeof(int));
  g.cand = calloc((size_t)G, sizeof(int)), g.rc = calloc((size_t)G, sizeof(int));
  g.rp = malloc((size_t)G * sizeof(int)), g.low = malloc((size_t)G * sizeof(int));
  g.istart = calloc((size_t)G + 1, sizeof(int)), g.ilist = malloc((size_t)(2 * T + 1) * sizeof(int));
  g.maxprod = malloc((size_t)G * sizeof(int)), g.order = malloc((size_t)G * sizeof(int));
  g.size = malloc((size_t)G * sizeof(size_t));
  g.fpar = malloc((size_t)G * sizeof(int)), g.fhi = malloc((size_t)G * sizeof(int));
  RN_ASSERT(g.fpar && g.fhi);
  for (int q = 0; q < G; q++) g.fpar[q] = -1;
  RN_ASSERT(g.mstart && g.members && g.lo && g.fend && g.bmin && g.bmax && g.cand && g.rc && g.rp && g.low &&
            g.istart && g.ilist && g.maxprod && g.order && g.size);
  for (int t = 0; t < T; t++)
    if (root[t] >= 0) g.mstart[gid[root[t]] + 1]++;
  for (int q = 0; q < G; q++) g.mstart[q + 1] += g.mstart[q];
  {
    int *fill = calloc((size_t)G, sizeof(int));
    RN_ASSERT(fill);
    for (int t = 0; t < T; t++) /* tensor ids follow producer order within a group */
      if (root[t] >= 0) {
        int q = gid[root[t]];
        g.members[g.mstart[q] + fill[q]++] = t;
      }
    free(fill);
  }
  int ni = 0;
  for (int q = 0; q < G; q++) {
    g.lo[q] = INT32_MAX, g.fend[q] = -1, g.bmin[q] = -1, g.bmax[q] = -1, g.maxprod[q] = -1;
    g.size[q] = tsize(m, g.members[g.mstart[q]]);
    int cand = 1, any_b = 0;
    g.istart[q] = ni;
    for (int j = g.mstart[q]; j < g.mstart[q + 1]; j++) {
      int t = g.members[j], k = producer[t];
      RN_ASSERT(tsize(m, t) == g.size[q]);
      int p = k >= 0 ? k : 0;
      if (p < g.lo[q]) g.lo[q] = p;
      if (k > g.maxprod[q]) g.maxprod[q] = k;
      int f = t == m->logits ? 2 * N - 1 : lastF[t] > p ? lastF[t] : p;
      if (f > g.fend[q]) g.fend[q] = f;
      if (minB[t] >= 0 && (g.bmin[q] < 0 || minB[t] < g.bmin[q])) g.bmin[q] = minB[t];
      if (maxB[t] > g.bmax[q]) g.bmax[q] = maxB[t];
      any_b |= minB[t] >= 0;
      if (k < 0 || !replayable(&m->nodes[k]) || t == m->logits || t == m->input) cand = 0;
      if (k >= 0) { /* external inputs */
        const rn_node *n = &m->nodes[k];
        int ins[3] = {n->in, n->in2, n->pre_bn >= 0 ? m->nodes[n->pre_bn].in : -1};
        for (int i = 0; i < 3; i++) {
          if (ins[i] < 0 || root[ins[i]] < 0 || root[ins[i]] == root[t]) continue;
          int h = gid[root[ins[i]]], dup = 0;
          for (int z = g.istart[q]; z < ni; z++) dup |= g.ilist[z] == h;
          if (!dup) g.ilist[ni++] = h;
        }
      }
      /* in-place members: the overwritten tensor is read by nothing after, and by no backward */
      if (j > g.mstart[q]) {
        int prev = g.members[j - 1];
        RN_ASSERT(k >= 0 && (m->nodes[k].op == RN_OP_RELU || m->nodes[k].op == RN_OP_ADD));
        RN_ASSERT(m->nodes[k].in == prev || m->nodes[k].in2 == prev);
        RN_ASSERT(m->nodes[k].in2 < 0 || root[m->nodes[k].in] != root[m->nodes[k].in2]);
        RN_ASSERT(lastF[prev] <= k && minB[prev] < 0);
      }
    }
    g.istart[q + 1] = ni;
    g.cand[q] = cand && any_b && m->recompute;
  }
  /* groups by highest producer descending (a group's readers come after all its producers) */
  for (int q = 0; q < G; q++) g.order[q] = q;
  for (int i = 1; i < G; i++) {
    int q = g.order[i], j = i;
    for (; j > 0 && g.maxprod[g.order[j - 1]] < g.maxprod[q]; j--) g.order[j] = g.order[j - 1];
    g.order[j] = q;
  }
  /* Gradients: group r (groot[t] == r, in-place backward) is live over the backward of nodes
   * [lowest producer, highest last consumer] of its members (see place_grads). */
  int *glo = malloc((size_t)T * sizeof(int)), *ghi = malloc((size_t)T * sizeof(int)), ng = 0;
  RN_ASSERT(glo && ghi);
  for (int t = 0; t < T; t++) glo[t] = INT32_MAX, ghi[t] = -2;
  for (int t = 0; t < T; t++) {
    if (gborn[t] < 0) continue;
    int r = groot[t];
    if (producer[t] < glo[r]) glo[r] = producer[t];
    if (gborn[t] > ghi[r]) ghi[r] = gborn[t];
  }
  for (int t = 0; t < T; t++) ng += gborn[t] >= 0 && groot[t] == t;
  g.ng = ng, g.glo = glo, g.ghi = ghi, g.groot = groot, g.gborn = gborn, g.T = T;
  /* Gradient over its input: the branch BN input x of a fused BN+add (a convolution's output, read
   * by nothing else) is dead after that node's backward, whose dx pass reads each element of x
   * just before it writes the same element of dx (after the channel-sum pass has read all of x).
   * So dx can go in place over x: no read for ownership of a cold gradient buffer, and one buffer
   * less. Taken for the current rc where the node is x's last reader in the backward, replays
   * included (act_intervals). */
  g.mgk = malloc((size_t)G * sizeof(int)), g.mged = calloc((size_t)G, sizeof(int));
  g.tq = malloc((size_t)T * sizeof(int));
  RN_ASSERT(g.mgk && g.mged && g.tq);
  g.merge = dx_over_x_on();
  for (int t = 0; t < T; t++) g.tq[t] = -1;
  for (int q = 0; q < G; q++) {
    g.mgk[q] = -1;
    if (g.mstart[q + 1] - g.mstart[q] != 1) continue;
    const int t = g.members[g.mstart[q]], k = gborn[t];
    if (k < 0 || producer[t] < 0 || nuse[t] != 1 || t == m->input || groot[t] != t || g.cand[q]) continue;
    const rn_node *n = &m->nodes[k];
    if (n->op != RN_OP_ADD || !n->bn_add || n->in2 != t || n->acc_in2) continue;
    int alone = 1;
    for (int u = 0; u < T; u++) alone &= u == t || groot[u] != t;
    if (!alone) continue;
    g.mgk[q] = k, g.tq[t] = q;
  }
  act_item *it = malloc((size_t)(2 * G + ng + 1) * sizeof(act_item));
  int *item_of = malloc((size_t)(G + 1) * sizeof(int)), *tord = malloc((size_t)(G + 1) * sizeof(int));
  RN_ASSERT(it && item_of && tord);
  int ncand = 0;
  for (int q = 0; q < G; q++) g.rc[q] = g.cand[q], ncand += g.cand[q];
  size_t best = place_items(it, act_intervals(m, &g, it, item_of), 1);
  /* Then, in two passes over the candidates (those replayed first, highest rp, first):
   * 1. keep a candidate when that lowers the peak: recomputed tensors that feed each other form
   *    chains replayed together at the first need of the last one (an option-A net's block outputs
   *    are one chain across all stages, replayed at the start of the backward: no gain), and a
   *    kept one cuts the chain (repeated while it helps, at most four sweeps);
   * 2. keep every candidate whose recompute does not lower the peak.
   * Beyond 256 candidates (e.g. cifar-resnet1202) all stay recomputed: each trial places the
   * whole arena. */
  if (ncand && ncand <= 256) {
    int nt = 0;
    for (int q = 0; q < G; q++)
      if (g.cand[q]) tord[nt++] = q;
    for (int i = 1; i < nt; i++) {
      int q = tord[i], j = i, rq = g.rp[q];
      for (; j > 0 && g.rp[tord[j - 1]] < rq; j--) tord[j] = tord[j - 1];
      tord[j] = q;
    }
    for (int changed = 1, sweep = 0; changed && sweep < 4; sweep++) {
      changed = 0;
      for (int i = 0; i < nt; i++) {
        int q = tord[i];
        if (!g.rc[q]) continue;
        g.rc[q] = 0;
        size_t peak = place_items(it, act_intervals(m, &g, it, item_of), 1);
        if (peak < best) best = peak, changed = 1;
        else g.rc[q] = 1;
      }
    }
    for (int i = 0; i < nt; i++) {
      if (!g.rc[tord[i]]) continue;
      int q = tord[i];
      g.rc[q] = 0;
      size_t peak = place_items(it, act_intervals(m, &g, it, item_of), 1);
      if (peak <= best) best = peak;
      else g.rc[q] = 1;
    }
  }
  /* Forward in place: a recomputed add output whose shortcut input is recomputed too and read by
   * nothing after the add (in the forward; the backward has its own buffers) overwrites it, as
   * the projection blocks' adds do: no read for ownership of a fresh buffer. Kept only if the
   * peak does not grow. */
  size_t peak0 = place_items(it, act_intervals(m, &g, it, item_of), 4);
  int nfp = 0;
  const char *fe = getenv("RN_FWD_INPLACE"); /* "0": off (A/B) */
  for (int h = 0; h < G && !(fe && fe[0] == '0'); h++) {
    int t0 = g.members[g.mstart[h]], k = producer[t0];
    if (!g.rc[h] || k < 0 || m->nodes[k].op != RN_OP_ADD) continue;
    int s = m->nodes[k].in, q = root[s] >= 0 ? gid[root[s]] : -1;
    if (q < 0 || q == h || !g.rc[q] || lastF[s] != k || g.members[g.mstart[q + 1] - 1] != s) continue;
    g.fpar[h] = q, nfp++;
  }
  if (nfp && place_items(it, act_intervals(m, &g, it, item_of), 4) > peak0)
    for (int q = 0; q < G; q++) g.fpar[q] = -1;
  if (g.merge) { /* gradients over their inputs: kept unless the placed peak grows (it shrinks by design) */
    const size_t with = place_items(it, act_intervals(m, &g, it, item_of), 4);
    g.merge = 0;
    const size_t without = place_items(it, act_intervals(m, &g, it, item_of), 4);
    g.merge = with <= without;
  }
  /* With a budget (rn_model_set_recompute_mb): keep more, the costliest replays first, while the
   * arena stays within the budget above the plan so far (which is the arena without a budget). A
   * replay's cost per byte it keeps is its traffic per element: each member reads its inputs and
   * writes its output (BN+add+ReLU: 3, BN: 2); among equals the largest first (they stream from
   * memory, where smaller ones may replay in cache). A kept group leaves the forward in-place
   * chains (fpar) it is part of. */
  const size_t base = ncand && ncand <= 256 ? place_items(it, act_intervals(m, &g, it, item_of), 4) : 0;
  if (m->recompute_floats && ncand && ncand <= 256) {
    const size_t cap = base + m->recompute_floats;
    int *cost = malloc((size_t)G * sizeof(int)), *fsave = malloc((size_t)G * sizeof(int)), nt = 0;
    RN_ASSERT(cost && fsave);
    for (int q = 0; q < G; q++) {
      cost[q] = 0;
      if (!g.rc[q]) continue;
      tord[nt++] = q;
      for (int j = g.mstart[q]; j < g.mstart[q + 1]; j++) { /* replayed: every member has a producer */
        const rn_node *d = &m->nodes[producer[g.members[j]]];
        cost[q] += 2 + (d->in2 >= 0) + (d->pre_bn >= 0);
      }
    }
    for (int i = 1; i < nt; i++) { /* cost, then size, descending; then group index */
      int q = tord[i], j = i;
      for (; j > 0 && (cost[tord[j - 1]] < cost[q] || (cost[tord[j - 1]] == cost[q] && g.size[tord[j - 1]] < g.size[q]));
           j--)
        tord[j] = tord[j - 1];
      tord[j] = q;
    }
    for (int i = 0; i < nt; i++) {
      const int q = tord[i];
      memcpy(fsave, g.fpar, (size_t)G * sizeof(int));
      g.rc[q] = 0, g.fpar[q] = -1;
      for (int h = 0; h < G; h++)
        if (g.fpar[h] == q) g.fpar[h] = -1;
      if (place_items(it, act_intervals(m, &g, it, item_of), 1) <= cap ||
          place_items(it, act_intervals(m, &g, it, item_of), 4) <= cap)
        continue;
      g.rc[q] = 1;
      memcpy(g.fpar, fsave, (size_t)G * sizeof(int));
    }
    free(cost), free(fsave);
  }
  /* The budget that keeps every output (reported at start-up): the arena with none replayed. */
  m->recompute_all_floats = 0;
  if (ncand && ncand <= 256) {
    int *rsave = malloc((size_t)G * sizeof(int)), *fsave = malloc((size_t)G * sizeof(int)), any = 0;
    RN_ASSERT(rsave && fsave);
    memcpy(rsave, g.rc, (size_t)G * sizeof(int)), memcpy(fsave, g.fpar, (size_t)G * sizeof(int));
    for (int q = 0; q < G; q++) any |= g.rc[q], g.rc[q] = 0, g.fpar[q] = -1;
    const size_t all = any ? place_items(it, act_intervals(m, &g, it, item_of), 4) : base;
    m->recompute_all_floats = all > base ? all - base : 0;
    memcpy(g.rc, rsave, (size_t)G * sizeof(int)), memcpy(g.fpar, fsave, (size_t)G * sizeof(int));
    free(rsave), free(fsave);
  }
  int n = act_intervals(m, &g, it, item_of);
  size_t off = place_items(it, n, 4);
  /* Verify: items live at the same time never share memory. */
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) {
      if (it[i].lo > it[j].hi || it[j].lo > it[i].hi) continue;
      RN_ASSERT(it[i].off + it[i].size <= it[j].off || it[j].off + it[j].size <= it[i].off);
    }
  for (int t = 0; t < T; t++) m->tensors[t].off = m->tensors[t].boff = (size_t)-1;
  for (int k = 0; k < N; k++) m->nodes[k].rp_at = -1;
  int nrep = 0;
  for (int t = 0; t < T; t++) {
    if (root[t] < 0) continue;
    int q = gid[root[t]], f = q;
    while (g.fpar[f] >= 0) f = g.fpar[f];
    m->tensors[t].off = it[item_of[f]].off;
    m->tensors[t].boff = g.rc[q] ? it[item_of[q] + 1].off : m->tensors[t].off;
    if (g.rc[q]) {
      m->nodes[producer[t]].rp_at = g.rp[q];
      nrep++;
    }
  }
  {
    int i = item_of[G - 1] + 1 + g.rc[G - 1]; /* the first gradient item */
    size_t *gpos = malloc((size_t)T * sizeof(size_t));
    RN_ASSERT(gpos);
    for (int t = 0; t < T; t++)
      if (gborn[t] >= 0 && groot[t] == t) {
        gpos[t] = it[i++].off;
        if (g.tq[t] >= 0 && g.mged[g.tq[t]]) gpos[t] = it[item_of[g.tq[t]]].off; /* over its input */
      }
    RN_ASSERT(i == n);
    for (int t = 0; t < T; t++) m->tensors[t].goff = gborn[t] >= 0 ? gpos[groot[t]] : (size_t)-1;
    free(gpos);
  }
  /* replay list: by rp_at descending, then node index ascending */
  m->nreplay = nrep;
  m->replay = nrep ? malloc((size_t)nrep * sizeof(int)) : NULL;
  RN_ASSERT(!nrep || m->replay);
  nrep = 0;
  for (int at = N - 1; at >= 0; at--)
    for (int k = 0; k < N; k++)
      if (m->nodes[k].rp_at == at) m->replay[nrep++] = k;
  RN_ASSERT(nrep == m->nreplay);
  /* The outputs of lazy BN nodes (mark_lazy) last: neither a training step nor an eval forward
   * writes them (the reading convolution applies the BN), only a training step with BN in eval
   * mode does, so that part of the arena is never touched otherwise (rn_alloc_arena). */
  m->act_touch_floats = off;
  for (int t = 0; t < T; t++)
    if (producer[t] >= 0 && m->nodes[producer[t]].lazy) {
      m->tensors[t].off = m->tensors[t].boff = off;
      off += tsize(m, t);
    }
  m->act_floats = off;
  free(it), free(item_of), free(tord);
  free(g.mstart), free(g.members), free(g.lo), free(g.fend), free(g.bmin), free(g.bmax), free(g.cand), free(g.rc);
  free(g.rp), free(g.low), free(g.istart), free(g.ilist), free(g.maxprod), free(g.order), free(g.size);
  free(g.fpar), free(g.fhi), free(g.mgk), free(g.mged), free(g.tq);
  free(root), free(gid), free(lastF), free(minB), free(maxB), free(glo), free(ghi);
}
/* Level 3: a BN(+ReLU) whose only reader is a convolution that is the first reader of its output
 * (lazy = 1)
 * (so it will compute the BN's backward sums in its dx epilogue: bn_prev, below) and could run on
 * the direct kernel in all passes (rn_conv_pre_ok) is lazy: a training or eval forward never
 * stores its output. The convolution applies the BN's affine (+ReLU) as it copies the BN's input
 * into its padded buffer (forward and dW; 1x1: in bands forward, in the dW kernel's packing;
 * Winograd: in its input transforms), and its dx epilogue takes the ReLU mask from the BN's
 * input. Only a training
 * step with BN in eval mode (bn_eval_in_train) writes the output. */
static void mark_lazy(rn_model *m) {
  for (int k = 0; k < m->nnodes; k++) m->nodes[k].pre_bn = -1, m->nodes[k].lazy = 0;
  if (m->fused < 3 || m->bn_epilogue < 2) return;
  const char *l1 = getenv("RN_LAZY_1X1"); /* "0": 1x1 convolutions never read a lazy BN (A/B) */
  const int lazy1 = !(l1 && l1[0] == '0');
  for (int k = 0; k < m->nnodes; k++) {
    rn_node *cv = &m->nodes[k];
    /* 1x1: only those that do not shrink the channels (ResNet-50's conv3): the dx epilogue of a
     * shrinking one (cin = 4 cout) has too few FMAs per vector to hide its loads (see bn_prev) */
    const int pw = cv->u.conv.kh * cv->u.conv.kw == 1;
    if (cv->op != RN_OP_CONV || cv->in == m->input || (pw && (!lazy1 || cv->u.conv.cout < cv->u.conv.cin)) ||
        !rn_conv_pre_ok(&cv->u.conv))
      continue;
    int first_reader = -1, prod = -1, readers = 0;
    for (int q = 0; q < m->nnodes; q++) {
      if ((m->nodes[q].in == cv->in || m->nodes[q].in2 == cv->in) && first_reader < 0) first_reader = q;
      readers += (m->nodes[q].in == cv->in) + (m->nodes[q].in2 == cv->in);
      if (m->nodes[q].out == cv->in) prod = q;
    }
    if (first_reader != k || prod < 0 || readers != 1 || m->nodes[prod].op != RN_OP_BN) continue;
    cv->pre_bn = prod;
    m->nodes[prod].lazy = 1;
  }
  /* A BN+ReLU read only by a max pool (the ImageNet stem) is lazy too (lazy = 2): the pool takes the
   * max over [relu](x * sc + sh), its backward masks each output's gradient by output > 0 (the
   * ReLU's mask at the argmax), and the BN's backward sums that gradient unmasked. */
  for (int k = 0; k < m->nnodes; k++) {
    rn_node *mp = &m->nodes[k];
    if (mp->op != RN_OP_MAXPOOL || mp->in == m->input) continue;
    int prod = -1, readers = 0;
    for (int q = 0; q < m->nnodes; q++) {
      readers += (m->nodes[q].in == mp->in) + (m->nodes[q].in2 == mp->in);
      if (m->nodes[q].out == mp->in) prod = q;
    }
    if (prod < 0 || readers != 1 || m->nodes[prod].op != RN_OP_BN || !m->nodes[prod].relu) continue;
    mp->pre_bn = prod;
    m->nodes[prod].lazy = 2;
  }
  /* A BN without ReLU read only by a fused BN+add, as its shortcut (a projection shortcut's BN) is
   * lazy too (lazy = 3): the add applies it as it reads the shortcut (forward and replay), and its
   * backward, which writes this BN's output gradient, sums that gradient for this BN's backward in
   * the same pass. No forward pass, no replay and no channel-sum pass of its own over the
   * projection's output. */
  const char *lsc = getenv("RN_LAZY_SC"); /* "0": off (A/B) */
  for (int k = 0; k < m->nnodes && !(lsc && lsc[0] == '0'); k++) {
    rn_node *a = &m->nodes[k];
    if (a->op != RN_OP_ADD || !a->bn_add) continue;
    int prod = -1, readers = 0;
    for (int q = 0; q < m->nnodes; q++) {
      readers += (m->nodes[q].in == a->in) + (m->nodes[q].in2 == a->in);
      if (m->nodes[q].out == a->in) prod = q;
    }
    if (prod < 0 || readers != 1 || m->nodes[prod].op != RN_OP_BN || m->nodes[prod].relu || m->nodes[prod].lazy ||
        m->nodes[prod].in == m->input)
      continue;
    a->pre_bn = prod;
    m->nodes[prod].lazy = 3;
  }
}

static void plan(rn_model *m) {
  int T = m->ntensors;
  int *nuse = calloc((size_t)T, sizeof(int)), *producer = malloc((size_t)T * sizeof(int));
  RN_ASSERT(nuse && producer);
  for (int t = 0; t < T; t++) producer[t] = -1;
  for (int k = 0; k < m->nnodes; k++) {
    rn_node *n = &m->nodes[k];
    nuse[n->in]++;
    if (n->in2 >= 0) nuse[n->in2]++;
    producer[n->out] = k;
  }

  /* acc flags: walking backward, the first node to write a tensor's gradient overwrites. */
  char *written = calloc((size_t)T, 1);
  RN_ASSERT(written);
  for (int k = m->nnodes - 1; k >= 0; k--) {
    rn_node *n = &m->nodes[k];
    n->acc_in = written[n->in];
    written[n->in] = 1;
    if (n->in2 >= 0) {
      RN_ASSERT(n->in2 != n->in);
      n->acc_in2 = written[n->in2];
      written[n->in2] = 1;
    }
  }
  free(written);

  /* Gradient arena: liveness-based reuse (place_grads). In-place backward: an add (its shortcut
   * input), a BN or a ReLU that is the first writer of its input's gradient (acc_in = 0) writes
   * it over its output's gradient dy, whose life ends at that same step: the kernels allow
   * dx == dy (add: da = dy or masked dy, db written first or in the same pass; BN: the channel
   * sums read dy before the dx pass, which reads each dy element before writing it; ReLU:
   * elementwise). Such a pair shares one buffer; chains of them (e.g. conv <- BN <- ReLU, or
   * identity blocks: a block's output is the next add's shortcut input) share one buffer over
   * their whole, contiguous life. */
  int *born = malloc((size_t)T * sizeof(int)), *root = malloc((size_t)T * sizeof(int));
  RN_ASSERT(born && root);
  for (int t = 0; t < T; t++) born[t] = -1, root[t] = t;
  for (int k = 0; k < m->nnodes; k++) {
    born[m->nodes[k].in] = k;
    if (m->nodes[k].in2 >= 0) born[m->nodes[k].in2] = k;
  }
  for (int k = m->nnodes - 1; k >= 0; k--) { /* backward order: out's root is final already */
    const rn_node *n = &m->nodes[k];
    if (inplace_grad(n) && !n->acc_in && n->out != m->logits && born[n->in] == k && born[n->out] >= 0 &&
        tsize(m, n->in) == tsize(m, n->out))
      root[n->in] = root[n->out];
  }
  m->dact_floats = place_grads(m, producer, born, root); /* their own peak (a statistic) */
  /* Activations and gradients share one arena, placed together (plan_act). */
  plan_act(m, nuse, producer, born, root);
  /* Verify: gradients that are live at the same backward step never share memory, except d(in)
   * and d(out) of an in-place add, BN or ReLU at that node. Step of a tensor's birth = its last consumer
   * (highest node index), death = its producer. */
  {
    for (int t = 0; t < T; t++)
      for (int u = t + 1; u < T; u++) {
        if (born[t] < 0 || born[u] < 0) continue;
        /* live over node indices [producer, born] (backward runs from born down to producer) */
        int lo = producer[t] > producer[u] ? producer[t] : producer[u];
        int hi = born[t] < born[u] ? born[t] : born[u];
        if (lo > hi) continue;
        size_t a0 = m->tensors[t].goff, a1 = a0 + tsize(m, t), b0 = m->tensors[u].goff, b1 = b0 + tsize(m, u);
        if (root[t] == root[u]) { /* shared on purpose: only at the step of the add writing d(in) over d(out) */
          const rn_node *n = &m->nodes[lo];
          RN_ASSERT(lo == hi && inplace_grad(n) && ((n->in == t && n->out == u) || (n->in == u && n->out == t)));
          RN_ASSERT(a0 == b0 && a1 == b1);
          continue;
        }
        RN_ASSERT(a1 <= b0 || b1 <= a0);
      }
    free(born);
    free(root);
  }

  /* Saved state, workspace, GEMM reservation. */
  size_t save = 0, ws = 0, mn = 0;
  for (int k = 0; k < m->nnodes; k++) {
    rn_node *n = &m->nodes[k];
    n->save_off = save;
    if (n->op == RN_OP_BN || (n->op == RN_OP_ADD && n->bn_add)) {
      save += rn_align16(2 * (size_t)n->u.bn.c);
    } else if (n->op == RN_OP_MAXPOOL) {
      save += tsize(m, n->out); /* int32 argmax, one per output element */
    } else if (n->op == RN_OP_CONV) {
      size_t w = rn_conv_workspace(&n->u.conv, m->batch);
      if (w > ws) ws = w;
      size_t p = (size_t)n->u.conv.cout * n->u.conv.kh * n->u.conv.kw * n->u.conv.cin;
      if (p > mn) mn = p;
    } else if (n->op == RN_OP_LINEAR) {
      size_t p = (size_t)n->u.lin.in * n->u.lin.out;
      if (p > mn) mn = p;
    }
  }
  m->save_floats = save;
  m->ws_floats = ws;
  rn_blas_reserve(mn);
  free(nuse);
  free(producer);
}

rn_status rn_model_build(rn_model *m, const rn_model_config *cfg, int batch, rn_err *e) {
  memset(m, 0, sizeof *m);
  rn_model_config c = *cfg;
  /* Re-derive the architecture fields from the name (the name is the source of truth), keeping
   * the caller's shortcut choice. */
  rn_model_config tmp = c;
  if (rn_model_config_arch(&tmp, c.arch, e)) return e ? e->code : RN_EINVAL;
  c.depth = tmp.depth, c.bottleneck = tmp.bottleneck, c.cifar = tmp.cifar, c.plain = tmp.plain;
  if (c.in_channels == 0) c.in_channels = 3;
  if (c.in_h == 0) c.in_h = c.cifar ? 32 : 224;
  if (c.in_w == 0) c.in_w = c.cifar ? 32 : 224;
  if (c.num_classes == 0) c.num_classes = c.cifar ? 10 : 1000;
  if (c.width == 0) c.width = c.cifar ? 16 : 64;
  if (c.bn_momentum == 0 && c.bn_eps == 0) c.bn_momentum = 0.1f, c.bn_eps = 1e-5f;
  if (batch < 1) return rn_err_set(e, RN_EINVAL, "model %s: batch size %d must be >= 1", c.arch, batch);
  if (c.in_channels < 1 || c.in_h < 1 || c.in_w < 1)
    return rn_err_set(e, RN_EINVAL, "model %s: bad input shape %d channels x %d x %d", c.arch, c.in_channels,
                      c.in_h, c.in_w);
  if (c.num_classes < 1) return rn_err_set(e, RN_EINVAL, "model %s: num_classes %d must be >= 1", c.arch, c.num_classes);
  if (c.width < 1 || c.width > 4096) return rn_err_set(e, RN_EINVAL, "model %s: width %d out of range [1, 4096]", c.arch, c.width);
  if ((int)c.shortcut < 0 || (int)c.shortcut > 2)
    return rn_err_set(e, RN_EINVAL, "model %s: shortcut option %d is not A, B or C", c.arch, (int)c.shortcut);
  if (!(c.sd_pl > 0.0f && c.sd_pl <= 1.0f))
    return rn_err_set(e, RN_EINVAL, "model %s: stochastic-depth survival p_L = %g must be in (0, 1]", c.arch, (double)c.sd_pl);
  if (!(c.bn_eps > 0.0f) || !(c.bn_momentum >= 0.0f && c.bn_momentum <= 1.0f))
    return rn_err_set(e, RN_EINVAL, "model %s: bad BN momentum %g / eps %g", c.arch, (double)c.bn_momentum,
                      (double)c.bn_eps);
  m->cfg = c;
  m->batch = batch;
  builder b = {.m = m, .e = e};
  build_graph(&b);
  if (b.st) {
    rn_status st = b.st;
    rn_model_free(m);
    return st;
  }
  /* Parameter layout: trainable first (forward order), then buffers; each 64-byte aligned. */
  size_t off = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < m->nparams; i++) {
      rn_param *p = &m->params[i];
      if (p->trainable != (pass == 0)) continue;
      p->off = off;
      off += rn_align16(p->count);
    }
    if (pass == 0) m->ntrain = off;
  }
  m->ntotal = off;
  m->fused = fusion_on();
  if (m->fused) fuse(m);
  if (m->fused >= 2) fuse_bn_add(m);
  {
    const char *v = getenv("RN_BN_EPILOGUE");
    m->bn_epilogue = v && v[0] == '0' ? 0 : v && v[0] == '1' ? 1 : 2;
  }
  mark_lazy(m);
  m->recompute = recompute_on();
  m->recompute_floats = m->recompute ? (size_t)(recompute_mb() * 1e6 / sizeof(float)) : 0;
  plan(m);
  m->param = rn_alloc(m->ntotal * sizeof(float));
  m->grad = rn_alloc(m->ntrain * sizeof(float));
  m->mom = rn_alloc(m->ntrain * sizeof(float));
  m->act = rn_alloc_arena(m->act_floats * sizeof(float), m->act_touch_floats * sizeof(float));
  m->dact = m->act; /* one arena (plan_act) */
  m->save = rn_alloc(m->save_floats * sizeof(float));
  m->ws = rn_alloc(m->ws_floats * sizeof(float));
  m->param_done = rn_alloc((size_t)m->nparams);
  {
    /* Convolutions whose only reader is a BN (or a fused BN+add's BN), with no other convolution
     * between them (the statistics buffer is shared), get a per-image statistics buffer. */
    m->stats_tensor = -1;
    int maxc = 0;
    for (int k = 0; k < m->nnodes; k++) {
      rn_node *cv = &m->nodes[k];
      if (cv->op != RN_OP_CONV) continue;
      int readers = 0, reader = -1;
      for (int q = 0; q < m->nnodes; q++)
        if (m->nodes[q].in == cv->out || m->nodes[q].in2 == cv->out) readers++, reader = q;
      if (readers != 1) continue;
      const rn_node *bn = &m->nodes[reader];
      if (!((bn->op == RN_OP_BN && bn->in == cv->out) || (bn->op == RN_OP_ADD && bn->bn_add && bn->in2 == cv->out)))
        continue;
      int conv_between = 0;
      for (int q = k + 1; q < reader; q++) conv_between |= m->nodes[q].op == RN_OP_CONV;
      if (conv_between) continue;
      cv->stats_next = 1;
      if (cv->u.conv.cout > maxc) maxc = cv->u.conv.cout;
    }
    /* A fused BN+add over a projection shortcut reads its branch conv's output after the projection
     * conv and BN ran: that conv uses the second buffer (stats_next = 2) when every conv in between
     * uses the first one for a BN that runs before the add. */
    for (int k = 0; k < m->nnodes; k++) {
      rn_node *cv = &m->nodes[k];
      if (cv->op != RN_OP_CONV || cv->stats_next) continue;
      int readers = 0, reader = -1;
      for (int q = 0; q < m->nnodes; q++)
        if (m->nodes[q].in == cv->out || m->nodes[q].in2 == cv->out) readers++, reader = q;
      if (readers != 1 || m->nodes[reader].op != RN_OP_ADD || !m->nodes[reader].bn_add ||
          m->nodes[reader].in2 != cv->out)
        continue;
      int ok = 1;
      for (int q = k + 1; q < reader && ok; q++) {
        if (m->nodes[q].op != RN_OP_CONV) continue;
        int rq = -1;
        for (int z = 0; z < m->nnodes; z++)
          if (m->nodes[z].in == m->nodes[q].out || m->nodes[z].in2 == m->nodes[q].out) rq = z;
        ok = m->nodes[q].stats_next == 1 && rq < reader;
      }
      if (!ok) continue;
      cv->stats_next = 2;
      if (cv->u.conv.cout > maxc) maxc = cv->u.conv.cout;
    }
    m->stats = maxc ? rn_alloc((size_t)2 * batch * 2 * maxc * sizeof(double)) : NULL;
    m->stats2 = m->stats ? m->stats + (size_t)batch * 2 * maxc : NULL;
    m->stats_tensor2 = -1;
    /* Convolutions whose input is the output of a BN (or a BN+add whose shortcut gradient is
     * written in place over its output gradient) and that are the last of its readers in the
     * backward (the lowest node index): the conv's dx is then the final gradient of that output,
     * and its epilogue sums for the BN's backward. */
    m->bsum_tensor = -1;
    int maxb = 0;
    for (int k = 0; k < m->nnodes; k++) {
      rn_node *cv = &m->nodes[k];
      cv->bn_prev = -1;
      if (cv->op != RN_OP_CONV || cv->in == m->input) continue;
      /* Not for 1x1 convolutions: their dx does few FMAs per stored vector (cout, 64 at ResNet-50's
       * conv1), so the epilogue's extra loads made them memory-bound: ResNet-50 b32 backward
       * convolutions 2324 -> 2577 ms per step with them, against 160 ms saved in the BN passes. */
      if (cv->u.conv.kh * cv->u.conv.kw == 1 && cv->pre_bn < 0) continue; /* (but a lazy BN's reader must) */
      int first_reader = -1, prod = -1;
      for (int q = 0; q < m->nnodes; q++) {
        if ((m->nodes[q].in == cv->in || m->nodes[q].in2 == cv->in) && first_reader < 0) first_reader = q;
        if (m->nodes[q].out == cv->in) prod = q;
      }
      if (first_reader != k || prod < 0) continue;
      const rn_node *p = &m->nodes[prod];
      int ok = p->op == RN_OP_BN ||
               (p->op == RN_OP_ADD && p->bn_add && !p->acc_in && m->tensors[p->in].goff == m->tensors[p->out].goff);
      if (!ok) continue;
      cv->bn_prev = prod;
      if (cv->u.conv.cin > maxb) maxb = cv->u.conv.cin;
    }
    size_t nbs = (size_t)batch * 2 * maxb;
    for (int k = 0; k < m->nnodes; k++) /* an add with a lazy shortcut BN: that BN's sums, one block */
      if (m->nodes[k].op == RN_OP_ADD && m->nodes[k].pre_bn >= 0 && 2 * (size_t)m->nodes[k].u.bn.c > nbs)
        nbs = 2 * (size_t)m->nodes[k].u.bn.c;
    m->bsums = nbs ? rn_alloc(nbs * sizeof(double)) : NULL;
    /* The lazy BN nodes (mark_lazy): their reading convolution is their bn_prev; coefficients in
     * m->pre_coef (sc then sh per node). */
    size_t ncoef = 0;
    for (int k = 0; k < m->nnodes; k++) {
      rn_node *cv = &m->nodes[k];
      if (cv->pre_bn < 0) continue;
      RN_ASSERT(cv->op == RN_OP_MAXPOOL || cv->op == RN_OP_ADD || (cv->bn_prev == cv->pre_bn && m->bsums));
      rn_node *b = &m->nodes[cv->pre_bn];
      b->pre_off = ncoef;
      ncoef += rn_align16(2 * (size_t)b->u.bn.c);
    }
    m->pre_coef = ncoef ? rn_alloc(ncoef * sizeof(float)) : NULL;
    /* Replayed BN and BN+add nodes keep the float coefficients of their training forward. */
    size_t nrc = 0;
    for (int k = 0; k < m->nnodes; k++) {
      rn_node *d = &m->nodes[k];
      if (d->rp_at < 0 || !(d->op == RN_OP_BN || (d->op == RN_OP_ADD && d->bn_add))) continue;
      d->rc_off = nrc;
      nrc += rn_align16(2 * (size_t)d->u.bn.c);
    }
    m->rc_coef = nrc ? rn_alloc(nrc * sizeof(float)) : NULL;
  }
  m->dlogits = rn_alloc(rn_align16((size_t)batch * c.num_classes) * sizeof(float));
  m->last_train = 1;
  return RN_OK;
}

void rn_model_free(rn_model *m) {
  free(m->nodes);
  free(m->tensors);
  free(m->params);
  rn_free(m->param);
  rn_free(m->grad);
  rn_free(m->mom);
  rn_free_arena(m->act, m->act_floats * sizeof(float));
  rn_free(m->save);
  rn_free(m->ws);
  rn_free(m->param_done);
  rn_free(m->pre_coef);
  rn_free(m->rc_coef);
  free(m->replay);
  rn_free(m->dlogits);
  rn_free(m->stats);
  rn_free(m->bsums);
  memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------------------------------ */

void rn_model_init(rn_model *m, uint64_t seed) {
  const rn_model_config *c = &m->cfg;
  /* The last BN (post-activation) or last conv (pre-activation: zeroing its BN would kill the
   * gradient through the ReLU) of each residual branch, for zero_init_residual. */
  char *zero = calloc((size_t)m->nparams, 1);
  RN_ASSERT(zero);
  if (c->zero_init_residual && !c->plain) {
    for (int k = 0; k < m->nnodes; k++) {
      const rn_node *n = &m->nodes[k];
      if (n->op != RN_OP_ADD) continue;
      if (n->bn_add) { /* the branch BN is fused into the add */
        zero[n->param[0]] = 1;
        continue;
      }
      for (int j = k - 1; j >= 0; j--) /* producer of the branch input */
        if (m->nodes[j].out == n->in2) {
          zero[m->nodes[j].param[0]] = 1;
          break;
        }
    }
  }
  for (int i = 0; i < m->nparams; i++) {
    rn_param *p = &m->params[i];
    float *v = m->param + p->off;
    rn_rng r = rn_rng_make(rn_key(seed, 0x6D6F64656Cull /* "model" */, (uint64_t)i, 0));
    const char *leaf = strrchr(p->name, '.');
    leaf = leaf ? leaf + 1 : p->name;
    int is_fc = !strncmp(p->name, "fc.", 3);
    if (zero[i]) {
      memset(v, 0, p->count * sizeof(float));
    } else if (p->ohwi) { /* kaiming normal, fan_out, relu gain */
      float sd = sqrtf(2.0f / (float)((size_t)p->dims[0] * p->dims[2] * p->dims[3]));
      for (size_t j = 0; j < p->count; j++) v[j] = sd * rn_rng_normal(&r);
    } else if (is_fc) {
      float bound = 1.0f / sqrtf((float)m->nodes[m->nnodes - 1].u.lin.in); /* fc is the last node */
      for (size_t j = 0; j < p->count; j++) v[j] = bound * (2.0f * rn_rng_uniform(&r) - 1.0f);
    } else if (!strcmp(leaf, "weight") || !strcmp(leaf, "running_var")) {
      for (size_t j = 0; j < p->count; j++) v[j] = 1.0f;
    } else {
      memset(v, 0, p->count * sizeof(float));
    }
  }
  free(zero);
  memset(m->grad, 0, m->ntrain * sizeof(float));
  memset(m->mom, 0, m->ntrain * sizeof(float));
}

size_t rn_model_param_count(const rn_model *m) {
  size_t n = 0;
  for (int i = 0; i < m->nparams; i++)
    if (m->params[i].trainable) n += m->params[i].count;
  return n;
}

int rn_model_find_param(const rn_model *m, const char *name) {
  for (int i = 0; i < m->nparams; i++)
    if (!strcmp(m->params[i].name, name)) return i;
  return -1;
}

static void fmt_count(char *buf, size_t n, size_t v) {
  char tmp[32];
  int len = snprintf(tmp, sizeof tmp, "%zu", v), o = 0;
  for (int i = 0; i < len && o + 2 < (int)n; i++) {
    if (i && (len - i) % 3 == 0) buf[o++] = ',';
    buf[o++] = tmp[i];
  }
  buf[o] = 0;
}

void rn_model_summary(const rn_model *m, FILE *f) {
  const rn_model_config *c = &m->cfg;
  static const char *sc[] = {"A", "B", "C"};
  fprintf(f, "model %s: %s%s, input %dx%dx%d, %d classes, width %d, shortcut %s%s%s, %d blocks\n", c->arch,
          c->bottleneck ? "bottleneck" : "basic", c->plain ? " (plain)" : "", c->in_channels, c->in_h, c->in_w,
          c->num_classes, c->width, c->plain ? "none" : sc[c->shortcut], c->preact ? ", pre-activation" : "",
          c->stride_in_1x1 ? ", stride in 1x1" : "", m->nblocks);
  if (c->sd_pl < 1.0f) fprintf(f, "  stochastic depth: p_L = %g (linear decay)\n", (double)c->sd_pl);
  fprintf(f, "  %-4s %-24s %-10s %-16s %12s\n", "#", "layer", "op", "output (HxWxC)", "params");
  for (int k = 0; k < m->nnodes; k++) {
    const rn_node *n = &m->nodes[k];
    const rn_tensor *t = &m->tensors[n->out];
    size_t np = 0;
    for (int i = 0; i < 4; i++)
      if (n->param[i] >= 0 && m->params[n->param[i]].trainable) np += m->params[n->param[i]].count;
    char shape[40], cnt[32];
    snprintf(shape, sizeof shape, "%dx%dx%d", t->h, t->w, t->c);
    fmt_count(cnt, sizeof cnt, np);
    fprintf(f, "  %-4d %-24s %-10s %-16s %12s", k, n->name[0] ? n->name : "-", rn_node_kind(n), shape, np ? cnt : "");
    if (n->op == RN_OP_ADD && n->survival < 1.0f) fprintf(f, "  (survival %.3f)", (double)n->survival);
    fputc('\n', f);
  }
  if (m->fused) {
    int nb = 0, na = 0, nba = 0;
    for (int k = 0; k < m->nnodes; k++) nb += m->nodes[k].relu && m->nodes[k].op == RN_OP_BN,
                                        na += m->nodes[k].relu && m->nodes[k].op == RN_OP_ADD,
                                        nba += m->nodes[k].bn_add;
    int nl = 0;
    for (int k = 0; k < m->nnodes; k++) nl += m->nodes[k].lazy;
    fprintf(f, "  fused: %d bn+relu, %d add+relu, %d of them with the branch BN, %d BN outputs applied by the next "
            "convolution (RN_FUSE=2: none of those, 1: no BN+add, 0: separate ReLU nodes)\n", nb, na, nba, nl);
  }
  char cnt[32];
  fmt_count(cnt, sizeof cnt, rn_model_param_count(m));
  fprintf(f, "  trainable parameters: %s (%.2fM)\n", cnt, (double)rn_model_param_count(m) / 1e6);
  char rbud[128] = "";
  if (m->recompute_floats)
    snprintf(rbud, sizeof rbud, " (budget +%.1f MB)", (double)m->recompute_floats * sizeof(float) / 1e6);
  if (m->nreplay && m->recompute_all_floats)
    snprintf(rbud + strlen(rbud), sizeof rbud - strlen(rbud), ", all kept with a budget of %.1f MB",
             rn_model_recompute_all_mb(m));
  fprintf(f, "  memory for batch %d: params %.1f MB (+grad, momentum), activations and their gradients %.1f MB (one "
          "liveness-planned arena; %d outputs recomputed in the backward%s; +%.1f MB of lazy BN outputs, used only with "
          "BN in eval mode during training; the gradients alone peak at %.1f MB), saved %.1f MB, workspace %.1f MB\n",
          m->batch, (double)m->ntotal * 4 / 1e6, (double)m->act_touch_floats * 4 / 1e6, m->nreplay, rbud,
          (double)(m->act_floats - m->act_touch_floats) * 4 / 1e6, (double)m->dact_floats * 4 / 1e6,
          (double)m->save_floats * 4 / 1e6, (double)m->ws_floats * 4 / 1e6);
}
