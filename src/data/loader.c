/* Loader: sampler + reads + augmentation, prefetched into a ring of batch buffers by threads.
 *
 * Batch b of the current epoch always goes to slot b % depth. A worker claims the next batch
 * when its slot is free, computes the sample list under the mutex, fills the slot without it
 * (HDF5 reads take rn_h5_lock inside rn_dataset_read) and marks it ready. rn_loader_next waits
 * for its batch, copies it out and frees the slot. Every claim carries the epoch generation:
 * rn_loader_start_epoch bumps it, so batches of an abandoned epoch are discarded. */
#include <pthread.h>
#include <string.h>

#include "rn/data.h"

typedef struct {
  float *images;   /* [B*nout][out_h][out_w][c] */
  int32_t *labels; /* [B*nout] */
  int64_t *idx;    /* [B] dataset indices */
  int nsamples, epoch;
  int state; /* 0 free, 1 filling, 2 ready */
  int64_t batch;
  uint64_t gen;
  rn_status st;
  rn_err err;
} slot_t;

typedef struct {
  struct rn_loader *L;
  int id;
} warg_t;

struct rn_loader {
  rn_dataset *d;
  rn_loader_config c;
  int oh, ow, ch, nout;
  size_t img; /* floats per output image */
  int64_t *perm;
  int64_t eval_lo, eval_hi;
  /* epoch state (under mu) */
  int epoch, started;
  int64_t offset, steps, next_produce, next_consume;
  uint64_t gen;
  int depth;
  slot_t *slots;
  int nthreads;
  pthread_t *th;
  warg_t *args;
  rn_image *ims; /* one per thread (or one for synchronous mode) */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop;
  double wait;
  int64_t *last_idx;
  int last_n;
};

/* Sample list of batch b (mu held or single-threaded). */
static int batch_samples(const rn_loader *L, int64_t b, int64_t *idx) {
  int B = L->c.local_batch;
  if (L->c.train) {
    int64_t first = rn_sampler_train_first(L->offset, B, L->c.rank, L->c.nranks, b);
    for (int k = 0; k < B; k++) idx[k] = L->perm[first + k];
    return B;
  }
  int64_t lo = L->eval_lo + b * B, hi = lo + B < L->eval_hi ? lo + B : L->eval_hi;
  for (int64_t i = lo; i < hi; i++) idx[i - lo] = i;
  return (int)(hi - lo);
}

static void fill(rn_loader *L, slot_t *s, rn_image *im) {
  s->st = RN_OK;
  for (int k = 0; k < s->nsamples; k++) {
    int32_t label;
    rn_status st = rn_dataset_read(L->d, s->idx[k], im, &label, &s->err);
    if (st) {
      s->st = st;
      return;
    }
    float *out = s->images + (size_t)k * L->nout * L->img;
    rn_augment(im->pix, im->h, im->w, im->c, L->c.aug, rn_sampler_aug_key(L->c.seed, s->epoch, s->idx[k]), L->oh,
               L->ow, L->c.eval_resize, L->d->meta.mean, L->d->meta.std, out);
    for (int j = 0; j < L->nout; j++) s->labels[k * L->nout + j] = label;
  }
}

/* Claims the next batch into its slot if possible (mu held). Returns the slot or NULL. */
static slot_t *claim(rn_loader *L) {
  if (!L->started || L->next_produce >= L->steps) return NULL;
  slot_t *s = &L->slots[L->next_produce % L->depth];
  if (s->state != 0) return NULL;
  s->state = 1;
  s->batch = L->next_produce++;
  s->gen = L->gen;
  s->epoch = L->epoch;
  s->nsamples = batch_samples(L, s->batch, s->idx);
  return s;
}

