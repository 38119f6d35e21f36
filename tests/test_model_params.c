/* Model builder: parameter counts (torchvision / the papers), names and shapes, plain twins,
 * option A/B/C shortcuts, pre-activation names, stochastic-depth survival, init statistics,
 * 1-channel 28x28 inputs, planning invariants, clear errors for unknown architectures. */
#include <math.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/model.h"
#include "testutil.h"

static int build(rn_model *m, const char *arch, int shortcut, int in_c, int hw, int classes, int batch) {
  rn_model_config c;
  rn_err e = {0};
  rn_model_config_default(&c);
  if (rn_model_config_arch(&c, arch, &e)) {
    fprintf(stderr, "config %s: %s\n", arch, e.msg);
    return 1;
  }
  if (shortcut >= 0) c.shortcut = (rn_shortcut)shortcut;
  c.in_channels = in_c, c.in_h = c.in_w = hw, c.num_classes = classes;
  if (rn_model_build(m, &c, batch, &e)) {
    fprintf(stderr, "build %s: %s\n", arch, e.msg);
    return 1;
  }
  return 0;
}

static int count_named(const rn_model *m, const char *sub) {
  int k = 0;
  for (int i = 0; i < m->nparams; i++) k += strstr(m->params[i].name, sub) != NULL;
  return k;
}
static int count_op(const rn_model *m, rn_op op) {
  int k = 0;
  for (int i = 0; i < m->nnodes; i++) k += m->nodes[i].op == op;
  return k;
}
static size_t sum_named(const rn_model *m, const char *sub) {
  size_t k = 0;
  for (int i = 0; i < m->nparams; i++)
    if (m->params[i].trainable && strstr(m->params[i].name, sub)) k += m->params[i].count;
  return k;
}

static void check_dims(const rn_model *m, const char *name, int ndim, int d0, int d1, int d2, int d3) {
  int i = rn_model_find_param(m, name);
  CHECK(i >= 0, "%s: parameter %s missing", m->cfg.arch, name);
  if (i < 0) return;
  const rn_param *p = &m->params[i];
  int want[4] = {d0, d1, d2, d3};
  int ok = p->ndim == ndim;
  for (int k = 0; k < ndim && ok; k++) ok = p->dims[k] == want[k];
  CHECK(ok, "%s: %s has ndim %d dims %d,%d,%d,%d; want %d: %d,%d,%d,%d", m->cfg.arch, name, p->ndim, p->dims[0],
        p->dims[1], p->dims[2], p->dims[3], ndim, d0, d1, d2, d3);
}

