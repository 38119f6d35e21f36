#include "rn/optim.h"

#include <math.h>
#include <string.h>

static void sgd_range(float *restrict p, const float *restrict g, float *restrict buf, size_t n, float lr,
                      float mom, float wd) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; i++) {
    float d = g[i] + wd * p[i];
    float b = mom * buf[i] + d;
    buf[i] = b;
    p[i] -= lr * b;
  }
}

void rn_sgd_step(rn_model *m, float lr, float momentum, float wd, int exempt_no_decay) {
  if (!exempt_no_decay) {
    sgd_range(m->param, m->grad, m->mom, m->ntrain, lr, momentum, wd);
    return;
  }
  /* Group consecutive parameters with the same decay into one flat loop. */
  int i = 0;
  while (i < m->nparams) {
    if (!m->params[i].trainable) { i++; continue; }
    int nd = m->params[i].no_decay;
    size_t off = m->params[i].off, end = off + m->params[i].count;
    int j = i + 1;
    while (j < m->nparams && m->params[j].trainable && m->params[j].no_decay == nd && m->params[j].off == end)
      end += m->params[j++].count;
    sgd_range(m->param + off, m->grad + off, m->mom + off, end - off, lr, momentum, nd ? 0.0f : wd);
    i = j;
  }
}

double rn_sched_peak_lr(const rn_sched *s) {
  return s->ref_batch > 0 ? s->base_lr * (double)s->global_batch / (double)s->ref_batch : s->base_lr;
}

double rn_sched_lr(const rn_sched *s, int64_t step, double epoch, int const_warmup_done) {
  double peak = rn_sched_peak_lr(s);
  if (s->const_warmup_lr > 0 && !const_warmup_done) return s->const_warmup_lr;
  double lr = peak;
  switch (s->kind) {
    case RN_SCHED_STEP_ITER:
      for (int i = 0; i < s->nmilestones; i++)
        if ((double)step >= s->milestones[i]) lr *= s->gamma;
      break;
    case RN_SCHED_STEP_EPOCH:
      for (int i = 0; i < s->nmilestones; i++)
        if (epoch >= s->milestones[i]) lr *= s->gamma;
      break;
    case RN_SCHED_COSINE: {
      double span = s->total_epochs - s->warmup_epochs;
      double t = span > 0 ? (epoch - s->warmup_epochs) / span : 1.0;
      if (t < 0) t = 0;
      if (t > 1) t = 1;
      lr = 0.5 * peak * (1.0 + cos(M_PI * t));
      break;
    }
  }
  if (s->warmup_epochs > 0 && epoch < s->warmup_epochs) {
    double f = s->warmup_from + (1.0 - s->warmup_from) * epoch / s->warmup_epochs;
    lr = peak * f < lr ? peak * f : lr;
  }
  return lr;
}

rn_status rn_sched_parse_kind(const char *name, rn_sched_kind *k, rn_err *e) {
  if (!strcmp(name, "step-iter")) *k = RN_SCHED_STEP_ITER;
  else if (!strcmp(name, "step-epoch")) *k = RN_SCHED_STEP_EPOCH;
  else if (!strcmp(name, "cosine")) *k = RN_SCHED_COSINE;
  else return rn_err_set(e, RN_EINVAL, "schedule: unknown schedule '%s' (valid: step-iter, step-epoch, cosine)", name);
  return RN_OK;
}