static void *worker_main(void *p) {
  warg_t *a = p;
  rn_loader *L = a->L;
  rn_image *im = &L->ims[a->id];
  pthread_mutex_lock(&L->mu);
  while (!L->stop) {
    slot_t *s = claim(L);
    if (!s) {
      pthread_cond_wait(&L->cv, &L->mu);
      continue;
    }
    pthread_mutex_unlock(&L->mu);
    fill(L, s, im);
    pthread_mutex_lock(&L->mu);
    s->state = s->gen == L->gen ? 2 : 0;
    pthread_cond_broadcast(&L->cv);
  }
  pthread_mutex_unlock(&L->mu);
  return NULL;
}

void rn_loader_close(rn_loader *L) {
  if (!L) return;
  if (L->th) {
    pthread_mutex_lock(&L->mu);
    L->stop = 1;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
    for (int i = 0; i < L->nthreads; i++) pthread_join(L->th[i], NULL);
  }
  if (L->slots)
    for (int i = 0; i < L->depth; i++) {
      rn_free(L->slots[i].images);
      free(L->slots[i].labels);
      free(L->slots[i].idx);
    }
  if (L->ims)
    for (int i = 0; i < (L->nthreads ? L->nthreads : 1); i++) rn_image_free(&L->ims[i]);
  pthread_mutex_destroy(&L->mu);
  pthread_cond_destroy(&L->cv);
  free(L->slots);
  free(L->ims);
  free(L->th);
  free(L->args);
  free(L->perm);
  free(L->last_idx);
  free(L);
}

