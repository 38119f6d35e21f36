/* The training driver: configuration, data, model, resume, the step loop with bucketed
 * allreduce, validation, checkpoints, signals, progress and metrics. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rn/ckpt.h"
#include "rn/config.h"
#include "rn/data.h"
#include "rn/dist.h"
#include "rn/kernels.h"
#include "rn/model.h"
#include "rn/optim.h"
#include "rn/train.h"

static volatile sig_atomic_t g_stop_signal;
static void on_signal(int sig) { g_stop_signal = sig; }

static void install_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

static int mkdir_p(const char *path) {
  char tmp[1024];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
      *p = '/';
    }
  if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
  return 0;
}

static int resolve_threads(long want, const rn_dist *d) {
  if (want > 0) return (int)want;
  const char *s = getenv("SLURM_CPUS_PER_TASK");
  if (s && atoi(s) > 0) return atoi(s);
  s = getenv("OMP_NUM_THREADS");
  if (s && atoi(s) > 0) return atoi(s);
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  int t = (int)(ncpu / (d->local_size > 0 ? d->local_size : 1));
  return t > 0 ? t : 1;
}

/* Schedule from the configuration. */
static rn_status make_sched(const rn_config *c, int global_batch, rn_sched *s, rn_err *e) {
  memset(s, 0, sizeof *s);
  rn_status st = rn_sched_parse_kind(c->schedule, &s->kind, e);
  if (st) return st;
  s->base_lr = c->lr;
  s->ref_batch = (int)c->lr_ref_batch;
  s->global_batch = global_batch;
  s->gamma = c->gamma;
  s->warmup_epochs = c->warmup_epochs;
  s->warmup_from = c->warmup_from;
  s->const_warmup_lr = c->const_warmup_lr;
  s->const_warmup_until = c->const_warmup_until;
  s->total_epochs = c->epochs;
  const char *p = c->milestones;
  while (*p) {
    if (s->nmilestones == RN_MAX_MILESTONES)
      return rn_err_set(e, RN_EINVAL, "option milestones: more than %d values in '%s'", RN_MAX_MILESTONES,
                        c->milestones);
    char *end;
    double v = strtod(p, &end);
    if (end == p || (*end && *end != ','))
      return rn_err_set(e, RN_EINVAL, "option milestones: '%s' is not a comma-separated list of numbers",
                        c->milestones);
    s->milestones[s->nmilestones++] = v;
    p = *end ? end + 1 : end;
  }
  if (c->lr <= 0) return rn_err_set(e, RN_EINVAL, "option lr: %g must be positive", c->lr);
  return RN_OK;
}

/* Shared state of one run. */
typedef struct {
  rn_config cfg;
  char *cfg_text;
  rn_dist d;
  int threads, local_batch, global_batch;
  rn_dataset train_ds, val_ds;
  int have_val;
  rn_loader *train_ld, *val_ld;
  rn_model m;
  rn_sched sched;
  rn_allreducer *ar;
  rn_ckpt_state st;
  int64_t steps_per_epoch, total_steps;
  int bar;
  FILE *metrics;
  char metrics_path[1100];
  int32_t *labels;
  float *save_buffers; /* BN running stats of this rank while a checkpoint holds the average */
  float *rank_buffers; /* rank 0: every rank's BN running stats [nranks][nbuf] for checkpoints */
  size_t nbuf;         /* floats of BN running statistics */
} run;

/* ---- evaluation ---- */
typedef struct {
  double n, top1, top5, loss;
} eval_counts;

/* Adds one batch: `per` crops per sample (1 or 10) are averaged in probability space. */
static void eval_batch(const float *logits, int nimg, int per, int classes, const int32_t *labels, eval_counts *c) {
  double prob[4096];
  RN_ASSERT(classes <= 4096);
  for (int s = 0; s < nimg / per; s++) {
    for (int k = 0; k < classes; k++) prob[k] = 0;
    for (int j = 0; j < per; j++) {
      const float *z = logits + (size_t)(s * per + j) * classes;
      double mx = z[0], sum = 0;
      for (int k = 1; k < classes; k++) mx = z[k] > mx ? z[k] : mx;
      for (int k = 0; k < classes; k++) sum += exp(z[k] - mx);
      for (int k = 0; k < classes; k++) prob[k] += exp(z[k] - mx) / sum / per;
    }
    int y = labels[s * per];
    int rank = 0;
    for (int k = 0; k < classes; k++)
      if (prob[k] > prob[y] || (prob[k] == prob[y] && k < y)) rank++;
    c->n += 1;
    c->top1 += rank < 1;
    c->top5 += rank < 5;
    c->loss += -log(prob[y] > 1e-30 ? prob[y] : 1e-30);
  }
}

static rn_status evaluate(run *r, rn_loader *ld, eval_counts *out, rn_err *e) {
  memset(out, 0, sizeof *out);
  rn_aug a;
  if (rn_aug_parse(r->cfg.eval_aug, &a, e)) return e->code;
  int per = rn_aug_outputs(a);
  rn_status st = rn_loader_start_epoch(ld, 0, 0, e);
  int classes = r->m.cfg.num_classes;
  while (st == RN_OK) {
    int n = 0;
    st = rn_loader_next(ld, rn_model_input(&r->m), r->labels, &n, e);
    if (st || n == 0) break;
    rn_model_forward(&r->m, n, 0);
    eval_batch(rn_model_logits(&r->m), n, per, classes, r->labels, out);
  }
  st = rn_dist_agree(&r->d, st, e);
  if (st) return st;
  double v[4] = {out->n, out->top1, out->top5, out->loss};
  rn_dist_sum(&r->d, v, 4);
  out->n = v[0], out->top1 = v[1], out->top5 = v[2], out->loss = v[3];
  return RN_OK;
}

