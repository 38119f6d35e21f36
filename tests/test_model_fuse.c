/* Fused BN+ReLU and add+ReLU (fusion level 1), also the branch BN fused into the add (level 2),
 * and also BN outputs applied by the convolution that reads them (level 3, the default)
 * (build-time fusion, rn_model_set_fusion / RN_FUSE), each level (and level 0) with the
 * elementwise outputs recomputed in the backward (rn_model_set_recompute / RN_RECOMPUTE), against
 * the same model built without fusion and without recompute: bitwise identical loss, logits,
 * parameter gradients, input gradient and BN running statistics over two training steps (the
 * second accumulating into the gradients), a partial batch, an eval forward and a backward with
 * BN in eval mode; for basic and bottleneck blocks, post- and pre-activation, shortcuts A/B/C,
 * plain nets, stochastic depth (a step with dropped and kept branches) and BN with running
 * statistics in training. Also: the fused graph has no ReLU node left, the per-kind names, the
 * parameter list is untouched (checkpoints do not see the fusion), replays are elementwise nodes,
 * and the touched arena is smaller with recompute. Also: streaming stores for the block outputs,
 * and the Winograd layers' lazy BNs beyond the direct kernel's width rules (wino_pre_case). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rn/kernels.h"
#include "rn/model.h"
#include "rn/optim.h"
#include "rn/wino.h"
#include "testutil.h"

static int g_small_on; /* Winograd's small-channel path (rn_conv_set_wino_small) */
static double g_budget_mb; /* recompute budget of the fused runs (rn_model_set_recompute_mb) */

typedef struct {
  const char *tag, *arch;
  int shortcut, preact, width, hw, classes, batch;
  float sd_pl;
  int bn_eval;
} fcase;

static const fcase cases[] = {
    {"cifar8 A", "cifar-resnet8", RN_SHORTCUT_A, 0, 16, 32, 10, 8, 1.0f, 0}, /* large enough to thread */
    {"cifar8 B", "cifar-resnet8", RN_SHORTCUT_B, 0, 4, 8, 5, 3, 1.0f, 0},
    {"cifar8 C", "cifar-resnet8", RN_SHORTCUT_C, 0, 4, 8, 5, 3, 1.0f, 0},
    {"cifar8 preact A", "cifar-resnet8", RN_SHORTCUT_A, 1, 8, 16, 5, 4, 1.0f, 0},
    {"cifar8 preact B", "cifar-resnet8", RN_SHORTCUT_B, 1, 4, 8, 5, 3, 1.0f, 0},
    {"cifar14 stochastic depth", "cifar-resnet14", RN_SHORTCUT_A, 0, 8, 16, 5, 4, 0.3f, 0},
    {"cifar14 preact stochastic depth", "cifar-resnet14", RN_SHORTCUT_B, 1, 8, 16, 5, 4, 0.3f, 0},
    {"cifar-plain8", "cifar-plain8", RN_SHORTCUT_A, 0, 4, 8, 4, 3, 1.0f, 0},
    {"cifar8 B bn_eval_in_train", "cifar-resnet8", RN_SHORTCUT_B, 0, 4, 8, 5, 3, 1.0f, 1},
    {"resnet18 w4 48x48", "resnet18", RN_SHORTCUT_B, 0, 4, 48, 6, 2, 1.0f, 0},
    {"resnet50 w4 64x64", "resnet50", RN_SHORTCUT_B, 0, 4, 64, 6, 2, 1.0f, 0},
    {"resnet50 w2 64x64 preact", "resnet50", RN_SHORTCUT_B, 1, 2, 64, 6, 2, 1.0f, 0},
    {"resnet50 w2 64x64 stochastic depth", "resnet50", RN_SHORTCUT_B, 0, 2, 64, 6, 2, 0.5f, 0},
    /* 16-channel multiples on the direct kernel: level 3 applies BN outputs in the next conv */
    {"cifar14 w16 stochastic depth", "cifar-resnet14", RN_SHORTCUT_A, 0, 16, 32, 10, 4, 0.3f, 0},
    {"cifar8 w16 preact B", "cifar-resnet8", RN_SHORTCUT_B, 1, 16, 32, 10, 3, 1.0f, 0},
    {"cifar-plain8 w16", "cifar-plain8", RN_SHORTCUT_A, 0, 16, 16, 4, 3, 1.0f, 0},
    {"cifar8 B w16 bn_eval_in_train", "cifar-resnet8", RN_SHORTCUT_B, 0, 16, 16, 5, 3, 1.0f, 1},
    {"resnet18 w16 112x112", "resnet18", RN_SHORTCUT_B, 0, 16, 112, 6, 2, 1.0f, 0},
    /* bottlenecks: the stride-2 3x3 conv2 applies its BN (dx by pixel parity computes the sums) */
    {"resnet50 w16 64x64", "resnet50", RN_SHORTCUT_B, 0, 16, 64, 6, 2, 1.0f, 0},
    /* with branch scales 0 and 1/p (stochastic depth) through the 16-wide 1x1 bands (item 39) */
    {"resnet50 w16 64x64 stochastic depth", "resnet50", RN_SHORTCUT_B, 0, 16, 64, 6, 2, 0.5f, 0},
    /* pre-activation bottlenecks: conv3 (1x1) applies bn3+ReLU; conv1 (shrinking) never does */
    {"resnet50 w16 64x64 preact", "resnet50", RN_SHORTCUT_B, 1, 16, 64, 6, 2, 1.0f, 0},
};

