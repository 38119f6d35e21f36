/* optim: SGD with momentum and weight decay (PyTorch's formulation), LR schedules. */
#ifndef RN_OPTIM_H
#define RN_OPTIM_H
#include <stdint.h>
#include "rn/core.h"
#include "rn/model.h"

/* PyTorch SGD (dampening 0, no Nesterov): g = grad + wd * p; buf = momentum * buf + g; p -= lr * buf.
 * When exempt_no_decay, parameters flagged no_decay (BN gamma/beta, biases) get wd = 0. */
void rn_sgd_step(rn_model *m, float lr, float momentum, float wd, int exempt_no_decay);

typedef enum { RN_SCHED_STEP_ITER, RN_SCHED_STEP_EPOCH, RN_SCHED_COSINE } rn_sched_kind;

#define RN_MAX_MILESTONES 8
typedef struct {
  rn_sched_kind kind;
  double base_lr;        /* LR at the reference batch */
  int ref_batch;         /* linear scaling rule: lr = base_lr * global_batch / ref_batch (0 = off) */
  int global_batch;
  double milestones[RN_MAX_MILESTONES]; /* iterations (STEP_ITER) or epochs (STEP_EPOCH) */
  int nmilestones;
  double gamma;          /* factor at each milestone (0.1) */
  double warmup_epochs;  /* linear warm-up from warmup_from*lr to lr over these epochs (Goyal et al.) */
  double warmup_from;    /* fraction of the target LR at step 0 (e.g. 0.1 or 0) */
  double const_warmup_lr;  /* > 0: constant LR until the training error drops below
                              const_warmup_until (He et al. ResNet-110: 0.01 until error < 80%) */
  double const_warmup_until;
  double total_epochs;   /* cosine: length of the schedule */
} rn_sched;

/* LR at a point of training. `epoch` is fractional (steps done / steps per epoch); `step` counts
 * optimiser steps; const_warmup_done says whether the constant warm-up phase has ended. */
double rn_sched_lr(const rn_sched *s, int64_t step, double epoch, int const_warmup_done);
/* The scaled peak LR (after the linear scaling rule). */
double rn_sched_peak_lr(const rn_sched *s);
rn_status rn_sched_parse_kind(const char *name, rn_sched_kind *k, rn_err *e);

#endif