/* ---- output ---- */
static void fmt_time(double s, char *buf, size_t n) {
  if (!(s >= 0) || s > 1e7) {
    snprintf(buf, n, "--");
    return;
  }
  long t = (long)s;
  if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
  else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static void metrics_line(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void metrics_line(run *r, const char *fmt, ...) {
  if (!r->metrics) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(r->metrics, fmt, ap);
  va_end(ap);
  fputc('\n', r->metrics);
  fflush(r->metrics);
}

static char *read_file_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *t = malloc((size_t)(n > 0 ? n : 0) + 1);
  size_t got = n > 0 ? fread(t, 1, (size_t)n, f) : 0;
  t[got] = 0;
  fclose(f);
  return t;
}

/* ---- checkpoints ---- */
/* Writes a checkpoint holding the rank-averaged BN statistics without changing this rank's own
 * running statistics (so a run's numbers do not depend on when checkpoints were taken). */
/* The checkpoint also keeps every rank's own statistics, so that a resume on the same rank count
 * restores them and continues bit for bit. */
static void average_buffers_begin(run *r) {
  if (r->nbuf) memcpy(r->save_buffers, r->m.param + r->m.ntrain, r->nbuf * sizeof(float));
  rn_dist_average_buffers(&r->d, &r->m);
}
static void average_buffers_end(run *r) {
  if (r->nbuf) memcpy(r->m.param + r->m.ntrain, r->save_buffers, r->nbuf * sizeof(float));
}

static rn_status checkpoint(run *r, rn_err *e) {
  if (r->nbuf) rn_dist_gather_floats(&r->d, r->m.param + r->m.ntrain, r->nbuf, r->rank_buffers);
  average_buffers_begin(r);
  rn_status st = RN_OK;
  if (r->d.rank == 0) {
    if (r->metrics) fflush(r->metrics);
    char *mt = read_file_text(r->metrics_path);
    rn_ckpt_set_rank_buffers(r->nbuf ? r->rank_buffers : NULL, r->d.size, r->nbuf);
    st = rn_ckpt_save(r->cfg.out, &r->m, &r->st, r->cfg_text, mt ? mt : "", (int)r->cfg.keep, e);
    rn_ckpt_set_rank_buffers(NULL, 0, 0);
    free(mt);
  }
  average_buffers_end(r);
  return rn_dist_agree(&r->d, st, e);
}

static int finish(run *r, int code) {
  rn_loader_close(r->train_ld);
  rn_loader_close(r->val_ld);
  rn_dataset_close(&r->train_ds);
  if (r->have_val) rn_dataset_close(&r->val_ds);
  rn_ar_free(r->ar);
  rn_bn_set_sync(NULL, NULL);
  rn_model_free(&r->m);
  rn_free(r->labels);
  rn_free(r->save_buffers);
  rn_free(r->rank_buffers);
  free(r->cfg_text);
  if (r->metrics) fclose(r->metrics);
  rn_dist_finalize();
  return code;
}

/* A fatal error on some rank(s), already agreed: rank 0 prints, everyone exits with code. */
static int fail(run *r, rn_err *e, int code) {
  if (r->d.rank == 0) {
    if (r->bar) fputc('\n', stdout);
    fflush(stdout);
    fprintf(stderr, "rn-train: error: %s\n", e->msg);
  }
  return finish(r, code);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: rn-train [--preset NAME] [--config FILE] [--key value ...]\n"
          "Data-parallel ResNet training over MPI (run under mpirun/srun; one process is fine).\n"
          "Exit codes: 0 finished, 1 runtime error, 2 bad options, 75 stopped by SIGUSR1/SIGTERM after\n"
          "writing a checkpoint (requeue and run again with --resume auto to continue exactly).\n\n"
          "Options:\n");
  rn_config_help(f);
  fprintf(f, "\nPresets (--list-presets):\n");
  rn_config_list_presets(f);
}