typedef struct {
  rn_model m;
  size_t tail_pages, tail_resident; /* lazy BN outputs' pages, and how many were resident after the
                                       training steps and the eval forward */
  double loss[3];
  float *logits, *grad, *gin, *state, *eval_logits, *grad_eval;
} run_out;

static int same(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof(float)); }

/* The whole pages of the activation arena's tail (the lazy BN outputs, rn_alloc_arena) and how
 * many of them are resident (mincore). */
static void tail_pages(rn_model *m, size_t *pages, size_t *resident) {
  const size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  uintptr_t a = ((uintptr_t)(m->act + m->act_touch_floats) + ps - 1) & ~(uintptr_t)(ps - 1);
  uintptr_t b = (uintptr_t)(m->act + m->act_floats) & ~(uintptr_t)(ps - 1);
  *pages = *resident = 0;
  if (b <= a) return;
  *pages = (b - a) / ps;
  unsigned char *v = malloc(*pages);
  if (!v || mincore((void *)a, b - a, v)) {
    CHECK(0, "mincore failed");
    *pages = 0;
  } else {
    for (size_t i = 0; i < *pages; i++) *resident += v[i] & 1;
  }
  free(v);
}

/* Builds the case (fusion on/off), runs the fixed sequence, keeps every result. */
static int run(const fcase *fc, int fuse, int recompute, run_out *o) {
  rn_model_config c;
  rn_err e = {0};
  rn_model_config_default(&c);
  if (rn_model_config_arch(&c, fc->arch, &e)) {
    CHECK(0, "%s: %s", fc->tag, e.msg);
    return 1;
  }
  c.shortcut = (rn_shortcut)fc->shortcut;
  c.preact = fc->preact;
  c.width = fc->width;
  c.in_h = c.in_w = fc->hw;
  c.num_classes = fc->classes;
  c.sd_pl = fc->sd_pl;
  int prev = rn_model_set_fusion(fuse), prev_rc = rn_model_set_recompute(recompute);
  double prev_mb = rn_model_set_recompute_mb(g_budget_mb);
  rn_status st = rn_model_build(&o->m, &c, fc->batch, &e);
  rn_model_set_fusion(prev);
  rn_model_set_recompute(prev_rc);
  rn_model_set_recompute_mb(prev_mb);
  if (st) {
    CHECK(0, "%s: %s", fc->tag, e.msg);
    return 1;
  }
  rn_model *m = &o->m;
  m->bn_eval_in_train = fc->bn_eval;
  m->input_grad = 1;
  rn_model_init(m, 11);
  rn_rng r = rn_rng_make(rn_key(5, 6, 7, 8));
  for (int i = 0; i < m->nparams; i++) { /* BN affine params and running stats away from 1/0 */
    rn_param *p = &m->params[i];
    if (p->ohwi || !strncmp(p->name, "fc.", 3)) continue;
    const char *leaf = strrchr(p->name, '.') + 1;
    for (size_t j = 0; j < p->count; j++) {
      float *v = &m->param[p->off + j];
      if (!strcmp(leaf, "weight")) *v = 1.0f + 0.3f * rn_rng_normal(&r);
      else if (!strcmp(leaf, "bias")) *v = 0.2f * rn_rng_normal(&r);
      else if (!strcmp(leaf, "running_mean")) *v = 0.2f * rn_rng_normal(&r);
      else *v = 0.5f + rn_rng_uniform(&r);
    }
  }
  int n = fc->batch, K = fc->classes;
  int32_t labels[16];
  for (int i = 0; i < n; i++) labels[i] = (int32_t)rn_rng_below(&r, (uint64_t)K);
  size_t nin = (size_t)n * fc->hw * fc->hw * 3;
  float *x = rn_model_input(m);
  for (size_t i = 0; i < nin; i++) x[i] = rn_rng_normal(&r);
  /* stochastic depth: the first step with at least one dropped and one kept branch */
  int64_t step = 0;
  if (fc->sd_pl < 1.0f) {
    for (; step < 1000; step++) {
      rn_model_set_step(m, 3, step);
      rn_model_forward(m, n, 1);
      int drop = 0, keep = 0;
      for (int k = 0; k < m->nnodes; k++)
        if (m->nodes[k].op == RN_OP_ADD && m->nodes[k].survival < 1.0f)
          drop += m->nodes[k].scale == 0.0f, keep += m->nodes[k].scale > 1.0f;
      if (drop && keep) break;
    }
  }
  rn_model_set_step(m, 3, step);
  o->logits = malloc((size_t)n * K * sizeof(float));
  o->eval_logits = malloc((size_t)n * K * sizeof(float));
  o->grad = malloc(m->ntrain * sizeof(float));
  o->grad_eval = malloc(m->ntrain * sizeof(float));
  o->gin = malloc(nin * sizeof(float));
  o->state = malloc(m->ntotal * sizeof(float));
  /* step 1, an SGD update, step 2 (its gradients accumulate onto step 1's) */
  rn_model_zero_grad(m);
  for (int s = 0; s < 2; s++) {
    rn_model_forward(m, n, 1);
    o->loss[s] = rn_model_loss(m, n, labels, 0.1f, NULL, NULL);
    rn_model_backward(m, n, NULL, NULL);
    if (s == 0) rn_sgd_step(m, 0.05f, 0.9f, 1e-4f, 0);
  }
  memcpy(o->logits, rn_model_logits(m), (size_t)n * K * sizeof(float));
  memcpy(o->grad, m->grad, m->ntrain * sizeof(float));
  memcpy(o->gin, rn_model_input_grad(m), nin * sizeof(float));
  /* a partial batch */
  rn_model_forward(m, n - 1 > 0 ? n - 1 : 1, 1);
  o->loss[2] = rn_model_loss(m, n - 1 > 0 ? n - 1 : 1, labels, 0.0f, NULL, NULL);
  memcpy(o->state, m->param, m->ntotal * sizeof(float)); /* includes running statistics */
  /* eval forward, and a backward of the eval-mode forward */
  rn_model_forward(m, n, 0);
  memcpy(o->eval_logits, rn_model_logits(m), (size_t)n * K * sizeof(float));
  tail_pages(m, &o->tail_pages, &o->tail_resident);
  rn_model_loss(m, n, labels, 0.0f, NULL, NULL);
  rn_model_zero_grad(m);
  rn_model_backward(m, n, NULL, NULL);
  memcpy(o->grad_eval, m->grad, m->ntrain * sizeof(float));
  return 0;
}