rn_status rn_loader_open(rn_loader **Lp, rn_dataset *d, const rn_loader_config *c, rn_err *e) {
  *Lp = NULL;
  const char *ds = d->manifest;
  if (c->local_batch <= 0)
    return rn_err_set(e, RN_EINVAL, "loader for %s: local_batch = %d must be positive", ds, c->local_batch);
  if (c->nranks <= 0 || c->rank < 0 || c->rank >= c->nranks)
    return rn_err_set(e, RN_EINVAL, "loader for %s: rank %d / nranks %d invalid", ds, c->rank, c->nranks);
  int64_t G = (int64_t)c->local_batch * c->nranks;
  if (c->train && G > d->n)
    return rn_err_set(e, RN_EINVAL,
                      "loader for %s: global batch %lld (local_batch %d x %d ranks) is larger than the %lld samples",
                      ds, (long long)G, c->local_batch, c->nranks, (long long)d->n);
  if (c->train && c->aug == RN_AUG_EVAL_10CROP)
    return rn_err_set(e, RN_EINVAL, "loader for %s: augmentation '10crop' is for evaluation, not training", ds);
  if ((int)c->aug < RN_AUG_NONE || c->aug > RN_AUG_EVAL_10CROP)
    return rn_err_set(e, RN_EINVAL, "loader for %s: augmentation %d unknown", ds, (int)c->aug);
  int oh = c->out_h ? c->out_h : d->meta.height, ow = c->out_w ? c->out_w : d->meta.width;
  if (oh <= 0 || ow <= 0 || oh > 8192 || ow > 8192)
    return rn_err_set(e, RN_EINVAL, "loader for %s: output size %dx%d invalid (jpeg shards need an explicit size)", ds,
                      c->out_h, c->out_w);
  if (c->prefetch_depth < 0 || c->prefetch_depth > 64)
    return rn_err_set(e, RN_EINVAL, "loader for %s: prefetch_depth = %d outside [0, 64]", ds, c->prefetch_depth);
  if (c->workers < 0 || c->workers > 64)
    return rn_err_set(e, RN_EINVAL, "loader for %s: workers = %d outside [0, 64]", ds, c->workers);
  if (c->eval_resize < 0)
    return rn_err_set(e, RN_EINVAL, "loader for %s: eval_resize = %d must be >= 0", ds, c->eval_resize);
  rn_loader *L = calloc(1, sizeof *L);
  if (!L) return rn_err_set(e, RN_ENOMEM, "loader for %s: out of memory", ds);
  pthread_mutex_init(&L->mu, NULL);
  pthread_cond_init(&L->cv, NULL);
  L->d = d;
  L->c = *c;
  L->oh = oh;
  L->ow = ow;
  L->ch = d->meta.channels;
  L->nout = rn_aug_outputs(c->aug);
  L->img = (size_t)oh * ow * L->ch;
  rn_sampler_eval_slice(d->n, c->rank, c->nranks, &L->eval_lo, &L->eval_hi);
  L->depth = c->workers == 0 ? 1 : (c->prefetch_depth ? c->prefetch_depth : 2);
  if (c->workers > 0 && L->depth < c->workers) L->depth = c->workers; /* keep every worker busy */
  L->nthreads = c->workers;
  int B = c->local_batch;
  if (c->train) L->perm = malloc((size_t)d->n * sizeof *L->perm);
  L->slots = calloc((size_t)L->depth, sizeof *L->slots);
  L->ims = calloc((size_t)(L->nthreads ? L->nthreads : 1), sizeof *L->ims);
  L->last_idx = malloc((size_t)B * sizeof *L->last_idx);
  if ((c->train && !L->perm) || !L->slots || !L->ims || !L->last_idx) {
    rn_loader_close(L);
    return rn_err_set(e, RN_ENOMEM, "loader for %s: out of memory", ds);
  }
  for (int i = 0; i < L->depth; i++) {
    slot_t *s = &L->slots[i];
    s->images = rn_alloc((size_t)B * L->nout * L->img * sizeof(float));
    s->labels = malloc((size_t)B * L->nout * sizeof(int32_t));
    s->idx = malloc((size_t)B * sizeof(int64_t));
    if (!s->labels || !s->idx) {
      rn_loader_close(L);
      return rn_err_set(e, RN_ENOMEM, "loader for %s: out of memory", ds);
    }
  }
  for (int i = 0; i < (L->nthreads ? L->nthreads : 1); i++) {
    rn_status st = rn_image_init(&L->ims[i], d, e);
    if (st) {
      rn_loader_close(L);
      return st;
    }
  }
  if (L->nthreads) {
    L->th = calloc((size_t)L->nthreads, sizeof *L->th);
    L->args = calloc((size_t)L->nthreads, sizeof *L->args);
    if (!L->th || !L->args) {
      rn_loader_close(L);
      return rn_err_set(e, RN_ENOMEM, "loader for %s: out of memory", ds);
    }
    for (int i = 0; i < L->nthreads; i++) {
      L->args[i].L = L;
      L->args[i].id = i;
      if (pthread_create(&L->th[i], NULL, worker_main, &L->args[i]) != 0) {
        int started = i;
        /* join the ones that started, free the rest */
        pthread_mutex_lock(&L->mu);
        L->stop = 1;
        pthread_cond_broadcast(&L->cv);
        pthread_mutex_unlock(&L->mu);
        for (int j = 0; j < started; j++) pthread_join(L->th[j], NULL);
        free(L->th);
        L->th = NULL;
        rn_loader_close(L);
        return rn_err_set(e, RN_ENOMEM, "loader for %s: cannot start prefetch thread %d", ds, i);
      }
    }
  }
  *Lp = L;
  return RN_OK;
}