static rn_status open_data(run *r, rn_err *e) {
  const rn_config *c = &r->cfg;
  rn_status st = rn_dataset_open(&r->train_ds, c->data, c->train_split, e);
  if (st) return st;
  r->have_val = c->val_split[0] != 0;
  if (r->have_val && (st = rn_dataset_open(&r->val_ds, c->data, c->val_split, e))) {
    r->have_val = 0;
    return st;
  }
  rn_aug ta, va;
  if ((st = rn_aug_parse(c->aug, &ta, e))) return rn_err_prefix(e, "option aug");
  if ((st = rn_aug_parse(c->eval_aug, &va, e))) return rn_err_prefix(e, "option eval-aug");
  if (ta == RN_AUG_EVAL_CENTER || ta == RN_AUG_EVAL_10CROP)
    return rn_err_set(e, RN_EINVAL, "option aug: '%s' is an evaluation transform, not a training augmentation", c->aug);
  int oh = (int)c->crop, ow = (int)c->crop;
  if (oh <= 0) {
    oh = r->train_ds.meta.height, ow = r->train_ds.meta.width;
    if (oh <= 0)
      return rn_err_set(e, RN_EINVAL, "option crop: data set %s stores JPEGs of varying size; give --crop (e.g. 224)",
                        c->data);
  }
  rn_loader_config lc = {.local_batch = r->local_batch, .rank = r->d.rank, .nranks = r->d.size,
                         .seed = (uint64_t)c->seed, .aug = ta, .out_h = oh, .out_w = ow, .train = 1,
                         .prefetch_depth = 3, .workers = 1};
  if ((st = rn_loader_open(&r->train_ld, &r->train_ds, &lc, e))) return st;
  if (r->have_val) {
    if (r->val_ds.meta.channels != r->train_ds.meta.channels || r->val_ds.meta.classes != r->train_ds.meta.classes)
      return rn_err_set(e, RN_EFORMAT, "data set %s: split %s has %d channels/%d classes but %s has %d/%d", c->data,
                        c->val_split, r->val_ds.meta.channels, r->val_ds.meta.classes, c->train_split,
                        r->train_ds.meta.channels, r->train_ds.meta.classes);
    rn_loader_config vc = lc;
    vc.train = 0;
    vc.aug = va;
    vc.local_batch = va == RN_AUG_EVAL_10CROP ? (r->local_batch + 9) / 10 : r->local_batch;
    if ((st = rn_loader_open(&r->val_ld, &r->val_ds, &vc, e))) return st;
  }
  return RN_OK;
}