static void free_out(run_out *o) {
  free(o->logits), free(o->eval_logits), free(o->grad), free(o->grad_eval), free(o->gin), free(o->state);
  rn_model_free(&o->m);
}

static void run_case(const fcase *fc, int level) {
  run_out a, b;
  memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
  if (run(fc, 0, 0, &a)) return;
  if (run(fc, level, 1, &b)) {
    free_out(&a);
    return;
  }
  const rn_model *ma = &a.m, *mb = &b.m;
  int n = fc->batch, K = fc->classes;
  size_t nin = (size_t)n * fc->hw * fc->hw * 3;
  /* structure: no ReLU node left, fused kinds named, params untouched, same activation memory */
  int relu_a = 0, relu_b = 0, fb = 0, fa = 0, named = 1, bnadd_a = 0, bnadd_b = 0, adds_b = 0;
  for (int k = 0; k < ma->nnodes; k++)
    relu_a += ma->nodes[k].op == RN_OP_RELU, fa += ma->nodes[k].relu, bnadd_a += ma->nodes[k].bn_add;
  for (int k = 0; k < mb->nnodes; k++) {
    const rn_node *d = &mb->nodes[k];
    relu_b += d->op == RN_OP_RELU;
    fb += d->relu;
    bnadd_b += d->bn_add;
    adds_b += d->op == RN_OP_ADD;
    const char *want = d->op == RN_OP_BN ? "bn+relu" : d->bn_add ? (d->relu ? "bn+add+relu" : "bn+add") : "add+relu";
    if (d->relu || d->bn_add) named &= !strcmp(rn_node_kind(d), want) && d->op != RN_OP_CONV;
  }
  /* level 2: a post-activation residual net fuses the branch BN of every block (also over a
   * projection shortcut) */
  int want_bnadd = 0;
  for (int k = 0; level >= 2 && !fc->preact && k < mb->nnodes; k++) want_bnadd += mb->nodes[k].op == RN_OP_ADD;
  int bnadd_ok = bnadd_a == 0 && bnadd_b == want_bnadd && (level < 2 || fc->preact || !adds_b || bnadd_b > 0);
  /* level 3: BN outputs applied by the reading conv (rn_node.lazy) where the channels take the
   * direct kernel (multiples of 16), never below level 3; each such BN's reader names it */
  int lazy_a = 0, lazy_b = 0, lazy_ok = 1, lazy_1x1 = 0, lazy_wino = 0;
  for (int k = 0; k < ma->nnodes; k++) lazy_a += ma->nodes[k].lazy;
  for (int k = 0; k < mb->nnodes; k++) {
    const rn_node *d = &mb->nodes[k];
    lazy_b += d->lazy != 0;
    if (d->op == RN_OP_CONV && d->pre_bn >= 0) {
      lazy_ok &= mb->nodes[d->pre_bn].lazy && mb->nodes[d->pre_bn].out == d->in;
      lazy_1x1 += d->u.conv.kh == 1 && d->u.conv.kw == 1;
      lazy_wino += rn_conv_wino_ok(&d->u.conv); /* applied in Winograd's input transforms */
      /* a 1x1 reader: stride 1, and it does not shrink the channels (conv3, not conv1) */
      lazy_ok &= !(d->u.conv.kh == 1) || (d->u.conv.stride == 1 && d->u.conv.cout >= d->u.conv.cin);
    }
  }
  /* level 3: the BN of every projection shortcut (a BN whose output is an add's shortcut input) is
   * applied by the fused BN+add that reads it (lazy = 3, the add's pre_bn), any channel count */
  int sc_a = 0, sc_b = 0;
  for (int k = 0; k < ma->nnodes; k++)
    for (int q = 0; ma->nodes[k].op == RN_OP_ADD && q < ma->nnodes; q++)
      sc_a += ma->nodes[q].op == RN_OP_BN && ma->nodes[q].out == ma->nodes[k].in;
  for (int k = 0; k < mb->nnodes; k++) {
    const rn_node *d = &mb->nodes[k];
    if (d->op == RN_OP_BN && d->lazy == 3) sc_b++;
    if (d->op == RN_OP_ADD && d->pre_bn >= 0)
      lazy_ok &= d->bn_add && mb->nodes[d->pre_bn].lazy == 3 && mb->nodes[d->pre_bn].out == d->in &&
                 !mb->nodes[d->pre_bn].relu;
  }
  CHECK(sc_b == (level >= 3 && !fc->preact ? sc_a : 0) && (fc->preact || strcmp(fc->arch, "resnet50") || sc_a > 0),
        "%s level %d: %d lazy projection-shortcut BNs (%d projection BNs)", fc->tag, level, sc_b, sc_a);
  /* bottlenecks with 16-channel multiples at >= 14-wide lines: conv3 (1x1) applies bn2 (+ReLU) */
  CHECK(level < 3 || fc->width % 16 || strcmp(fc->arch, "resnet50") || lazy_1x1 > 0,
        "%s level %d: no 1x1 convolution reads a lazy BN", fc->tag, level);
  CHECK(lazy_a == 0 && lazy_ok && (level < 3 ? lazy_b == 0 : fc->width % 16 != 0 || lazy_b > 0),
        "%s level %d: %d lazy BN nodes (unfused %d)", fc->tag, level, lazy_b, lazy_a);
  /* with the small path, 16-channel multiples run their 3x3 layers on Winograd, which applies the
   * lazy BNs before them too */
  CHECK(level < 3 || fc->width % 16 != 0 || !g_small_on || lazy_wino > 0,
        "%s level %d: no Winograd convolution reads a lazy BN", fc->tag, level);
  /* the lazy BN outputs: the arena's tail, never written by training steps or an eval forward
   * (only with BN in eval mode during training), so never resident */
  size_t lazy_floats = 0;
  for (int k = 0; k < mb->nnodes; k++)
    if (mb->nodes[k].lazy) {
      const rn_tensor *t = &mb->tensors[mb->nodes[k].out];
      lazy_floats += rn_align16((size_t)mb->batch * t->h * t->w * t->c);
    }
  CHECK(mb->act_floats - mb->act_touch_floats == lazy_floats && (fc->bn_eval || b.tail_resident == 0) &&
            (lazy_floats < 4096 || b.tail_pages > 0),
        "%s level %d: lazy tail %zu floats (%zu expected), %zu of %zu pages resident", fc->tag, level,
        mb->act_floats - mb->act_touch_floats, lazy_floats, b.tail_resident, b.tail_pages);
  int params_same = ma->nparams == mb->nparams && ma->ntotal == mb->ntotal;
  for (int i = 0; params_same && i < ma->nparams; i++)
    params_same &= !strcmp(ma->params[i].name, mb->params[i].name) && ma->params[i].off == mb->params[i].off;
  CHECK(!ma->fused && mb->fused == level && fa == 0 && (level == 0 ? relu_b == relu_a && fb == 0 : relu_b == 0 && fb == relu_a) &&
            mb->nnodes == ma->nnodes - (level ? relu_a : 0) - bnadd_b && named && bnadd_ok,
        "%s level %d: fusion structure (unfused %d ReLU nodes; fused %d ReLU nodes, %d fused nodes, %d BN+add)", fc->tag,
        level, relu_a, relu_b, fb, bnadd_b);
  CHECK(params_same, "%s: parameter list differs with fusion", fc->tag);
  /* recompute: replayed nodes are elementwise and replayed before a later node's backward, their
   * outputs have a backward buffer of their own; the touched arena is no larger than without
   * fusion and recompute, and smaller than with this fusion level alone where anything is replayed */
  int rc_ok = ma->nreplay == 0;
  for (int i = 0; i < mb->nreplay; i++) {
    const rn_node *d = &mb->nodes[mb->replay[i]];
    rc_ok &= (d->op == RN_OP_BN || d->op == RN_OP_ADD || d->op == RN_OP_RELU || d->op == RN_OP_SHORTCUT_A) && !d->lazy &&
             d->rp_at >= mb->replay[i] && (i == 0 || mb->nodes[mb->replay[i - 1]].rp_at >= d->rp_at);
  }
  size_t solo = 0;
  {
    rn_model_config c;
    rn_model_config_default(&c);
    rn_model_config_arch(&c, fc->arch, NULL);
    c.shortcut = (rn_shortcut)fc->shortcut, c.preact = fc->preact, c.width = fc->width;
    c.in_h = c.in_w = fc->hw, c.num_classes = fc->classes, c.sd_pl = fc->sd_pl;
    rn_model mc;
    int prev = rn_model_set_fusion(level), prev_rc = rn_model_set_recompute(0);
    if (!rn_model_build(&mc, &c, fc->batch, NULL)) {
      solo = mc.act_touch_floats;
      rn_model_free(&mc);
    }
    rn_model_set_fusion(prev), rn_model_set_recompute(prev_rc);
  }
  CHECK(rc_ok && mb->act_touch_floats <= ma->act_touch_floats &&
            (mb->nreplay ? mb->act_touch_floats < solo : mb->act_touch_floats == solo),
        "%s level %d: %d replayed nodes (ok %d), touched arena %zu, %zu unfused without recompute, %zu at this level "
        "without", fc->tag, level, mb->nreplay, rc_ok, mb->act_touch_floats, ma->act_touch_floats, solo);
  int ok_loss = !memcmp(a.loss, b.loss, sizeof a.loss);
  int ok_logits = same(a.logits, b.logits, (size_t)n * K) && same(a.eval_logits, b.eval_logits, (size_t)n * K);
  int ok_grad = same(a.grad, b.grad, ma->ntrain) && same(a.grad_eval, b.grad_eval, ma->ntrain);
  int ok_gin = same(a.gin, b.gin, nin);
  int ok_state = same(a.state, b.state, ma->ntotal);
  double nz = 0;
  for (size_t i = 0; i < ma->ntrain; i++) nz += a.grad[i] != 0.0f;
  CHECK(ok_loss && ok_logits && ok_grad && ok_gin && ok_state && isfinite(a.loss[0]) && nz > ma->ntrain / 2,
        "%s level %d: fused with recompute differs from unfused without: loss %d logits %d grads %d input grad %d state %d (loss %.17g vs %.17g)",
        fc->tag, level, ok_loss, ok_logits, ok_grad, ok_gin, ok_state, a.loss[0], b.loss[0]);
  printf("%-36s %s level %d: %3d -> %3d nodes (%2d fused ReLU, %d BN+add, %d lazy BN, %d replayed), loss %.6f %.6f: %s\n",
         fc->tag, g_small_on ? "wino-small" : "direct    ", level, ma->nnodes, mb->nnodes, fb, bnadd_b, lazy_b, mb->nreplay, a.loss[0],
         a.loss[1], ok_loss && ok_logits && ok_grad && ok_gin && ok_state ? "bitwise identical" : "DIFFERENT");
  free_out(&a);
  free_out(&b);
}