rn_status rn_loader_start_epoch(rn_loader *L, int epoch, int64_t global_offset, rn_err *e) {
  const rn_dataset *d = L->d;
  int64_t G = (int64_t)L->c.local_batch * L->c.nranks;
  if (epoch < 0) return rn_err_set(e, RN_EINVAL, "loader for %s: epoch = %d must be >= 0", d->manifest, epoch);
  if (L->c.train) {
    if (global_offset < 0 || global_offset > d->n)
      return rn_err_set(e, RN_EINVAL, "loader for %s: resume offset %lld outside [0, %lld]", d->manifest,
                        (long long)global_offset, (long long)d->n);
  } else if (global_offset != 0) {
    return rn_err_set(e, RN_EINVAL, "loader for %s: evaluation offset %lld must be 0", d->manifest,
                      (long long)global_offset);
  }
  pthread_mutex_lock(&L->mu);
  L->gen++;
  for (int i = 0; i < L->depth; i++)
    if (L->slots[i].state == 2) L->slots[i].state = 0;
  if (L->c.train && (!L->started || L->epoch != epoch)) rn_sampler_epoch_order(L->c.seed, epoch, d->n, L->perm);
  L->epoch = epoch;
  L->offset = global_offset;
  if (L->c.train)
    L->steps = (d->n - global_offset) / G;
  else
    L->steps = (L->eval_hi - L->eval_lo + L->c.local_batch - 1) / L->c.local_batch;
  L->next_produce = L->next_consume = 0;
  L->started = 1;
  L->last_n = 0;
  pthread_cond_broadcast(&L->cv);
  pthread_mutex_unlock(&L->mu);
  return RN_OK;
}

int64_t rn_loader_steps_per_epoch(const rn_loader *L) {
  if (L->c.train) return rn_sampler_train_steps(L->d->n, L->c.local_batch, L->c.nranks);
  return (L->eval_hi - L->eval_lo + L->c.local_batch - 1) / L->c.local_batch;
}

int64_t rn_loader_steps_left(const rn_loader *L) {
  rn_loader *M = (rn_loader *)L;
  pthread_mutex_lock(&M->mu);
  int64_t r = L->started ? L->steps - L->next_consume : 0;
  pthread_mutex_unlock(&M->mu);
  return r;
}

int rn_loader_batch_capacity(const rn_loader *L) { return L->c.local_batch * L->nout; }

void rn_loader_out_shape(const rn_loader *L, int *h, int *w, int *c) {
  *h = L->oh;
  *w = L->ow;
  *c = L->ch;
}

rn_status rn_loader_next(rn_loader *L, float *images, int32_t *labels, int *n, rn_err *e) {
  *n = 0;
  pthread_mutex_lock(&L->mu);
  if (!L->started) {
    pthread_mutex_unlock(&L->mu);
    return rn_err_set(e, RN_EINVAL, "loader for %s: rn_loader_next before rn_loader_start_epoch", L->d->manifest);
  }
  if (L->next_consume >= L->steps) {
    pthread_mutex_unlock(&L->mu);
    return RN_OK;
  }
  slot_t *s = &L->slots[L->next_consume % L->depth];
  if (L->nthreads == 0) {
    s = claim(L);
    RN_ASSERT(s != NULL);
    pthread_mutex_unlock(&L->mu);
    fill(L, s, &L->ims[0]);
    pthread_mutex_lock(&L->mu);
  } else {
    double t0 = rn_now();
    while (!(s->state == 2 && s->batch == L->next_consume && s->gen == L->gen)) pthread_cond_wait(&L->cv, &L->mu);
    L->wait += rn_now() - t0;
  }
  pthread_mutex_unlock(&L->mu);
  rn_status st = s->st;
  if (st) {
    rn_err_set(e, st, "%s", s->err.msg);
  } else {
    size_t cnt = (size_t)s->nsamples * L->nout;
    memcpy(images, s->images, cnt * L->img * sizeof(float));
    memcpy(labels, s->labels, cnt * sizeof(int32_t));
    *n = (int)cnt;
    memcpy(L->last_idx, s->idx, (size_t)s->nsamples * sizeof *L->last_idx);
    L->last_n = s->nsamples;
  }
  pthread_mutex_lock(&L->mu);
  s->state = 0;
  L->next_consume++;
  pthread_cond_broadcast(&L->cv);
  pthread_mutex_unlock(&L->mu);
  return st;
}

const int64_t *rn_loader_last_indices(const rn_loader *L, int *count) {
  *count = L->last_n;
  return L->last_n ? L->last_idx : NULL;
}

double rn_loader_wait_seconds(const rn_loader *L) { return L->wait; }
