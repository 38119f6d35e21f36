/* model: the graph driver (forward, loss, backward). No allocation here. BN and add nodes with
 * relu set (build-time fusion) apply the ReLU themselves; their backward reads their output as the
 * mask. Add nodes with bn_add apply the branch BN to in2 first (rn_bn_add_*). Lazy BN nodes
 * (rn_node.lazy) only compute coefficients; the convolution, max pool or add that reads them
 * applies them. */
#include <string.h>

#include "rn/model.h"

float *rn_model_input(rn_model *m) { return m->act + m->tensors[m->input].off; }
const float *rn_model_logits(const rn_model *m) { return m->act + m->tensors[m->logits].off; }
const float *rn_model_input_grad(const rn_model *m) { return m->dact + m->tensors[m->input].goff; }

void rn_model_set_step(rn_model *m, uint64_t seed, int64_t step) {
  m->sd_seed = seed;
  m->sd_step = step;
  m->sd_key = rn_key(seed, (uint64_t)step, 0, 0);
}

static float sd_scale(const rn_model *m, const rn_node *n, int train) {
  if (!train || n->survival >= 1.0f) return 1.0f;
  rn_rng r = rn_rng_make(rn_key(m->sd_seed, (uint64_t)m->sd_step, (uint64_t)n->block, 0));
  return rn_rng_uniform(&r) < n->survival ? 1.0f / n->survival : 0.0f;
}

static inline float *A(rn_model *m, int t) { return m->act + m->tensors[t].off; }
/* In the backward: a recomputed tensor lives in its replay's buffer (rn_tensor.boff). */
static inline float *AB(rn_model *m, int t) { return m->act + m->tensors[t].boff; }
static inline float *P(rn_model *m, int p) { return m->param + m->params[p].off; }
static inline float *G(rn_model *m, int p) { return m->grad + m->params[p].off; }
static inline int64_t numel(const rn_model *m, int t, int n) {
  const rn_tensor *x = &m->tensors[t];
  return (int64_t)n * x->h * x->w * x->c;
}