/* Cases for budget_case: shortcut A (the option-A chains), projections, stochastic depth. */
static const char *const budget_cases[] = {"cifar14 w16 stochastic depth", "resnet50 w16 64x64",
                                           "resnet50 w16 64x64 stochastic depth"};

/* Arena (touched floats) and replay count of the case at fusion level 3 with recompute on and
 * budget mb, or with recompute off (mb < 0). */
static void plan_of(const fcase *fc, double mb, size_t *arena, int *nrep, double *all_mb) {
  rn_model_config c;
  rn_model_config_default(&c);
  rn_model_config_arch(&c, fc->arch, NULL);
  c.shortcut = (rn_shortcut)fc->shortcut, c.preact = fc->preact, c.width = fc->width;
  c.in_h = c.in_w = fc->hw, c.num_classes = fc->classes, c.sd_pl = fc->sd_pl;
  rn_model mc;
  int prev = rn_model_set_fusion(3), prev_rc = rn_model_set_recompute(mb >= 0);
  double prev_mb = rn_model_set_recompute_mb(mb >= 0 ? mb : 0);
  *arena = 0, *nrep = -1;
  if (!rn_model_build(&mc, &c, fc->batch, NULL)) {
    *arena = mc.act_touch_floats, *nrep = mc.nreplay, *all_mb = rn_model_recompute_all_mb(&mc);
    CHECK(mb <= 0 || mc.recompute_floats == (size_t)(mb * 1e6 / sizeof(float)), "%s: budget %g MB planned as %zu floats",
          fc->tag, mb, mc.recompute_floats);
    rn_model_free(&mc);
  }
  rn_model_set_fusion(prev), rn_model_set_recompute(prev_rc), rn_model_set_recompute_mb(prev_mb);
}