int rn_train_main(int argc, char **argv) {
  run R, *r = &R;
  memset(r, 0, sizeof *r);
  rn_err e = {0};
  if (rn_dist_init(&argc, &argv, &r->d, &e)) {
    fprintf(stderr, "rn-train: %s\n", e.msg);
    return RN_EXIT_ERROR;
  }
  int rank0 = r->d.rank == 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      if (rank0) usage(stdout);
      return finish(r, 0);
    }
    if (!strcmp(argv[i], "--list-presets")) {
      if (rank0) rn_config_list_presets(stdout);
      return finish(r, 0);
    }
  }
  rn_status st = rn_config_from_args(&r->cfg, argc, argv, &e);
  rn_config *c = &r->cfg;
  if (!st && c->batch <= 0) st = rn_err_set(&e, RN_EINVAL, "option batch: %ld must be positive", c->batch);
  if (!st && c->batch % r->d.size)
    st = rn_err_set(&e, RN_EINVAL, "option batch: global batch %ld cannot be split evenly over %d ranks", c->batch,
                    r->d.size);
  if (!st && c->keep < 1) st = rn_err_set(&e, RN_EINVAL, "option keep: %ld must be at least 1", c->keep);
  if (st) return fail(r, &e, RN_EXIT_USAGE); /* every rank parsed the same arguments */
  r->global_batch = (int)c->batch;
  r->local_batch = (int)(c->batch / r->d.size);
  r->threads = resolve_threads(c->threads, &r->d);
  c->threads = r->threads;
  st = rn_blas_init(c->blis_arch, r->threads, rank0 ? stdout : NULL, &e);
  if (st) return fail(r, &e, RN_EXIT_USAGE);
  st = make_sched(c, r->global_batch, &r->sched, &e);
  if (st) return fail(r, &e, RN_EXIT_USAGE);

  /* Data (every rank opens the shards; errors agreed so that all ranks stop together). */
  st = rn_dist_agree(&r->d, open_data(r, &e), &e);
  if (st) return fail(r, &e, st == RN_EINVAL ? RN_EXIT_USAGE : RN_EXIT_ERROR);

  /* Model. */
  rn_model_config mc;
  rn_model_config_default(&mc);
  st = rn_model_config_arch(&mc, c->model, &e);
  if (!st && strcmp(c->shortcut, "auto")) {
    if (!strcmp(c->shortcut, "A")) mc.shortcut = RN_SHORTCUT_A;
    else if (!strcmp(c->shortcut, "B")) mc.shortcut = RN_SHORTCUT_B;
    else if (!strcmp(c->shortcut, "C")) mc.shortcut = RN_SHORTCUT_C;
    else st = rn_err_set(&e, RN_EINVAL, "option shortcut: '%s' is not A, B, C or auto", c->shortcut);
  }
  if (st) return fail(r, &e, RN_EXIT_USAGE);
  if (c->sd_pl <= 0 || c->sd_pl > 1)
    return fail(r, (rn_err_set(&e, RN_EINVAL, "option sd-pl: %g is not in (0, 1]", c->sd_pl), &e), RN_EXIT_USAGE);
  mc.preact = c->preact;
  mc.stride_in_1x1 = c->stride_in_1x1;
  mc.sd_pl = (float)c->sd_pl;
  mc.zero_init_residual = c->zero_init_residual;
  if (c->width < 0) return fail(r, (rn_err_set(&e, RN_EINVAL, "option width: %ld is negative", c->width), &e), RN_EXIT_USAGE);
  mc.width = (int)c->width;
  int oh, ow, oc;
  rn_loader_out_shape(r->train_ld, &oh, &ow, &oc);
  mc.in_channels = oc, mc.in_h = oh, mc.in_w = ow;
  mc.num_classes = r->train_ds.meta.classes;
  int plan_batch = r->local_batch;
  if (r->val_ld && rn_loader_batch_capacity(r->val_ld) > plan_batch) plan_batch = rn_loader_batch_capacity(r->val_ld);
  if (!(c->recompute_mb >= 0 && c->recompute_mb <= 1e9))
    return fail(r, (rn_err_set(&e, RN_EINVAL, "option recompute-mb: %g is not a size in MB (0 to 1e9)", c->recompute_mb), &e),
                RN_EXIT_USAGE);
  int prev_rc = rn_model_set_recompute((int)c->recompute);
  double prev_rmb = rn_model_set_recompute_mb(c->recompute_mb);
  st = rn_model_build(&r->m, &mc, plan_batch, &e);
  rn_model_set_recompute(prev_rc);
  rn_model_set_recompute_mb(prev_rmb);
  if (st) return fail(r, &e, RN_EXIT_USAGE);
  rn_model_init(&r->m, (uint64_t)c->seed);
  r->m.bn_eval_in_train = c->bn_eval;
  if (c->sync_bn) rn_bn_set_sync(rn_dist_bn_sum, &r->d);
  r->labels = rn_alloc(sizeof(int32_t) * (size_t)plan_batch);
  r->nbuf = r->m.ntotal - r->m.ntrain;
  r->save_buffers = rn_alloc(sizeof(float) * (r->nbuf + 1));
  if (rank0) r->rank_buffers = rn_alloc(sizeof(float) * (r->nbuf * (size_t)r->d.size + 1));

  r->cfg_text = rn_config_text(c);
  r->steps_per_epoch = rn_loader_steps_per_epoch(r->train_ld);
  r->total_steps = c->steps > 0 ? c->steps : (int64_t)ceil(c->epochs * (double)r->steps_per_epoch);
  if (rank0) {
    /* the recompute budget in use, and the one that keeps every output (memory for time) */
    char rmb[128] = "";
    int q = 0;
    if (c->recompute && c->recompute_mb > 0)
      q = snprintf(rmb, sizeof rmb, "; --recompute-mb %g: %s", c->recompute_mb, r->m.nreplay ? "the rest kept" : "all kept");
    if (r->m.nreplay && r->m.recompute_all_floats)
      snprintf(rmb + q, sizeof rmb - (size_t)q, "; --recompute-mb %.1f keeps them all", rn_model_recompute_all_mb(&r->m));
    printf("resnet-mpi: %d rank%s x %d thread%s; global batch %d (%d per rank)\n", r->d.size, r->d.size > 1 ? "s" : "",
           r->threads, r->threads > 1 ? "s" : "", r->global_batch, r->local_batch);
    printf("model %s: %zu parameters; data %s: %lld train / %lld val images %dx%dx%d, %d classes\n", c->model,
           rn_model_param_count(&r->m), c->data, (long long)r->train_ds.n, (long long)(r->have_val ? r->val_ds.n : 0),
           oh, ow, oc, mc.num_classes);
    printf("memory per rank: parameters %.1f MB (+gradients, momentum), activations and their gradients %.1f MB "
           "(%d outputs recomputed in the backward%s%s)\n", (double)r->m.ntotal * 4 / 1e6,
           (double)r->m.act_touch_floats * 4 / 1e6, r->m.nreplay, c->recompute ? "" : ": --recompute 0",
           rmb);
    printf("schedule: %lld steps (%lld per epoch), peak lr %g\nconfiguration:\n%s", (long long)r->total_steps,
           (long long)r->steps_per_epoch, rn_sched_peak_lr(&r->sched), r->cfg_text);
    fflush(stdout);
  }

  /* Output directory and resume. */
  if (rank0 && mkdir_p(c->out)) st = rn_err_set(&e, RN_EIO, "option out: cannot create directory %s: %s", c->out,
                                                strerror(errno));
  st = rn_dist_agree(&r->d, st, &e);
  if (st) return fail(r, &e, RN_EXIT_ERROR);
  snprintf(r->metrics_path, sizeof r->metrics_path, "%s/metrics.jsonl", c->out);
  r->st.seed = (uint64_t)c->seed;
  r->st.best_val_err = -1;
  r->st.val_err = -1;
  char resume_path[1100] = "";
  if (!strcmp(c->resume, "auto")) {
    int found = 0;
    if (rank0) st = rn_ckpt_find_resume(c->out, resume_path, sizeof resume_path, &found, stderr, &e);
    st = rn_dist_agree(&r->d, st, &e);
    if (st) return fail(r, &e, RN_EXIT_ERROR);
    rn_dist_bcast_bytes(&r->d, resume_path, sizeof resume_path, 0);
    rn_dist_bcast_bytes(&r->d, &found, sizeof found, 0);
    if (!found) resume_path[0] = 0;
  } else if (strcmp(c->resume, "none")) {
    snprintf(resume_path, sizeof resume_path, "%s", c->resume);
  }
  int resumed = 0;
  if (resume_path[0]) {
    if (rank0) st = rn_ckpt_load(resume_path, &r->m, &r->st, NULL, &e);
    st = rn_dist_agree(&r->d, st, &e);
    if (st) return fail(r, &e, RN_EXIT_ERROR);
    rn_dist_bcast_bytes(&r->d, &r->st, sizeof r->st, 0);
    resumed = 1;
    if (r->st.global_batch != r->global_batch) {
      /* Elastic resume with another global batch: keep the sample position, rescale the LR by the
       * linear rule relative to the batch the run was started with. */
      if (r->sched.ref_batch == 0) r->sched.ref_batch = r->st.global_batch;
      if (r->st.epoch_offset % r->global_batch) {
        if (rank0)
          printf("note: position %lld in epoch %lld is not a multiple of the new global batch %d; the rest of "
                 "this epoch is skipped\n",
                 (long long)r->st.epoch_offset, (long long)r->st.epoch, r->global_batch);
        r->st.epoch++;
        r->st.epoch_offset = 0;
      }
    }
    if (rank0) {
      printf("resumed from %s: epoch %lld, step %lld, position %lld (saved with %d ranks, global batch %d)\n",
             resume_path, (long long)r->st.epoch, (long long)r->st.step, (long long)r->st.epoch_offset, r->st.nranks,
             r->st.global_batch);
      /* The metrics file continues from what the checkpoint knew (drop lines of lost work). */
      char *mt = NULL;
      rn_err e2;
      if (rn_ckpt_read_text(resume_path, "metrics", &mt, &e2) == RN_OK && mt) {
        FILE *f = fopen(r->metrics_path, "w");
        if (f) fputs(mt, f), fclose(f);
        free(mt);
      }
    }
  }
  st = rn_dist_bcast_model(&r->d, &r->m, &e);
  if (st) return fail(r, &e, RN_EXIT_ERROR);
  if (resumed && r->nbuf) {
    /* Same rank count: every rank gets back its own BN running statistics (bitwise resume);
     * otherwise all keep the average from /model. */
    int found = 1;
    if (rank0)
      for (int k = 0; k < r->d.size && found && !st; k++)
        st = rn_ckpt_read_rank_buffers(resume_path, k, r->d.size, r->rank_buffers + (size_t)k * r->nbuf, r->nbuf,
                                       &found, &e);
    st = rn_dist_agree(&r->d, st, &e);
    if (st) return fail(r, &e, RN_EXIT_ERROR);
    rn_dist_bcast_bytes(&r->d, &found, sizeof found, 0);
    if (found) rn_dist_scatter_floats(&r->d, r->rank_buffers, r->nbuf, r->m.param + r->m.ntrain);
  }
  if (rank0) {
    r->metrics = fopen(r->metrics_path, "a");
    if (!r->metrics) st = rn_err_set(&e, RN_EIO, "metrics file %s: cannot open for appending: %s", r->metrics_path,
                                     strerror(errno));
  }
  st = rn_dist_agree(&r->d, st, &e);
  if (st) return fail(r, &e, RN_EXIT_ERROR);
  r->st.nranks = r->d.size;
  r->st.global_batch = r->global_batch;
  if (rank0 && !resumed) printf("starting from initialisation (seed %ld)\n", c->seed);

  /* Under mpirun a rank's stdout is a pseudo-terminal even when the job's output goes to a file,
   * so "auto" shows the live bar only outside mpirun; --progress bar forces it. */
  r->bar = rank0 && (!strcmp(c->progress, "bar") ||
                     (!strcmp(c->progress, "auto") && isatty(1) && !getenv("OMPI_COMM_WORLD_SIZE")));
  r->ar = rn_ar_create(&r->d, r->m.grad, r->m.ntrain, (size_t)(c->bucket_mb * 1048576.0),
                        c->overlap ? (c->comm_thread ? 2 : 1) : 0);
  install_signals();

  /* ---- the loop ---- */
  double t_start = rn_now(), t_last_ckpt = t_start, t_log = t_start;
  double acc[8] = {0}; /* loss*n, correct, n, data wait, compute, comm, optim, stepcount (sums over ranks) */
  double mine[4] = {0}; /* this rank's data wait, compute, comm, optim (maximum over ranks at each log) */
  int const_warm_done = (r->st.flags & 1) != 0;
  int64_t log_step0 = r->st.step;
  int exit_code = RN_EXIT_DONE;
  /* Tests: RN_STOP_AFTER_STEP=N stops after step N as a SIGUSR1 during it would. */
  const char *sa = getenv("RN_STOP_AFTER_STEP");
  const long long stop_after = sa ? atoll(sa) : 0;
  st = RN_OK;
  while (r->st.step < r->total_steps) {
    int64_t epoch = r->st.epoch;
    st = rn_loader_start_epoch(r->train_ld, (int)epoch, r->st.epoch_offset, &e);
    st = rn_dist_agree(&r->d, st, &e);
    if (st) return fail(r, &e, RN_EXIT_ERROR);
    int stop = 0, stop_unsaved = 0;
    while (r->st.step < r->total_steps && rn_loader_steps_left(r->train_ld) > 0) {
      double t0 = rn_now(), w0 = rn_loader_wait_seconds(r->train_ld);
      int n = 0;
      st = rn_loader_next(r->train_ld, rn_model_input(&r->m), r->labels, &n, &e);
      double t1 = rn_now();
      if (st == RN_OK && n != r->local_batch)
        st = rn_err_set(&e, RN_EFORMAT, "data set %s: loader returned %d images instead of %d", c->data, n,
                        r->local_batch);
      if (st) rn_dist_abort(&r->d, RN_EXIT_ERROR, e.msg); /* others are in a collective below */
      rn_model_set_step(&r->m, (uint64_t)c->seed, r->st.step);
      rn_model_forward(&r->m, n, 1);
      int top1 = 0;
      double loss = rn_model_loss(&r->m, n, r->labels, (float)c->label_smoothing, &top1, NULL);
      rn_model_zero_grad(&r->m);
      rn_ar_begin(r->ar);
      rn_model_backward(&r->m, n, rn_ar_ready, r->ar);
      double t2 = rn_now();
      double exposed = rn_ar_finish(r->ar);
      double t3 = rn_now();
      /* Fractional epoch at the start of this step (for warm-up and epoch milestones). */
      double epoch_pos = (double)epoch + (double)r->st.epoch_offset / (double)(r->steps_per_epoch * r->global_batch);
      double lr = rn_sched_lr(&r->sched, r->st.step, epoch_pos, const_warm_done);
      rn_sgd_step(&r->m, (float)lr, (float)c->momentum, (float)c->wd, c->wd_exempt);
      double t4 = rn_now();
      r->st.step++;
      r->st.epoch_offset += r->global_batch;
      r->st.samples += r->global_batch;
      r->st.lr = lr;
      /* One small allreduce per step: metrics, timing and the stop flag. */
      double v[9] = {loss * n, (double)top1, (double)n, rn_loader_wait_seconds(r->train_ld) - w0, t2 - t1,
                     exposed, t4 - t3, 1, g_stop_signal || (stop_after > 0 && r->st.step == stop_after) ? 1.0 : 0.0};
      (void)t0;
      for (int k = 0; k < 4; k++) mine[k] += v[3 + k];
      rn_dist_sum(&r->d, v, 9);
      for (int k = 0; k < 8; k++) acc[k] += v[k];
      stop = v[8] > 0;
      if (!isfinite(loss) || !isfinite(v[0])) {
        rn_err_set(&e, RN_EFORMAT, "training diverged: loss is %g at step %lld (lower --lr?)", v[0] / v[2],
                   (long long)r->st.step);
        return fail(r, &e, RN_EXIT_ERROR);
      }
      if (c->check_replicas_every > 0 && r->st.step % c->check_replicas_every == 0) {
        char when[64];
        snprintf(when, sizeof when, "at step %lld", (long long)r->st.step);
        st = rn_dist_check_replicas(&r->d, &r->m, when, &e);
        if (st) return fail(r, &e, RN_EXIT_ERROR);
      }
      int last = r->st.step == r->total_steps || rn_loader_steps_left(r->train_ld) == 0;
      if (r->st.step % c->log_every == 0 || last || stop) {
        rn_dist_max(&r->d, mine, 4); /* the slowest rank of the interval, per component */
        double now = rn_now(), dt = now - t_log;
        double ips = acc[2] / (dt > 0 ? dt : 1e-9);
        double err = 1.0 - acc[1] / acc[2], lavg = acc[0] / acc[2];
        double P = r->d.size, ns = acc[7] / P;
        if (c->const_warmup_lr > 0 && !const_warm_done && err < c->const_warmup_until) {
          const_warm_done = 1;
          r->st.flags |= 1;
          if (rank0) printf("\ntraining error %.3f < %.3f: constant warm-up over, lr -> %g\n", err,
                            c->const_warmup_until, rn_sched_peak_lr(&r->sched));
        }
        double eta = (double)(r->total_steps - r->st.step) * dt / (double)(r->st.step - log_step0);
        char etas[32];
        fmt_time(eta, etas, sizeof etas);
        if (r->bar) {
          int64_t sp = r->st.epoch_offset / r->global_batch;
          int w = 24, fill = (int)(w * (double)sp / (double)r->steps_per_epoch);
          char barbuf[32];
          for (int k = 0; k < w; k++) barbuf[k] = k < fill ? '#' : '.';
          barbuf[w] = 0;
          printf("\repoch %lld [%s] step %lld/%lld loss %.4f top1 %.2f%% lr %.4g %.0f img/s ETA %s   ",
                 (long long)epoch + 1, barbuf, (long long)r->st.step, (long long)r->total_steps, lavg,
                 100 * (1 - err), lr, ips, etas);
          fflush(stdout);
        } else if (rank0) {
          printf("epoch %lld step %lld/%lld loss %.4f train-err %.4f lr %.5g %.1f img/s data-wait %.1f%% comm %.1f%% "
                 "ETA %s\n",
                 (long long)epoch + 1, (long long)r->st.step, (long long)r->total_steps, lavg, err, lr, ips,
                 100 * acc[3] / P / dt, 100 * acc[5] / P / dt, etas);
          fflush(stdout);
        }
        metrics_line(r,
                     "{\"type\":\"train\",\"epoch\":%lld,\"step\":%lld,\"samples\":%lld,\"loss\":%.6g,\"err\":%.6g,"
                     "\"lr\":%.6g,\"img_s\":%.6g,\"data_wait_s\":%.6g,\"compute_s\":%.6g,\"comm_exposed_s\":%.6g,"
                     "\"optim_s\":%.6g,\"max_data_wait_s\":%.6g,\"max_compute_s\":%.6g,\"max_comm_exposed_s\":%.6g,"
                     "\"max_optim_s\":%.6g,\"steps\":%.0f}",
                     (long long)epoch, (long long)r->st.step, (long long)r->st.samples, lavg, err, lr, ips,
                     acc[3] / P, acc[4] / P, acc[5] / P, acc[6] / P, mine[0], mine[1], mine[2], mine[3], ns);
        memset(acc, 0, sizeof acc);
        memset(mine, 0, sizeof mine);
        t_log = now;
        log_step0 = r->st.step;
      }
      int periodic = (c->ckpt_every_steps > 0 && r->st.step % c->ckpt_every_steps == 0);
      if (c->ckpt_every_minutes > 0) {
        double since[1] = {rn_now() - t_last_ckpt};
        if (r->st.step % 10 == 0) { /* rank 0's clock decides, agreed by a max */
          rn_dist_max(&r->d, since, 1);
          periodic |= since[0] >= 60.0 * c->ckpt_every_minutes;
        }
      }
      if ((periodic || stop) && !last) {
        st = checkpoint(r, &e);
        if (st) return fail(r, &e, RN_EXIT_ERROR);
        t_last_ckpt = rn_now();
        if (rank0 && !r->bar) printf("checkpoint at step %lld written to %s\n", (long long)r->st.step, c->out);
      }
      if (stop) {
        stop_unsaved = last; /* the epoch's (or the run's) last step: its checkpoint comes at the epoch end */
        break;
      }
    }
    if (stop) {
      /* A stop on an epoch's last step skips the epoch end: checkpoint here what it would have
       * (the next epoch at position 0; that epoch's validation is skipped). On the run's last step
       * the checkpoint is the final one, without the final validation. */
      if (stop_unsaved) {
        if (rn_loader_steps_left(r->train_ld) == 0) {
          r->st.epoch++;
          r->st.epoch_offset = 0;
        }
        st = checkpoint(r, &e);
        if (st) return fail(r, &e, RN_EXIT_ERROR);
        if (rank0 && !r->bar) printf("checkpoint at step %lld written to %s\n", (long long)r->st.step, c->out);
      }
      if (rank0) {
        if (r->bar) putchar('\n');
        printf("stop requested (signal): checkpoint at step %lld written; exit %d (requeue me)\n",
               (long long)r->st.step, RN_EXIT_REQUEUE);
      }
      exit_code = RN_EXIT_REQUEUE;
      break;
    }
    int epoch_done = rn_loader_steps_left(r->train_ld) == 0;
    int done = r->st.step >= r->total_steps;
    if (epoch_done) {
      r->st.epoch++;
      r->st.epoch_offset = 0;
    }
    /* Validation at epoch ends (every eval-every epochs) and at the end of training. */
    if ((epoch_done && c->eval_every > 0 && r->st.epoch % c->eval_every == 0) || done) {
      if (r->have_val) {
        eval_counts ec;
        double te = rn_now();
        average_buffers_begin(r); /* evaluate with the rank average, keep each rank's own */
        st = evaluate(r, r->val_ld, &ec, &e);
        average_buffers_end(r);
        if (st) return fail(r, &e, RN_EXIT_ERROR);
        double err1 = 1 - ec.top1 / ec.n, err5 = 1 - ec.top5 / ec.n;
        r->st.val_err = err1;
        if (r->st.best_val_err < 0 || err1 < r->st.best_val_err) r->st.best_val_err = err1;
        if (rank0) {
          if (r->bar) putchar('\n');
          printf("validation at epoch %lld, step %lld: top-1 error %.2f%% (accuracy %.2f%%), top-5 error %.2f%%, "
                 "loss %.4f, %lld images, %.1f s\n",
                 (long long)r->st.epoch, (long long)r->st.step, 100 * err1, 100 * (1 - err1), 100 * err5,
                 ec.loss / ec.n, (long long)ec.n, rn_now() - te);
          fflush(stdout);
        }
        metrics_line(r,
                     "{\"type\":\"val\",\"epoch\":%lld,\"step\":%lld,\"top1_err\":%.6g,\"top5_err\":%.6g,\"loss\":%.6g,"
                     "\"images\":%.0f}",
                     (long long)r->st.epoch, (long long)r->st.step, err1, err5, ec.loss / ec.n, ec.n);
      }
      st = checkpoint(r, &e);
      if (st) return fail(r, &e, RN_EXIT_ERROR);
      t_last_ckpt = rn_now();
    } else if (done) {
      st = checkpoint(r, &e);
      if (st) return fail(r, &e, RN_EXIT_ERROR);
    }
  }
  if (exit_code == RN_EXIT_DONE && rank0) {
    if (r->bar) putchar('\n');
    printf("training finished: %lld steps in %.1f s; checkpoints in %s\n", (long long)r->st.step,
           rn_now() - t_start, c->out);
  }
  return finish(r, exit_code);
}