void rn_model_forward(rn_model *m, int n, int train) {
  RN_ASSERT(n >= 1 && n <= m->batch);
  m->last_train = train;
  int bn_train = train && !m->bn_eval_in_train;
  m->stats_tensor = -1, m->stats_tensor2 = -1;
  for (int k = 0; k < m->nnodes; k++) {
    rn_node *d = &m->nodes[k];
    const rn_tensor *ti = &m->tensors[d->in];
    float *x = A(m, d->in), *y = A(m, d->out);
    double t0 = m->prof_fwd ? rn_now() : 0;
    switch (d->op) {
      case RN_OP_CONV: {
        /* BN statistics in the convolution's epilogue when a training BN reads only this output
         * (stats_next 1: m->stats, 2: m->stats2). */
        const int slot = d->stats_next == 2;
        double *st = bn_train && d->stats_next && m->bn_epilogue && m->stats ? (slot ? m->stats2 : m->stats) : NULL;
        int *st_t = slot ? &m->stats_tensor2 : &m->stats_tensor, got;
        if (d->pre_bn >= 0 && (bn_train || !train)) { /* the input is a lazy BN's output: apply it from its input */
          rn_conv_pre pre;
          const rn_node *b = &m->nodes[d->pre_bn];
          pre.sc = m->pre_coef + b->pre_off, pre.sh = pre.sc + b->u.bn.c, pre.relu = b->relu;
          got = rn_conv_forward_pre(&d->u.conv, n, A(m, b->in), P(m, d->param[0]), y, m->ws, st, &pre);
        } else if (st) {
          got = rn_conv_forward_stats(&d->u.conv, n, x, P(m, d->param[0]), y, m->ws, st);
        } else {
          rn_conv_forward(&d->u.conv, n, x, P(m, d->param[0]), y, m->ws);
          got = 0;
        }
        *st_t = got ? d->out : -1;
        break;
      }
      case RN_OP_BN:
        if (!train && d->lazy) /* eval: the reading convolution applies the eval affine (pre_bn) */
          rn_bn_eval_coef(&d->u.bn, P(m, d->param[0]), P(m, d->param[1]), P(m, d->param[2]), P(m, d->param[3]),
                          m->pre_coef + d->pre_off, m->pre_coef + d->pre_off + d->u.bn.c);
        else if (bn_train && d->lazy) /* the output is applied by the reading convolution (pre_bn) */
          rn_bn_forward_train_coef(&d->u.bn, (int64_t)n * ti->h * ti->w, x, P(m, d->param[0]), P(m, d->param[1]),
                                   P(m, d->param[2]), P(m, d->param[3]), m->save + d->save_off, n,
                                   m->stats_tensor == d->in ? m->stats : NULL, m->pre_coef + d->pre_off,
                                   m->pre_coef + d->pre_off + d->u.bn.c);
        else if (bn_train && d->rp_at >= 0) { /* recomputed in the backward: keep the coefficients */
          float *sc = m->rc_coef + d->rc_off, *sh = sc + d->u.bn.c;
          rn_bn_forward_train_coef(&d->u.bn, (int64_t)n * ti->h * ti->w, x, P(m, d->param[0]), P(m, d->param[1]),
                                   P(m, d->param[2]), P(m, d->param[3]), m->save + d->save_off, n,
                                   m->stats_tensor == d->in ? m->stats : NULL, sc, sh);
          rn_bn_apply(&d->u.bn, (int64_t)n * ti->h * ti->w, x, sc, sh, y);
        } else if (bn_train && m->stats_tensor == d->in)
          rn_bn_forward_train_stats(&d->u.bn, (int64_t)n * ti->h * ti->w, x, P(m, d->param[0]),
                                    P(m, d->param[1]), P(m, d->param[2]), P(m, d->param[3]),
                                    m->save + d->save_off, y, n, m->stats);
        else if (bn_train)
          rn_bn_forward_train(&d->u.bn, (int64_t)n * ti->h * ti->w, x, P(m, d->param[0]), P(m, d->param[1]),
                              P(m, d->param[2]), P(m, d->param[3]), m->save + d->save_off, y);
        else
          rn_bn_forward_eval(&d->u.bn, (int64_t)n * ti->h * ti->w, x, P(m, d->param[0]), P(m, d->param[1]),
                             P(m, d->param[2]), P(m, d->param[3]), y);
        break;
      case RN_OP_RELU:
        rn_relu_forward(numel(m, d->in, n), x, y);
        break;
      case RN_OP_MAXPOOL:
        if (d->pre_bn >= 0 && (bn_train || !train)) { /* over a lazy BN+ReLU's output, from its input */
          rn_conv_pre pre;
          const rn_node *b = &m->nodes[d->pre_bn];
          pre.sc = m->pre_coef + b->pre_off, pre.sh = pre.sc + b->u.bn.c, pre.relu = b->relu;
          rn_maxpool_forward_pre(&d->u.pool, n, A(m, b->in), y, (int32_t *)(m->save + d->save_off), &pre);
        } else {
          rn_maxpool_forward(&d->u.pool, n, x, y, (int32_t *)(m->save + d->save_off));
        }
        break;
      case RN_OP_AVGPOOL:
        rn_avgpool_forward(n, ti->h * ti->w, ti->c, x, y);
        break;
      case RN_OP_LINEAR:
        rn_linear_forward(n, d->u.lin.in, d->u.lin.out, x, P(m, d->param[0]), P(m, d->param[1]), y);
        break;
      case RN_OP_ADD:
        d->scale = sd_scale(m, d, train);
        if (!d->bn_add) {
          rn_add_forward(numel(m, d->out, n), x, A(m, d->in2), d->scale, d->relu, y);
        } else {
          const rn_tensor *t2 = &m->tensors[d->in2];
          int64_t rows = (int64_t)n * t2->h * t2->w;
          float *x2 = A(m, d->in2);
          const double *st = m->stats_tensor == d->in2    ? m->stats
                             : m->stats_tensor2 == d->in2 ? m->stats2
                                                          : NULL;
          /* the shortcut is a lazy BN's output (lazy = 3): apply it from its input */
          rn_conv_pre spb, *sp = NULL;
          if (d->pre_bn >= 0 && (bn_train || !train)) {
            const rn_node *b = &m->nodes[d->pre_bn];
            spb.sc = m->pre_coef + b->pre_off, spb.sh = spb.sc + b->u.bn.c, spb.relu = 0;
            sp = &spb, x = A(m, b->in);
          }
          if (bn_train && d->rp_at >= 0) { /* recomputed in the backward: keep the coefficients */
            float *sc = m->rc_coef + d->rc_off, *sh = sc + d->u.bn.c;
            rn_bn_forward_train_coef(&d->u.bn, rows, x2, P(m, d->param[0]), P(m, d->param[1]), P(m, d->param[2]),
                                     P(m, d->param[3]), m->save + d->save_off, n, st, sc, sh);
            rn_bn_add_apply(&d->u.bn, rows, x2, sc, sh, x, d->scale, y, sp);
          } else if (bn_train)
            rn_bn_add_forward_train(&d->u.bn, rows, x2, P(m, d->param[0]), P(m, d->param[1]), P(m, d->param[2]),
                                    P(m, d->param[3]), m->save + d->save_off, n, st, x, d->scale, y, sp);
          else
            rn_bn_add_forward_eval(&d->u.bn, rows, x2, P(m, d->param[0]), P(m, d->param[1]), P(m, d->param[2]),
                                   P(m, d->param[3]), x, d->scale, y, sp);
        }
        break;
      case RN_OP_SHORTCUT_A:
        rn_shortcut_a_forward(&d->u.sa, n, x, y);
        break;
    }
    if (m->prof_fwd) m->prof_fwd[k] += rn_now() - t0;
  }
}