static void budget_case(const fcase *fc) {
  size_t a0, an, ab, ah, aa;
  int r0, rn, rb, rh, ra;
  double all, x;
  plan_of(fc, 0, &a0, &r0, &all);
  plan_of(fc, -1, &an, &rn, &x);
  const double half = (double)(an - a0) / 2 * sizeof(float) / 1e6;
  plan_of(fc, half, &ab, &rb, &x);
  plan_of(fc, 1e6, &ah, &rh, &x);
  plan_of(fc, all, &aa, &ra, &x); /* the budget the plan reports for keeping them all */
  CHECK(all > 0 && all < (double)(an - a0) * sizeof(float) / 1e6 + 0.1 && ra == 0 && aa == an,
        "%s: the reported all-kept budget %.1f MB (no recompute: +%zu floats) left %d replays in %zu floats", fc->tag, all,
        an - a0, ra, aa);
  printf("%-36s budget: %d replays, arena %zu floats; +%.4f MB: %d, %zu; +1e6 MB: %d, %zu; none: %zu\n", fc->tag, r0, a0,
         half, rb, ab, rh, ah, an);
  CHECK(r0 >= 2 && rn == 0 && an > a0 && rb > 0 && rb < r0 && ab <= a0 + (size_t)(half * 1e6 / sizeof(float)) && rh == 0 &&
            ah == an,
        "%s: budget plans: %d replays in %zu floats; with +%.4f MB %d in %zu; with +1e6 MB %d in %zu; no recompute %zu",
        fc->tag, r0, a0, half, rb, ab, rh, ah, an);
  g_budget_mb = half; /* the same bits with part of the replays kept */
  run_case(fc, 3);
  g_budget_mb = 0;
}