/* Planning invariants: params tile the arena in forward order, tensors fit in the arenas. */
static void check_layout(const rn_model *m) {
  size_t last = 0, cnt = 0;
  int seen_buffer = 0, ok = 1;
  for (int i = 0; i < m->nparams; i++) {
    const rn_param *p = &m->params[i];
    if (p->trainable) {
      ok &= p->off >= last && p->off + p->count <= m->ntrain;
      last = p->off + p->count;
      cnt += p->count;
    } else {
      ok &= p->off >= m->ntrain && p->off + p->count <= m->ntotal;
      seen_buffer = 1;
    }
    ok &= (p->off % 16) == 0;
  }
  CHECK(ok && cnt == rn_model_param_count(m), "%s: parameter layout broken", m->cfg.arch);
  CHECK(seen_buffer, "%s: no BN buffers", m->cfg.arch);
  ok = 1;
  int unused = 0, ok_unused = 1;
  for (int t = 0; t < m->ntensors; t++) {
    const rn_tensor *x = &m->tensors[t];
    size_t sz = (size_t)m->batch * x->h * x->w * x->c;
    if (x->off == (size_t)-1) { /* left unused by the fusion pass: no producer, no consumer */
      unused++;
      for (int k = 0; k < m->nnodes; k++)
        ok_unused &= m->nodes[k].in != t && m->nodes[k].in2 != t && m->nodes[k].out != t;
      ok_unused &= x->goff == (size_t)-1 && t != m->input;
      continue;
    }
    /* gradients share the arena's touched part (never the lazy tail) */
    ok &= x->off + sz <= m->act_floats && x->boff + sz <= m->act_floats &&
          (x->goff == (size_t)-1 || x->goff + sz <= m->act_touch_floats);
  }
  CHECK(ok, "%s: tensor outside its arena", m->cfg.arch);
  /* every ReLU is fused (fusion on by default): one unused pre-ReLU tensor per removed node */
  int nrelu = 0, nfused = 0, nbnadd = 0;
  for (int k = 0; k < m->nnodes; k++)
    nrelu += m->nodes[k].op == RN_OP_RELU, nfused += m->nodes[k].relu, nbnadd += m->nodes[k].bn_add;
  CHECK(ok_unused && unused == nfused + nbnadd && (!m->fused || nrelu == 0), "%s: fusion left %d ReLU nodes, %d unused "
        "tensors for %d fused ReLUs and %d fused BN+add", m->cfg.arch, nrelu, unused, nfused, nbnadd);
  /* level 2 (default): every post-activation add has its branch BN, also over a projection
   * shortcut, where the branch conv hands the BN its statistics in the second buffer
   * (stats_next 2: the projection's conv uses the first one in between) */
  if (m->fused >= 2 && !m->cfg.preact && !m->cfg.plain) {
    int want = 0, nproj = 0;
    for (int k = 0; k < m->nnodes; k++) {
      const rn_node *d = &m->nodes[k];
      if (d->op != RN_OP_ADD) continue;
      int proj = 0;
      for (int q = 0; q < m->nnodes; q++) proj |= m->nodes[q].out == d->in && strstr(m->nodes[q].name, "downsample");
      want++, nproj += proj;
      int conv_in2 = -1;
      for (int q = 0; q < k; q++)
        if (m->nodes[q].out == d->in2 && m->nodes[q].op == RN_OP_CONV) conv_in2 = q;
      CHECK(d->bn_add && conv_in2 >= 0 && strstr(d->name, ".bn") && d->param[3] >= 0 &&
                m->nodes[conv_in2].stats_next == (proj ? 2 : 1),
            "%s: add %d: BN fusion %d (projection %d, branch conv stats buffer %d)", m->cfg.arch, k, d->bn_add, proj,
            conv_in2 >= 0 ? m->nodes[conv_in2].stats_next : -1);
    }
    CHECK(nbnadd == want && want > 0 && (strncmp(m->cfg.arch, "resnet", 6) || nproj > 0),
          "%s: %d BN+add nodes, want %d (%d over projections)", m->cfg.arch, nbnadd, want, nproj);
  }
  CHECK(m->nodes[m->nnodes - 1].out == m->logits && m->tensors[m->logits].c == m->cfg.num_classes,
        "%s: logits tensor wrong", m->cfg.arch);
}

/* In-place residual adds: every add writes into its shortcut input or its branch input (each is
 * private in these nets: projection/option-A outputs, the branch's last BN or conv output), never
 * into a tensor another node reads or a fused BN+ReLU output (its backward needs it as the mask),
 * except in the forward when both are recomputed in the backward (rn_node.rp_at).
 * Returns the number of adds written in place over their branch input. */
static int check_add_inplace(const rn_model *m, const char *tag) {
  int nadd = 0, ok = 1, over_in2 = 0;
  for (int k = 0; k < m->nnodes; k++) {
    const rn_node *d = &m->nodes[k];
    if (d->op != RN_OP_ADD) continue;
    nadd++;
    size_t o = m->tensors[d->out].off;
    int on_in = o == m->tensors[d->in].off, on_in2 = o == m->tensors[d->in2].off;
    if (d->bn_add) { /* fused branch BN: in2 is the BN input (kept for its backward): over in when private */
      int users = 0, relu_src = 0, src_rc = 0;
      for (int q = 0; q < m->nnodes; q++) users += (m->nodes[q].in == d->in) + (m->nodes[q].in2 == d->in);
      for (int q = 0; q < m->nnodes; q++)
        if (m->nodes[q].out == d->in)
          relu_src = m->nodes[q].relu || m->nodes[q].op == RN_OP_RELU, src_rc = m->nodes[q].rp_at >= 0;
      /* also over a shared one when both are recomputed (the backward has their own buffers) */
      ok &= !on_in2 && (on_in == (users == 1 && !relu_src) || (on_in && src_rc && d->rp_at >= 0));
      continue;
    }
    ok &= on_in != on_in2; /* exactly one */
    int src = on_in ? d->in : d->in2, users = 0;
    for (int q = 0; q < m->nnodes; q++) users += (m->nodes[q].in == src) + (m->nodes[q].in2 == src);
    ok &= users == 1;
    for (int q = 0; q < m->nnodes; q++)
      if (m->nodes[q].out == src) ok &= !m->nodes[q].relu && m->nodes[q].op != RN_OP_RELU;
    over_in2 += on_in2;
  }
  CHECK(ok && nadd == m->nblocks, "%s: residual adds not all in place over a private input (%d adds)", tag, nadd);
  return over_in2;
}