double rn_model_loss(rn_model *m, int n, const int32_t *labels, float smoothing, int *top1, int *top5) {
  RN_ASSERT(n >= 1 && n <= m->batch);
  return rn_softmax_xent(n, m->cfg.num_classes, rn_model_logits(m), labels, smoothing, m->dlogits, top1, top5);
}

/* In parallel: one thread's memset leaves the others idle for ~1% of a ResNet-50 step (100 MB). */
void rn_model_zero_grad(rn_model *m) {
  const size_t n = m->ntrain, chunk = (size_t)1 << 16;
  const long nc = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (nc > 4)
  for (long c = 0; c < nc; c++) {
    const size_t a = (size_t)c * chunk, b = a + chunk < n ? a + chunk : n;
    memset(m->grad + a, 0, (b - a) * sizeof(float));
  }
}

/* Marks node d's params final and reports every trainable param range that is now final, from the
 * highest offset down, stopping at the first that is not: the ranges reach cb in strictly
 * descending, contiguous order even when a node finishes params below one still pending (a fused
 * BN+add over a projection shortcut finishes the branch BN before the projection's conv and BN).
 * Each trainable param owns [off, next trainable off), so the ranges tile [0, ntrain) exactly. */
static void report(rn_model *m, const rn_node *d, rn_grad_ready_fn cb, void *ctx) {
  for (int i = 0; i < 4; i++)
    if (d->param[i] >= 0) m->param_done[d->param[i]] = 1;
  size_t end = m->report_end;
  int p = m->report_next;
  for (; p >= 0 && (m->param_done[p] || !m->params[p].trainable); p--) {
    if (!m->params[p].trainable) continue;
    if (cb) cb(ctx, m->params[p].off, end - m->params[p].off);
    end = m->params[p].off;
  }
  m->report_next = p, m->report_end = end;
}

/* Recomputes node d's output in the backward (rn_node.rp_at) from its inputs, all in their backward
 * buffers: the forward's arithmetic on the same values (a training BN with the coefficients its
 * forward kept), so the same bits. */
static void replay(rn_model *m, const rn_node *d, int n, int bn_train) {
  const rn_tensor *ti = &m->tensors[d->in];
  const float *x = AB(m, d->in);
  float *y = AB(m, d->out);
  switch (d->op) {
    case RN_OP_BN: {
      const int64_t rows = (int64_t)n * ti->h * ti->w;
      if (bn_train)
        rn_bn_apply(&d->u.bn, rows, x, m->rc_coef + d->rc_off, m->rc_coef + d->rc_off + d->u.bn.c, y);
      else
        rn_bn_forward_eval(&d->u.bn, rows, x, P(m, d->param[0]), P(m, d->param[1]), P(m, d->param[2]),
                           P(m, d->param[3]), y);
      break;
    }
    case RN_OP_RELU:
      rn_relu_forward(numel(m, d->in, n), x, y);
      break;
    case RN_OP_SHORTCUT_A:
      rn_shortcut_a_forward(&d->u.sa, n, x, y);
      break;
    case RN_OP_ADD:
      if (!d->bn_add) {
        rn_add_forward(numel(m, d->out, n), x, AB(m, d->in2), d->scale, d->relu, y);
      } else {
        const rn_tensor *t2 = &m->tensors[d->in2];
        const int64_t rows = (int64_t)n * t2->h * t2->w;
        rn_conv_pre spb, *sp = NULL;
        if (d->pre_bn >= 0 && (bn_train || !m->last_train)) { /* as the forward: from the lazy BN's input */
          const rn_node *b = &m->nodes[d->pre_bn];
          spb.sc = m->pre_coef + b->pre_off, spb.sh = spb.sc + b->u.bn.c, spb.relu = 0;
          sp = &spb, x = AB(m, b->in);
        }
        if (bn_train)
          rn_bn_add_apply(&d->u.bn, rows, AB(m, d->in2), m->rc_coef + d->rc_off, m->rc_coef + d->rc_off + d->u.bn.c,
                          x, d->scale, y, sp);
        else
          rn_bn_add_forward_eval(&d->u.bn, rows, AB(m, d->in2), P(m, d->param[0]), P(m, d->param[1]),
                                 P(m, d->param[2]), P(m, d->param[3]), x, d->scale, y, sp);
      }
      break;
    default:
      RN_ASSERT(!"not replayable");
  }
}