/* Streaming stores for the BN+add outputs (rn_bn_set_add_stream_mb): ResNet-50 at 96 x 96, b4,
 * whose layer-1 block outputs (2.4 MB) exceed the 1 MB set here, forward and replays: two training
 * steps with an SGD update in between, bitwise the plain stores (loss, gradients, parameters and
 * running statistics). */
static void add_stream_case(void) {
  rn_model_config c;
  rn_err e = {0};
  rn_model_config_default(&c);
  rn_model_config_arch(&c, "resnet50", NULL);
  c.in_h = c.in_w = 96, c.num_classes = 5;
  const int batch = 4;
  float *g[2], *st[2];
  double loss[2][2];
  size_t big = 0;
  for (int v = 0; v < 2; v++) {
    rn_model m;
    if (rn_model_build(&m, &c, batch, &e)) {
      CHECK(0, "add stream: %s", e.msg);
      return;
    }
    for (int k = 0; k < m.nnodes; k++) {
      const rn_node *d = &m.nodes[k];
      const rn_tensor *t = &m.tensors[d->out];
      if (v == 0 && d->op == RN_OP_ADD && d->bn_add && (size_t)batch * t->h * t->w * t->c * 4 > ((size_t)1 << 20)) big++;
    }
    rn_model_init(&m, 5);
    rn_rng r = rn_rng_make(rn_key(4, 4, 4, 4));
    int32_t labels[4];
    for (int i = 0; i < batch; i++) labels[i] = (int32_t)rn_rng_below(&r, 5);
    const size_t nin = (size_t)batch * 96 * 96 * 3;
    float *x = rn_model_input(&m);
    for (size_t i = 0; i < nin; i++) x[i] = rn_rng_normal(&r);
    rn_bn_set_add_stream_mb(v ? 1 : 0);
    rn_model_zero_grad(&m);
    for (int s = 0; s < 2; s++) {
      rn_model_forward(&m, batch, 1);
      loss[v][s] = rn_model_loss(&m, batch, labels, 0.0f, NULL, NULL);
      rn_model_backward(&m, batch, NULL, NULL);
      if (s == 0) rn_sgd_step(&m, 0.05f, 0.9f, 1e-4f, 0);
    }
    rn_bn_set_add_stream_mb(-1);
    g[v] = malloc(m.ntrain * sizeof(float)), st[v] = malloc(m.ntotal * sizeof(float));
    memcpy(g[v], m.grad, m.ntrain * sizeof(float)), memcpy(st[v], m.param, m.ntotal * sizeof(float));
    if (v == 1) {
      CHECK(big >= 3 && !memcmp(loss[0], loss[1], sizeof loss[0]) && !memcmp(g[0], g[1], m.ntrain * sizeof(float)) &&
                !memcmp(st[0], st[1], m.ntotal * sizeof(float)),
            "add stream: %zu BN+add outputs above 1 MB; streamed and plain stores differ (loss %.9g %.9g)", big, loss[0][1],
            loss[1][1]);
      printf("add stream resnet50 96x96 b4: %zu BN+add outputs above 1 MB streamed, bitwise the plain stores (loss %.6f)\n",
             big, loss[1][1]);
    }
    rn_model_free(&m);
  }
  free(g[0]), free(g[1]), free(st[0]), free(st[1]);
}

/* A Winograd layer reads its BN's output lazily also where the direct kernel's width rules would
 * put its dW on the GEMM (rn_conv_set_wino_pre_any; ResNet-50's 256@14 and 512@7, here at 96x96
 * layers 2-4's 12-, 6- and 3-wide 3x3 layers). Runs of ResNet-50 96x96 b4, the default plan
 * (those BNs lazy) against one planned with the switch off (stored): with Winograd on, two
 * training steps bitwise the same (loss, gradients, parameters with BN statistics); with Winograd
 * switched off at run time and every pass direct (all-widths mode), the same; and with Winograd
 * off under the width rules, where the lazy BNs' readers must run dW on the direct kernel anyway
 * (the stored plan's run it on the GEMM), one step's gradients within rounding. */