/* ---- rn-eval ---- */
int rn_eval_main(int argc, char **argv) {
  run R, *r = &R;
  memset(r, 0, sizeof *r);
  rn_err e = {0};
  if (rn_dist_init(&argc, &argv, &r->d, &e)) {
    fprintf(stderr, "rn-eval: %s\n", e.msg);
    return RN_EXIT_ERROR;
  }
  const char *ckpt = NULL, *data = NULL, *split = "test", *crops = "both";
  long batch = 100, threads = 0, crop = 0;
  rn_status st = RN_OK;
  for (int i = 1; i < argc && !st; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      if (r->d.rank == 0)
        printf("usage: rn-eval --checkpoint FILE --data DIR [--split test] [--crops single|10crop|both]\n"
               "               [--crop N] [--batch N] [--threads T]\n"
               "Top-1/top-5 error of a checkpoint on a split: single centre crop (or the stored size) and the\n"
               "paper's 10-crop (4 corners + centre and their flips, probabilities averaged).\n");
      return finish(r, 0);
    }
    if (!v) { st = rn_err_set(&e, RN_EINVAL, "command line: option %s needs a value", a); break; }
    i++;
    if (!strcmp(a, "--checkpoint")) ckpt = v;
    else if (!strcmp(a, "--data")) data = v;
    else if (!strcmp(a, "--split")) split = v;
    else if (!strcmp(a, "--crops")) crops = v;
    else if (!strcmp(a, "--batch")) st = rn_parse_int("option batch", v, 1, 100000, &batch, &e);
    else if (!strcmp(a, "--threads")) st = rn_parse_int("option threads", v, 0, 1024, &threads, &e);
    else if (!strcmp(a, "--crop")) st = rn_parse_int("option crop", v, 0, 100000, &crop, &e);
    else st = rn_err_set(&e, RN_EINVAL, "command line: unknown option '%s'", a);
  }
  if (!st && (!ckpt || !data)) st = rn_err_set(&e, RN_EINVAL, "command line: --checkpoint and --data are required");
  if (!st && strcmp(crops, "single") && strcmp(crops, "10crop") && strcmp(crops, "both"))
    st = rn_err_set(&e, RN_EINVAL, "option crops: '%s' is not single, 10crop or both", crops);
  if (st) {
    if (r->d.rank == 0) fprintf(stderr, "rn-eval: error: %s\n", e.msg);
    return finish(r, RN_EXIT_USAGE);
  }
  r->threads = resolve_threads(threads, &r->d);
  rn_blas_init(NULL, r->threads, r->d.rank == 0 ? stdout : NULL, &e);
  rn_model_config mc;
  st = rn_ckpt_read_config(ckpt, &mc, &e);
  if (!st) st = rn_dataset_open(&r->val_ds, data, split, &e);
  if (!st) r->have_val = 1;
  if (!st && r->val_ds.meta.classes != mc.num_classes)
    st = rn_err_set(&e, RN_EFORMAT, "data set %s split %s: %d classes but checkpoint %s has %d", data, split,
                    r->val_ds.meta.classes, ckpt, mc.num_classes);
  if (!st && r->val_ds.meta.channels != mc.in_channels)
    st = rn_err_set(&e, RN_EFORMAT, "data set %s split %s: %d channels but checkpoint %s expects %d", data, split,
                    r->val_ds.meta.channels, ckpt, mc.in_channels);
  int per_batch = (int)batch;
  if (!st) st = rn_model_build(&r->m, &mc, per_batch * 10, &e);
  if (!st) st = rn_ckpt_load(ckpt, &r->m, &r->st, NULL, &e);
  st = rn_dist_agree(&r->d, st, &e);
  if (st) {
    if (r->d.rank == 0) fprintf(stderr, "rn-eval: error: %s\n", e.msg);
    return finish(r, RN_EXIT_ERROR);
  }
  r->labels = rn_alloc(sizeof(int32_t) * (size_t)per_batch * 10);
  const char *modes[2] = {"center", "10crop"};
  for (int k = 0; k < 2; k++) {
    if ((k == 0 && !strcmp(crops, "10crop")) || (k == 1 && !strcmp(crops, "single"))) continue;
    rn_aug a;
    rn_aug_parse(modes[k], &a, &e);
    rn_loader_config lc = {.local_batch = per_batch, .rank = r->d.rank, .nranks = r->d.size, .aug = a,
                           .out_h = mc.in_h, .out_w = mc.in_w, .train = 0, .prefetch_depth = 2, .workers = 1};
    if (crop > 0) lc.out_h = lc.out_w = (int)crop;
    snprintf(r->cfg.eval_aug, sizeof r->cfg.eval_aug, "%s", modes[k]);
    rn_loader *ld = NULL;
    st = rn_loader_open(&ld, &r->val_ds, &lc, &e);
    st = rn_dist_agree(&r->d, st, &e);
    eval_counts ec = {0};
    if (!st) st = evaluate(r, ld, &ec, &e);
    rn_loader_close(ld);
    if (st) {
      if (r->d.rank == 0) fprintf(stderr, "rn-eval: error: %s\n", e.msg);
      return finish(r, RN_EXIT_ERROR);
    }
    if (r->d.rank == 0)
      printf("%s %s (%s): top-1 error %.2f%%, top-5 error %.2f%%, loss %.4f, %lld images\n", ckpt, split,
             k ? "10-crop" : "single crop", 100 * (1 - ec.top1 / ec.n), 100 * (1 - ec.top5 / ec.n), ec.loss / ec.n,
             (long long)ec.n);
  }
  return finish(r, 0);
}