void rn_model_backward(rn_model *m, int n, rn_grad_ready_fn cb, void *ctx) {
  RN_ASSERT(n >= 1 && n <= m->batch);
  int bn_train = m->last_train && !m->bn_eval_in_train;
  m->bsum_tensor = -1;
  memset(m->param_done, 0, (size_t)m->nparams);
  m->report_next = m->nparams - 1, m->report_end = m->ntrain;
  /* After an eval forward the lazy BN outputs were never written (their convolutions applied the
   * eval affine): write them now for the backward of that forward (the same bits). */
  for (int k = 0; !m->last_train && k < m->nnodes; k++) {
    const rn_node *d = &m->nodes[k];
    if (d->op != RN_OP_BN || !d->lazy) continue;
    const rn_tensor *ti = &m->tensors[d->in];
    rn_bn_forward_eval(&d->u.bn, (int64_t)n * ti->h * ti->w, AB(m, d->in), P(m, d->param[0]), P(m, d->param[1]),
                       P(m, d->param[2]), P(m, d->param[3]), AB(m, d->out));
  }
  int ri = 0;
  for (int k = m->nnodes - 1; k >= 0; k--) {
    rn_node *d = &m->nodes[k];
    for (; ri < m->nreplay && m->nodes[m->replay[ri]].rp_at == k; ri++) { /* timed as the replayed node's */
      double t1 = m->prof_bwd ? rn_now() : 0;
      replay(m, &m->nodes[m->replay[ri]], n, bn_train);
      if (m->prof_bwd) {
        const double dt = rn_now() - t1;
        m->prof_bwd[m->replay[ri]] += dt, m->prof_replay += dt;
      }
    }
    double t0 = m->prof_bwd ? rn_now() : 0;
    const rn_tensor *ti = &m->tensors[d->in];
    const float *x = AB(m, d->in), *y = AB(m, d->out);
    const float *dy = d->out == m->logits ? m->dlogits : m->dact + m->tensors[d->out].goff;
    float *dx = (d->in == m->input && !m->input_grad) ? NULL : m->dact + ti->goff;
    switch (d->op) {
      case RN_OP_CONV:
        /* the backward channel sums of the BN before, in the dx epilogue (when dx is direct) */
        m->bsum_tensor = -1;
        if (bn_train && d->pre_bn >= 0) { /* the input was never stored: dW applies the BN to its input */
          const rn_node *b = &m->nodes[d->pre_bn];
          rn_conv_pre pre;
          pre.sc = m->pre_coef + b->pre_off, pre.sh = pre.sc + b->u.bn.c, pre.relu = b->relu;
          rn_bn_sums bs = {NULL, AB(m, b->in), m->bsums, 1.0f, b->relu, &pre};
          const int got = rn_conv_backward_bn(&d->u.conv, n, AB(m, b->in), P(m, d->param[0]), dy, dx, d->acc_in,
                                              G(m, d->param[0]), m->ws, &bs);
          RN_ASSERT(got && dx); /* the BN's backward needs the sums (it has no output to mask with) */
          m->bsum_tensor = d->in, m->bsum_n = n;
        } else if (bn_train && d->bn_prev >= 0 && m->bn_epilogue >= 2 && m->bsums && dx) {
          const rn_node *b = &m->nodes[d->bn_prev];
          const float *mask = b->relu ? x : NULL; /* the BN's output is this conv's input */
          rn_bn_sums bs = {mask, AB(m, b->bn_add ? b->in2 : b->in), m->bsums, b->bn_add ? b->scale : 1.0f, mask != NULL,
                           NULL};
          if (rn_conv_backward_bn(&d->u.conv, n, x, P(m, d->param[0]), dy, dx, d->acc_in, G(m, d->param[0]), m->ws,
                                  &bs))
            m->bsum_tensor = d->in, m->bsum_n = n;
        } else {
          rn_conv_backward(&d->u.conv, n, x, P(m, d->param[0]), dy, dx, d->acc_in, G(m, d->param[0]), m->ws);
        }
        break;
      case RN_OP_BN: {
        int64_t rows = (int64_t)n * ti->h * ti->w;
        if (bn_train && m->bsum_tensor == d->out)
          rn_bn_backward_train_sums(&d->u.bn, rows, x, y, P(m, d->param[0]), m->save + d->save_off, dy, dx,
                                    d->acc_in, G(m, d->param[0]), G(m, d->param[1]), m->bsum_n, m->bsums, d->relu);
        else if (bn_train && d->lazy == 2) { /* read by a max pool, which masked dy already */
          rn_bn_desc plain = d->u.bn;
          plain.relu = 0;
          rn_bn_backward_train(&plain, rows, x, NULL, P(m, d->param[0]), m->save + d->save_off, dy, dx, d->acc_in,
                               G(m, d->param[0]), G(m, d->param[1]));
        } else if (bn_train)
          rn_bn_backward_train(&d->u.bn, rows, x, y, P(m, d->param[0]), m->save + d->save_off, dy, dx, d->acc_in,
                               G(m, d->param[0]), G(m, d->param[1]));
        else
          rn_bn_backward_eval(&d->u.bn, rows, x, y, P(m, d->param[0]), P(m, d->param[2]), P(m, d->param[3]), dy,
                              dx, d->acc_in, G(m, d->param[0]), G(m, d->param[1]));
        break;
      }
      case RN_OP_RELU:
        if (dx) rn_relu_backward(numel(m, d->in, n), y, dy, dx, d->acc_in);
        break;
      case RN_OP_MAXPOOL:
        if (dx && d->pre_bn >= 0) /* the gradient of a lazy BN+ReLU output, masked here (lazy = 2) */
          rn_maxpool_backward_masked(&d->u.pool, n, (const int32_t *)(m->save + d->save_off), dy, y, dx, d->acc_in);
        else if (dx)
          rn_maxpool_backward(&d->u.pool, n, (const int32_t *)(m->save + d->save_off), dy, dx, d->acc_in);
        break;
      case RN_OP_AVGPOOL:
        if (dx) rn_avgpool_backward(n, ti->h * ti->w, ti->c, dy, dx, d->acc_in);
        break;
      case RN_OP_LINEAR:
        rn_linear_backward(n, d->u.lin.in, d->u.lin.out, x, P(m, d->param[0]), dy, dx, d->acc_in,
                           G(m, d->param[0]), G(m, d->param[1]));
        break;
      case RN_OP_ADD:
        if (!d->bn_add) {
          rn_add_backward(numel(m, d->out, n), d->relu ? y : NULL, dy, d->scale, dx, d->acc_in,
                          m->dact + m->tensors[d->in2].goff, d->acc_in2);
        } else {
          const rn_tensor *t2 = &m->tensors[d->in2];
          int64_t rows = (int64_t)n * t2->h * t2->w;
          const float *x2 = AB(m, d->in2);
          float *dx2 = m->dact + t2->goff;
          if (bn_train && m->bsum_tensor == d->out) /* sums from the dx epilogue; dy holds g and is ds */
            rn_bn_add_backward_train_sums(&d->u.bn, rows, x2, P(m, d->param[0]), m->save + d->save_off,
                                          (float *)dy, d->scale, dx2, d->acc_in2, G(m, d->param[0]),
                                          G(m, d->param[1]), m->bsum_n, m->bsums);
          else if (bn_train) {
            /* a lazy shortcut BN (lazy = 3, the next node backward): its channel sums over its input
             * and the gradient written here, in this pass (one image's worth: the whole batch) */
            const int ss = d->pre_bn >= 0 && dx && !d->acc_in;
            rn_bn_add_backward_train(&d->u.bn, rows, x2, y, P(m, d->param[0]), m->save + d->save_off, dy, d->scale,
                                     dx, d->acc_in, dx2, d->acc_in2, G(m, d->param[0]), G(m, d->param[1]),
                                     ss ? AB(m, m->nodes[d->pre_bn].in) : NULL, ss ? m->bsums : NULL);
            if (ss) m->bsum_tensor = d->in, m->bsum_n = 1;
          } else
            rn_bn_add_backward_eval(&d->u.bn, rows, x2, y, P(m, d->param[0]), P(m, d->param[2]), P(m, d->param[3]),
                                    dy, d->scale, dx, d->acc_in, dx2, d->acc_in2, G(m, d->param[0]),
                                    G(m, d->param[1]));
        }
        break;
      case RN_OP_SHORTCUT_A:
        if (dx) rn_shortcut_a_backward(&d->u.sa, n, dy, dx, d->acc_in);
        break;
    }
    if (m->prof_bwd) m->prof_bwd[k] += rn_now() - t0;
    report(m, d, cb, ctx);
  }
  RN_ASSERT(m->report_next < 0); /* every param belongs to a node */
  RN_ASSERT(ri == m->nreplay);
}