int main(void) {
  rn_err e = {0};
  if (rn_blas_init(NULL, 2, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  rn_model m;

  /* ---- ImageNet: exact torchvision counts ---- */
  static const struct { const char *arch; size_t n; } in[] = {
      {"resnet18", 11689512}, {"resnet34", 21797672}, {"resnet50", 25557032},
      {"resnet101", 44549160}, {"resnet152", 60192808}};
  for (int i = 0; i < 5; i++) {
    int hw = i == 0 || i == 2 ? 224 : 64; /* counts do not depend on the input size */
    if (build(&m, in[i].arch, -1, 3, hw, 1000, 1)) {
      CHECK(0, "%s did not build", in[i].arch);
      continue;
    }
    CHECK(rn_model_param_count(&m) == in[i].n, "%s: %zu parameters, torchvision has %zu", in[i].arch,
          rn_model_param_count(&m), in[i].n);
    printf("%-12s %zu parameters (torchvision %zu)\n", in[i].arch, rn_model_param_count(&m), in[i].n);
    check_layout(&m);
    check_dims(&m, "conv1.weight", 4, 64, 3, 7, 7);
    check_dims(&m, "bn1.running_var", 1, 64, 0, 0, 0);
    if (m.cfg.bottleneck) {
      check_dims(&m, "layer1.0.conv1.weight", 4, 64, 64, 1, 1);
      check_dims(&m, "layer1.0.conv3.weight", 4, 256, 64, 1, 1);
      check_dims(&m, "layer1.0.downsample.0.weight", 4, 256, 64, 1, 1);
      check_dims(&m, "layer2.0.conv2.weight", 4, 128, 128, 3, 3);
      check_dims(&m, "layer4.0.downsample.1.bias", 1, 2048, 0, 0, 0);
      check_dims(&m, "fc.weight", 2, 1000, 2048, 0, 0);
      CHECK(count_named(&m, "downsample.0.weight") == 4, "%s: %d projections, want 4", in[i].arch,
            count_named(&m, "downsample.0.weight"));
    } else {
      check_dims(&m, "layer1.0.conv1.weight", 4, 64, 64, 3, 3);
      check_dims(&m, "layer2.0.downsample.0.weight", 4, 128, 64, 1, 1);
      check_dims(&m, "layer4.1.bn2.weight", 1, 512, 0, 0, 0);
      check_dims(&m, "fc.weight", 2, 1000, 512, 0, 0);
      CHECK(rn_model_find_param(&m, "layer1.0.downsample.0.weight") < 0, "%s: layer1 has a projection", in[i].arch);
      CHECK(count_named(&m, "downsample.0.weight") == 3, "%s: %d projections, want 3", in[i].arch,
            count_named(&m, "downsample.0.weight"));
    }
    int q = rn_model_find_param(&m, "layer3.1.bn2.running_mean");
    CHECK(q >= 0 && !m.params[q].trainable && m.params[q].off >= m.ntrain, "running_mean not a buffer");
    q = rn_model_find_param(&m, "layer3.1.conv2.weight");
    CHECK(q >= 0 && m.params[q].trainable && m.params[q].ohwi && !m.params[q].no_decay, "conv weight flags");
    q = rn_model_find_param(&m, "layer3.1.bn2.bias");
    CHECK(q >= 0 && m.params[q].trainable && m.params[q].no_decay && !m.params[q].ohwi, "bn bias flags");
    if (i == 0 || i == 2) {
      /* summary prints the count with separators; the activation arena is planned (in-place ReLU
       * saves memory) and the gradient arena reuses dead buffers */
      char *buf = NULL;
      size_t len = 0;
      FILE *f = open_memstream(&buf, &len);
      rn_model_summary(&m, f);
      fclose(f);
      char want[32];
      snprintf(want, sizeof want, "%zu,%03zu,%03zu", in[i].n / 1000000, in[i].n / 1000 % 1000, in[i].n % 1000);
      CHECK(strstr(buf, want) != NULL, "summary of %s lacks '%s'", in[i].arch, want);
      if (i == 0) fputs(buf, stdout);
      else printf("%s", strstr(buf, "  trainable"));
      free(buf);
      size_t naive = 0;
      for (int t = 0; t < m.ntensors; t++)
        naive += (size_t)m.tensors[t].h * m.tensors[t].w * m.tensors[t].c;
      CHECK(m.act_floats < naive * 8 / 10, "%s: activation arena %zu not below 80%% of naive %zu", in[i].arch,
            m.act_floats, naive);
      CHECK(m.dact_floats < m.act_floats / 2, "%s: gradient arena %zu not below half the activations %zu",
            in[i].arch, m.dact_floats, m.act_floats);
    }
    rn_model_free(&m);
  }

  /* ---- one arena for activations and gradients, and recompute: ResNet-50 at 224 (b32: 2428 MB of
   * activations + 231 MB of gradients in two arenas before; 2453 MB in one; 1612 MB with the
   * elementwise outputs recomputed where that lowers the peak; b4 since item 57, which no longer
   * stores layer3.0.bn1's output with or without recompute: 276.2 -> 195.1 MB, 0.706; 0.70 or less
   * before it) ---- */
  {
    rn_model_config c;
    rn_model_config_default(&c);
    rn_model_config_arch(&c, "resnet50", &e);
    size_t arena[2] = {0, 0};
    int nrep[2] = {0, 0};
    for (int rc = 0; rc < 2; rc++) {
      int prev = rn_model_set_recompute(rc);
      int st = rn_model_build(&m, &c, 4, &e);
      rn_model_set_recompute(prev);
      if (st) {
        CHECK(0, "resnet50 recompute %d: %s", rc, e.msg);
        continue;
      }
      arena[rc] = m.act_touch_floats, nrep[rc] = m.nreplay;
      rn_model_free(&m);
    }
    printf("resnet50 b4 arena: %.1f MB without recompute (gradients in the activations' dead space), %.1f MB with "
           "%d outputs recomputed\n", (double)arena[0] * 4 / 1e6, (double)arena[1] * 4 / 1e6, nrep[1]);
    CHECK(nrep[0] == 0 && nrep[1] >= 16 && arena[1] * 100 <= arena[0] * 72,
          "resnet50: recompute left the arena at %zu of %zu floats (%d replayed nodes)", arena[1], arena[0], nrep[1]);
  }

  /* ---- gradient over its input: a fused BN+add's dx pass writes the branch BN input's gradient over
   * that input (the branch's last convolution output, dead after this node's backward), so that
   * gradient has no buffer of its own (rn_model_set_dx_over_input) ---- */
  {
    static const struct { const char *arch; int batch, hw; } gx[] = {
        {"resnet50", 4, 224}, {"resnet18", 2, 64}, {"cifar-resnet20", 8, 32}};
    for (int i = 0; i < 3; i++) {
      rn_model_config c;
      rn_model_config_default(&c);
      rn_model_config_arch(&c, gx[i].arch, &e);
      c.in_h = c.in_w = gx[i].hw;
      size_t arena[2] = {0, 0};
      int over[2] = {0, 0}, nbn_add[2] = {0, 0}, nblocks = -1;
      for (int on = 0; on < 2; on++) {
        int prev = rn_model_set_dx_over_input(on);
        int st = rn_model_build(&m, &c, gx[i].batch, &e);
        rn_model_set_dx_over_input(prev);
        if (st) {
          CHECK(0, "%s dx over x %d: %s", gx[i].arch, on, e.msg);
          continue;
        }
        for (int k = 0; k < m.nnodes; k++) {
          const rn_node *d = &m.nodes[k];
          if (d->op != RN_OP_ADD || !d->bn_add) continue;
          const rn_tensor *x = &m.tensors[d->in2];
          nbn_add[on]++;
          over[on] += x->off != (size_t)-1 && x->goff == x->off && x->boff == x->off;
        }
        arena[on] = m.act_touch_floats, nblocks = m.nblocks;
        rn_model_free(&m);
      }
      printf("%s b%d: %d of %d fused BN+add gradients over their input, arena %.1f -> %.1f MB\n", gx[i].arch,
             gx[i].batch, over[1], nbn_add[1], (double)arena[0] * 4 / 1e6, (double)arena[1] * 4 / 1e6);
      CHECK(nbn_add[1] == nblocks && nbn_add[0] == nbn_add[1], "%s: %d fused BN+add nodes", gx[i].arch, nbn_add[1]);
      CHECK(over[0] == 0 && over[1] == nbn_add[1], "%s: %d / %d gradients over their input (off / on), want 0 / %d",
            gx[i].arch, over[0], over[1], nbn_add[1]);
      CHECK(arena[1] <= arena[0], "%s: the arena grew with the gradients over their inputs (%zu > %zu floats)",
            gx[i].arch, arena[1], arena[0]);
    }
  }

  /* ---- activation plan: in-place adds (ResNet-50 b32 at 224: 3404.3 MB before adds wrote over
   * their branch input, 2890.5 MB after) ---- */
  {
    static const struct { const char *arch; int preact, shortcut, hw, in2; } ip[] = {
        {"resnet50", 0, -1, 64, 12}, {"resnet50", 1, -1, 64, 12}, {"resnet18", 0, -1, 64, 5},
        {"cifar-resnet20", 0, -1, 32, 7}, {"cifar-resnet20", 1, 1, 32, 7}};
    for (int i = 0; i < 5; i++) {
      rn_model_config c;
      rn_model_config_default(&c);
      rn_model_config_arch(&c, ip[i].arch, &e);
      c.preact = ip[i].preact;
      if (ip[i].shortcut >= 0) c.shortcut = (rn_shortcut)ip[i].shortcut;
      c.in_h = c.in_w = ip[i].hw;
      for (int fuse = 0; fuse < 3; fuse++) {
        int prev = rn_model_set_fusion(fuse);
        int st = rn_model_build(&m, &c, 2, &e);
        rn_model_set_fusion(prev);
        if (st) {
          CHECK(0, "%s: %s", ip[i].arch, e.msg);
          continue;
        }
        char tag[64];
        snprintf(tag, sizeof tag, "%s%s fusion %d", ip[i].arch, ip[i].preact ? " preact" : "", fuse);
        int n2 = check_add_inplace(&m, tag), want2 = fuse == 2 && !ip[i].preact ? 0 : ip[i].in2;
        CHECK(n2 == want2, "%s: %d adds in place over the branch input, want %d", tag, n2, want2);
        CHECK(m.fused == fuse, "%s: fusion level %d", tag, m.fused);
        /* gradient arena with in-place add/BN/ReLU backward: ResNet-50's peak is two of its
         * largest tensors (a stage-1 block's chain buffer and a 256-channel gradient) plus a
         * 64-channel one (b32 at 224: 308.3 MB before, 231.2 MB after) */
        if (!strcmp(ip[i].arch, "resnet50") && !ip[i].preact) {
          size_t big = 0;
          for (int t = 0; t < m.ntensors; t++) {
            size_t z = (size_t)m.batch * m.tensors[t].h * m.tensors[t].w * m.tensors[t].c;
            if (m.tensors[t].off != (size_t)-1 && z > big) big = z;
          }
          CHECK(m.dact_floats * 4 <= big * 9, "%s: gradient arena %zu floats > 2.25 x the largest tensor %zu", tag,
                m.dact_floats, big);
        }
        rn_model_free(&m);
      }
    }
  }

  /* ---- CIFAR (option A): 20 -> 269,722 (paper 0.27M), 56 -> 0.85M, 110 -> 1.7M, 1202 -> 19.4M ---- */
  static const struct { int d; size_t n; double paper_m; double round; } cf[] = {
      {20, 269722, 0.27, 0.01}, {32, 464154, 0.46, 0.01}, {44, 658586, 0.66, 0.01},
      {56, 853018, 0.85, 0.01}, {110, 1727962, 1.7, 0.1}, {1202, 19421274, 19.4, 0.1}};
  for (int i = 0; i < 6; i++) {
    char arch[32];
    snprintf(arch, sizeof arch, "cifar-resnet%d", cf[i].d);
    if (build(&m, arch, -1, 3, 32, 10, 2)) {
      CHECK(0, "%s did not build", arch);
      continue;
    }
    size_t n = rn_model_param_count(&m);
    CHECK(n == cf[i].n, "%s: %zu parameters, want %zu", arch, n, cf[i].n);
    CHECK(fabs(n / 1e6 - cf[i].paper_m) <= cf[i].round / 2 + 1e-9, "%s: %.3fM does not round to the paper's %.2fM",
          arch, n / 1e6, cf[i].paper_m);
    printf("%-18s %zu parameters (%.2fM; paper %.2fM)\n", arch, n, n / 1e6, cf[i].paper_m);
    CHECK(m.cfg.shortcut == RN_SHORTCUT_A && count_named(&m, "downsample") == 0 &&
              count_op(&m, RN_OP_SHORTCUT_A) == 2 && m.nblocks == 3 * (cf[i].d - 2) / 6,
          "%s: option A structure", arch);
    if (i == 0) {
      check_layout(&m);
      check_dims(&m, "conv1.weight", 4, 16, 3, 3, 3);
      check_dims(&m, "layer1.0.conv1.weight", 4, 16, 16, 3, 3);
      check_dims(&m, "layer2.0.conv1.weight", 4, 32, 16, 3, 3);
      check_dims(&m, "layer3.2.bn2.running_mean", 1, 64, 0, 0, 0);
      check_dims(&m, "fc.weight", 2, 10, 64, 0, 0);
      CHECK(rn_model_find_param(&m, "layer4.0.conv1.weight") < 0, "cifar has a layer4");
      CHECK(count_op(&m, RN_OP_MAXPOOL) == 0, "cifar has a maxpool");
    }
    rn_model_free(&m);
  }
  /* option B: projections only where shapes change; C: on every block */
  if (!build(&m, "cifar-resnet20", RN_SHORTCUT_B, 3, 32, 10, 2)) {
    check_dims(&m, "layer2.0.downsample.0.weight", 4, 32, 16, 1, 1);
    check_dims(&m, "layer3.0.downsample.1.weight", 1, 64, 0, 0, 0);
    CHECK(count_named(&m, "downsample.0.weight") == 2 && count_op(&m, RN_OP_SHORTCUT_A) == 0, "cifar B structure");
    CHECK(rn_model_param_count(&m) == 269722 + 16 * 32 + 64 + 32 * 64 + 128, "cifar-resnet20 B: %zu",
          rn_model_param_count(&m));
    rn_model_free(&m);
  } else CHECK(0, "cifar B did not build");
  if (!build(&m, "cifar-resnet20", RN_SHORTCUT_C, 3, 32, 10, 2)) {
    CHECK(count_named(&m, "downsample.0.weight") == 9, "cifar C: %d projections", count_named(&m, "downsample.0.weight"));
    check_dims(&m, "layer1.0.downsample.0.weight", 4, 16, 16, 1, 1);
    rn_model_free(&m);
  } else CHECK(0, "cifar C did not build");
  if (!build(&m, "resnet50", RN_SHORTCUT_A, 3, 64, 1000, 1)) {
    CHECK(count_named(&m, "downsample") == 0 && count_op(&m, RN_OP_SHORTCUT_A) == 4, "resnet50 A structure");
    rn_model_free(&m);
  } else CHECK(0, "resnet50 A did not build");

  /* ---- plain twins ---- */
  size_t r18, r50ds, r50;
  build(&m, "resnet18", -1, 3, 64, 1000, 1);
  r18 = rn_model_param_count(&m);
  size_t r18ds = sum_named(&m, "downsample");
  rn_model_free(&m);
  build(&m, "resnet50", -1, 3, 64, 1000, 1);
  r50 = rn_model_param_count(&m);
  r50ds = sum_named(&m, "downsample");
  rn_model_free(&m);
  static const char *plains[] = {"plain18", "plain34", "plain50", "plain101", "plain152", "cifar-plain20", "cifar-plain56"};
  for (int i = 0; i < 7; i++) {
    if (build(&m, plains[i], -1, 3, i < 5 ? 64 : 32, i < 5 ? 1000 : 10, 1)) {
      CHECK(0, "%s did not build", plains[i]);
      continue;
    }
    CHECK(m.cfg.plain && count_named(&m, "downsample") == 0 && count_op(&m, RN_OP_ADD) == 0 &&
              count_op(&m, RN_OP_SHORTCUT_A) == 0, "%s has shortcuts", plains[i]);
    size_t n = rn_model_param_count(&m);
    if (i == 0) CHECK(n == r18 - r18ds && n == 11515688, "plain18: %zu", n);
    if (i == 2) CHECK(n == r50 - r50ds, "plain50: %zu vs %zu", n, r50 - r50ds);
    if (i == 5) CHECK(n == 269722, "cifar-plain20: %zu", n);
    printf("%-18s %zu parameters\n", plains[i], n);
    rn_model_free(&m);
  }

  /* ---- 1-channel 28x28 (Fashion-MNIST) for both families ---- */
  if (!build(&m, "resnet18", -1, 1, 28, 10, 4)) {
    check_dims(&m, "conv1.weight", 4, 64, 1, 7, 7);
    check_dims(&m, "fc.weight", 2, 10, 512, 0, 0);
    int last_conv = -1;
    for (int k = 0; k < m.nnodes; k++) if (m.nodes[k].op == RN_OP_CONV) last_conv = k;
    CHECK(m.tensors[m.nodes[last_conv].out].h == 1, "resnet18 28x28: layer4 is %dx%d",
          m.tensors[m.nodes[last_conv].out].h, m.tensors[m.nodes[last_conv].out].w);
    rn_model_free(&m);
  } else CHECK(0, "resnet18 1x28x28 did not build");
  if (!build(&m, "cifar-resnet20", -1, 1, 28, 10, 4)) {
    check_dims(&m, "conv1.weight", 4, 16, 1, 3, 3);
    CHECK(m.tensors[m.nodes[m.nnodes - 3].out].h == 7, "cifar 28x28: last stage %d", m.tensors[m.nodes[m.nnodes - 3].out].h);
    rn_model_free(&m);
  } else CHECK(0, "cifar-resnet20 1x28x28 did not build");

  /* ---- pre-activation names, stride placement, stochastic depth survival ---- */
  {
    rn_model_config c;
    rn_model_config_default(&c);
    rn_model_config_arch(&c, "cifar-resnet110", &e);
    c.preact = 1;
    c.sd_pl = 0.5f;
    CHECK(rn_model_build(&m, &c, 2, &e) == RN_OK, "preact build: %s", e.msg);
    check_dims(&m, "final_bn.weight", 1, 64, 0, 0, 0);
    check_dims(&m, "layer2.0.bn1.weight", 1, 16, 0, 0, 0); /* BN on the block input */
    CHECK(rn_model_find_param(&m, "bn1.weight") < 0, "preact CIFAR stem has a BN");
    /* no stem BN (-32), a final BN (+128), and the first BN of layer2.0/layer3.0 is on the narrower
     * block input (-32, -64) */
    CHECK(rn_model_param_count(&m) == 1727962 - 32 + 128 - 32 - 64, "preact-110 count %zu", rn_model_param_count(&m));
    int nadd = 0, ok = 1;
    for (int k = 0; k < m.nnodes; k++) {
      const rn_node *d = &m.nodes[k];
      if (d->op != RN_OP_ADD) continue;
      double want = 1.0 - (double)(d->block + 1) / m.nblocks * 0.5;
      ok &= d->block == nadd && fabs(d->survival - want) < 1e-6;
      nadd++;
    }
    CHECK(ok && nadd == 54 && m.nblocks == 54, "survival probabilities wrong (%d adds)", nadd);
    rn_model_free(&m);
    rn_model_config_default(&c);
    rn_model_config_arch(&c, "resnet50", &e);
    c.stride_in_1x1 = 1;
    c.in_h = c.in_w = 64;
    CHECK(rn_model_build(&m, &c, 1, &e) == RN_OK, "stride_in_1x1 build: %s", e.msg);
    int k1 = -1, k2 = -1;
    for (int k = 0; k < m.nnodes; k++) {
      if (!strcmp(m.nodes[k].name, "layer2.0.conv1")) k1 = k;
      if (!strcmp(m.nodes[k].name, "layer2.0.conv2")) k2 = k;
    }
    CHECK(k1 >= 0 && k2 >= 0 && m.nodes[k1].u.conv.stride == 2 && m.nodes[k2].u.conv.stride == 1, "stride_in_1x1");
    CHECK(rn_model_param_count(&m) == 25557032, "stride_in_1x1 count");
    rn_model_free(&m);
    c.stride_in_1x1 = 0;
    CHECK(rn_model_build(&m, &c, 1, &e) == RN_OK, "build: %s", e.msg);
    for (int k = 0; k < m.nnodes; k++) {
      if (!strcmp(m.nodes[k].name, "layer2.0.conv1")) k1 = k;
      if (!strcmp(m.nodes[k].name, "layer2.0.conv2")) k2 = k;
    }
    CHECK(m.nodes[k1].u.conv.stride == 1 && m.nodes[k2].u.conv.stride == 2, "torchvision stride placement");
    rn_model_free(&m);
  }

  /* ---- init: deterministic, He fan_out std, BN 1/0, fc bound, zero_init_residual ---- */
  {
    rn_model m2;
    rn_model_config c;
    rn_model_config_default(&c);
    rn_model_config_arch(&c, "resnet50", &e);
    c.in_h = c.in_w = 64;
    rn_model_build(&m, &c, 1, &e);
    rn_model_build(&m2, &c, 1, &e);
    rn_model_init(&m, 42);
    rn_model_init(&m2, 42);
    CHECK(!memcmp(m.param, m2.param, m.ntotal * sizeof(float)), "init not deterministic");
    rn_model_init(&m2, 43);
    CHECK(memcmp(m.param, m2.param, m.ntrain * sizeof(float)), "seed ignored");
    int p = rn_model_find_param(&m, "layer3.0.conv2.weight");
    double s = 0, s2 = 0;
    const float *v = m.param + m.params[p].off;
    for (size_t j = 0; j < m.params[p].count; j++) s += v[j], s2 += (double)v[j] * v[j];
    double n = (double)m.params[p].count, sd = sqrt(s2 / n - (s / n) * (s / n)), want = sqrt(2.0 / (256 * 9));
    CHECK(fabs(sd / want - 1) < 0.02 && fabs(s / n) < 0.05 * want, "He std %g want %g (mean %g)", sd, want, s / n);
    p = rn_model_find_param(&m, "fc.weight");
    v = m.param + m.params[p].off;
    double mx = 0;
    for (size_t j = 0; j < m.params[p].count; j++) mx = fmax(mx, fabs(v[j]));
    CHECK(mx <= 1 / sqrt(2048.0) && mx > 0.99 / sqrt(2048.0), "fc bound %g", mx);
    p = rn_model_find_param(&m, "fc.bias");
    v = m.param + m.params[p].off;
    mx = 0;
    for (size_t j = 0; j < m.params[p].count; j++) mx = fmax(mx, fabs(v[j]));
    CHECK(mx <= 1 / sqrt(2048.0) && mx > 0.9 / sqrt(2048.0), "fc bias bound %g", mx);
    int ok = 1;
    for (int i = 0; i < m.nparams; i++) {
      const rn_param *q = &m.params[i];
      const char *leaf = strrchr(q->name, '.') + 1;
      int bnp = !q->ohwi && strncmp(q->name, "fc.", 3);
      if (!bnp) continue;
      float want1 = (!strcmp(leaf, "weight") || !strcmp(leaf, "running_var")) ? 1.0f : 0.0f;
      for (size_t j = 0; j < q->count; j++) ok &= m.param[q->off + j] == want1;
    }
    CHECK(ok, "BN init not gamma 1 beta 0 mean 0 var 1");
    rn_model_free(&m2);
    c.zero_init_residual = 1;
    rn_model_build(&m2, &c, 1, &e);
    rn_model_init(&m2, 42);
    int zeros = 0, ones = 0;
    for (int i = 0; i < m2.nparams; i++) {
      const rn_param *q = &m2.params[i];
      if (!strstr(q->name, ".weight") || q->ohwi || !strncmp(q->name, "fc", 2)) continue;
      float v0 = m2.param[q->off];
      if (strstr(q->name, "bn3.weight")) zeros += v0 == 0.0f;
      else ones += v0 == 1.0f;
    }
    CHECK(zeros == 16 && ones == 53 - 16, "zero_init_residual: %d zero bn3, %d others one", zeros, ones);
    rn_model_free(&m2);
    rn_model_free(&m);
  }

  /* ---- errors ---- */
  static const char *bad[] = {"resnet19", "cifar-resnet21", "vgg16", "", "resnet", "cifar-resnet2", "resnet18x"};
  for (int i = 0; i < 7; i++) {
    rn_model_config c;
    rn_model_config_default(&c);
    rn_err e2 = {0};
    rn_status st = rn_model_config_arch(&c, bad[i], &e2);
    CHECK(st == RN_EINVAL && strstr(e2.msg, bad[i]) && strstr(e2.msg, "resnet50") && strstr(e2.msg, "cifar-resnet"),
          "arch '%s': status %d msg '%s'", bad[i], st, e2.msg);
    if (i == 0) printf("error example: %s\n", e2.msg);
    snprintf(c.arch, sizeof c.arch, "%s", bad[i]);
    CHECK(rn_model_build(&m, &c, 1, &e2) == RN_EINVAL, "build accepted arch '%s'", bad[i]);
  }
  {
    rn_model_config c;
    rn_model_config_default(&c);
    rn_model_config_arch(&c, "resnet18", &e);
    c.in_channels = -1;
    rn_err e2 = {0};
    CHECK(rn_model_build(&m, &c, 1, &e2) == RN_EINVAL && strstr(e2.msg, "-1 channels"), "bad input: '%s'", e2.msg);
    c.in_channels = 3;
    CHECK(rn_model_build(&m, &c, 0, &e2) == RN_EINVAL && strstr(e2.msg, "batch"), "batch 0: '%s'", e2.msg);
    printf("error example: %s\n", e2.msg);
    c.in_h = c.in_w = 32;
    c.sd_pl = 0.0f;
    CHECK(rn_model_build(&m, &c, 1, &e2) == RN_EINVAL && strstr(e2.msg, "survival"), "sd_pl 0: '%s'", e2.msg);
  }
  return tu_done("test_model_params");
}