static void wino_pre_case(void) {
  rn_model_config c;
  rn_err e = {0};
  rn_model_config_default(&c);
  rn_model_config_arch(&c, "resnet50", NULL);
  c.in_h = c.in_w = 96, c.num_classes = 5;
  const int batch = 4;
  float *g[6], *st[6];
  double loss[6][2];
  int nlazy[6];
  size_t ntrain = 0, ntotal = 0;
  for (int v = 0; v < 6; v++) {
    rn_model m;
    rn_conv_set_wino_pre_any(!(v & 1)); /* v even: lazy (the default); odd: stored */
    const int st_ = rn_model_build(&m, &c, batch, &e);
    rn_conv_set_wino_pre_any(1);
    if (st_) {
      CHECK(0, "wino pre: %s", e.msg);
      return;
    }
    nlazy[v] = 0;
    for (int k = 0; k < m.nnodes; k++) nlazy[v] += m.nodes[k].lazy == 1;
    rn_model_init(&m, 5);
    rn_rng r = rn_rng_make(rn_key(5, 5, 5, 5));
    int32_t labels[4];
    for (int i = 0; i < batch; i++) labels[i] = (int32_t)rn_rng_below(&r, 5);
    const size_t nin = (size_t)batch * 96 * 96 * 3;
    float *x = rn_model_input(&m);
    for (size_t i = 0; i < nin; i++) x[i] = rn_rng_normal(&r);
    if (v >= 2) rn_conv_set_wino(0);
    if (v == 2 || v == 3) rn_conv_set_direct_all_widths(1);
    rn_model_zero_grad(&m);
    loss[v][1] = 0;
    for (int s = 0; s < (v >= 4 ? 1 : 2); s++) {
      rn_model_forward(&m, batch, 1);
      loss[v][s] = rn_model_loss(&m, batch, labels, 0.0f, NULL, NULL);
      rn_model_backward(&m, batch, NULL, NULL);
      if (s == 0 && v < 4) rn_sgd_step(&m, 0.05f, 0.9f, 1e-4f, 0);
    }
    rn_conv_set_wino(1), rn_conv_set_direct_all_widths(0);
    ntrain = m.ntrain, ntotal = m.ntotal;
    g[v] = malloc(m.ntrain * sizeof(float)), st[v] = malloc(m.ntotal * sizeof(float));
    memcpy(g[v], m.grad, m.ntrain * sizeof(float)), memcpy(st[v], m.param, m.ntotal * sizeof(float));
    rn_model_free(&m);
  }
  /* layer2.1-2.3, layer3.1-3.5 and layer4.1-4.2's bn1 (12-, 6- and 3-wide Winograd readers) */
  CHECK(nlazy[0] == nlazy[2] && nlazy[0] == nlazy[4] && nlazy[1] == nlazy[3] && nlazy[1] == nlazy[5] &&
            nlazy[0] >= nlazy[1] + 10,
        "wino pre: lazy BNs %d (default plan) against %d (switch off): expected 10 more", nlazy[0], nlazy[1]);
  for (int v = 0; v < 4; v += 2)
    CHECK(!memcmp(loss[v], loss[v + 1], sizeof loss[v]) && !memcmp(g[v], g[v + 1], ntrain * sizeof(float)) &&
              !memcmp(st[v], st[v + 1], ntotal * sizeof(float)),
          "wino pre (%s): the lazy plan differs from the stored one (loss %.9g %.9g)",
          v ? "Winograd off, all passes direct" : "Winograd on", loss[v][1], loss[v + 1][1]);
  /* the first forward: Winograd's and the direct kernel's rounding only (the step after it amplifies) */
  CHECK(fabs(loss[0][0] - loss[2][0]) < 1e-4 * fabs(loss[2][0]), "wino pre: Winograd and direct losses %.9g %.9g",
        loss[0][0], loss[2][0]);
  /* relative L2 distance of the gradients: ~6e-3 here between two plans that differ only in
   * rounding (the stored plan all direct against the width rules: 6.0e-3; this pair 6.7e-3), as
   * batch-4 BN over 3x3 images and ReLU / max-pool decisions carry it */
  double d2 = 0, n2 = 0;
  for (size_t i = 0; i < ntrain; i++) {
    const double dd = (double)g[4][i] - g[5][i];
    d2 += dd * dd, n2 += (double)g[5][i] * g[5][i];
  }
  const double rel = sqrt(d2 / n2);
  CHECK(fabs(loss[4][0] - loss[5][0]) < 1e-5 * fabs(loss[5][0]) && rel < 2e-2,
        "wino pre (Winograd off, width rules): losses %.9g %.9g, gradients %.3g apart (relative L2)", loss[4][0],
        loss[5][0], rel);
  printf("wino pre resnet50 96x96 b4: %d lazy BNs (%d with the switch off), bitwise the stored plan with Winograd "
         "(loss %.6f) and with every pass direct (loss %.6f); by the width rules gradients %.2g apart\n",
         nlazy[0], nlazy[1], loss[0][1], loss[2][1], rel);
  for (int v = 0; v < 6; v++) free(g[v]), free(st[v]);
}

/* kB of AnonHugePages in /proc/self/smaps over the mappings that overlap [a, b). */
static long huge_kb(uintptr_t a, uintptr_t b) {
  FILE *f = fopen("/proc/self/smaps", "r");
  if (!f) return -1;
  char line[512];
  long kb = 0;
  int in = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    long v;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') == line + strspn(line, "0123456789abcdef"))
      in = lo < b && hi > a;
    else if (in && sscanf(line, "AnonHugePages: %ld kB", &v) == 1)
      kb += v;
  }
  fclose(f);
  return kb;
}

/* Transparent huge pages (core.c): the touched part of an activation arena and large rn_alloc
 * buffers ask for them (the kernel's THP mode is "madvise" on Debian 12); the arena's untouched
 * tail stays unbacked. With THP off in the kernel ("[never]") only the latter can be checked. */
static void test_hugepages(void) {
  char mode[128] = "";
  FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (f) {
    if (!fgets(mode, sizeof mode, f)) mode[0] = 0;
    fclose(f);
  }
  const char *env = getenv("RN_HUGEPAGES");
  const int want = mode[0] && !strstr(mode, "[never]") && !(env && env[0] == '0');
  const size_t bytes = (size_t)64 << 20, touch = ((size_t)40 << 20) + 12345, ps = (size_t)sysconf(_SC_PAGESIZE);
  char *p = rn_alloc_arena(bytes, touch);
  const long akb = huge_kb((uintptr_t)p, (uintptr_t)p + touch);
  uintptr_t t0 = ((uintptr_t)p + touch + ps - 1) & ~(uintptr_t)(ps - 1), t1 = ((uintptr_t)p + bytes) & ~(uintptr_t)(ps - 1);
  size_t np = (t1 - t0) / ps, res = 0;
  unsigned char *v = malloc(np);
  CHECK(v && !mincore((void *)t0, t1 - t0, v), "mincore failed");
  for (size_t i = 0; v && i < np; i++) res += v[i] & 1;
  free(v);
  float *q = rn_alloc((size_t)32 << 20);
  const long bkb = huge_kb((uintptr_t)q, (uintptr_t)q + ((size_t)32 << 20));
  CHECK(akb >= 0 && bkb >= 0, "cannot read /proc/self/smaps");
  CHECK(want ? akb >= 2048 && bkb >= 2048 : akb == 0 || !strstr(mode, "[madvise]"),
        "huge pages (THP mode %.*s): arena %ld kB, 32 MB buffer %ld kB", (int)strcspn(mode, "\n"), mode, akb, bkb);
  CHECK(res == 0, "arena tail: %zu of %zu pages resident", res, np);
  printf("huge pages (THP %.*s): arena's touched 40 MB %ld kB, 32 MB buffer %ld kB; tail %zu of %zu pages resident\n",
         (int)strcspn(mode, "\n"), mode, akb, bkb, res, np);
  rn_free(q);
  rn_free_arena(p, bytes);
}

int main(void) {
  rn_err e = {0};
  test_hugepages();
  if (rn_blas_init(NULL, 2, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  /* Winograd's small-channel path off first (the 3x3 layers of these narrow models on the direct
   * kernels, which read the lazy BNs), then on (the default): Winograd takes those layers, applies
   * the lazy BNs in its input transforms and computes the statistics and BN sums in its output
   * transforms, and the fused graphs must stay bitwise identical too. */
  for (g_small_on = 0; g_small_on <= 1; g_small_on++) {
    rn_conv_set_wino_small(g_small_on);
    for (int level = 0; level <= 3; level++)
      for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], level);
  }
  /* the setting: -1 restores the environment default */
  int prev = rn_model_set_fusion(0);
  CHECK(rn_model_set_fusion(3) == 0 && rn_model_set_fusion(2) == 3 && rn_model_set_fusion(1) == 2 &&
            rn_model_set_fusion(prev) == 1,
        "rn_model_set_fusion round trip");
  prev = rn_model_set_recompute(0);
  CHECK(rn_model_set_recompute(1) == 0 && rn_model_set_recompute(prev) == 1, "rn_model_set_recompute round trip");
  /* A recompute budget between none and all (rn_model_set_recompute_mb): fewer replays, an arena
   * within the budget above the smallest one, and again the same bits as the unfused model without
   * recompute. */
  for (size_t i = 0; i < sizeof budget_cases / sizeof budget_cases[0]; i++) {
    size_t j = 0;
    while (j < sizeof cases / sizeof cases[0] && strcmp(cases[j].tag, budget_cases[i])) j++;
    CHECK(j < sizeof cases / sizeof cases[0], "budget case '%s' not found", budget_cases[i]);
    if (j < sizeof cases / sizeof cases[0]) budget_case(&cases[j]);
  }
  add_stream_case();
  wino_pre_case();
  double pmb = rn_model_set_recompute_mb(5);
  CHECK(rn_model_set_recompute_mb(0) == 5 && rn_model_set_recompute_mb(pmb) == 0, "rn_model_set_recompute_mb round trip");
  return tu_done("test_model_fuse");
}
