#include "rn/dist.h"

#include <mpi.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#define MPI_CHECK(call)                                                             \
  do {                                                                              \
    int rc_ = (call);                                                               \
    if (rc_ != MPI_SUCCESS) {                                                       \
      char es_[MPI_MAX_ERROR_STRING];                                               \
      int el_ = 0;                                                                  \
      MPI_Error_string(rc_, es_, &el_);                                             \
      fprintf(stderr, "resnet-mpi: MPI call %s failed at %s:%d: %s\n", #call,       \
              __FILE__, __LINE__, es_);                                             \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                 \
    }                                                                               \
  } while (0)

static int g_thread_multiple;
static MPI_Comm g_bn_comm = MPI_COMM_NULL; /* synchronised BN: its own communicator, so its blocking
                                             allreduces never interleave with the gradient buckets */

rn_status rn_dist_init(int *argc, char ***argv, rn_dist *d, rn_err *e) {
  int provided = 0, inited = 0;
  MPI_Initialized(&inited);
  if (!inited && MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
    return rn_err_set(e, RN_EMPI, "MPI_Init_thread failed");
  MPI_Query_thread(&provided);
  g_thread_multiple = provided >= MPI_THREAD_MULTIPLE;
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &d->size);
  MPI_Comm local;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &local));
  MPI_Comm_rank(local, &d->local_rank);
  MPI_Comm_size(local, &d->local_size);
  MPI_Comm_free(&local);
  if (g_bn_comm == MPI_COMM_NULL) MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &g_bn_comm));
  return RN_OK;
}

void rn_dist_bn_sum(void *ctx, double *v, int n) {
  const rn_dist *d = ctx;
  if (d->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, g_bn_comm));
}

void rn_dist_finalize(void) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (fin) return;
  if (g_bn_comm != MPI_COMM_NULL) MPI_Comm_free(&g_bn_comm);
  MPI_Finalize();
}

void rn_dist_abort(const rn_dist *d, int code, const char *msg) {
  fprintf(stderr, "resnet-mpi: rank %d: %s\nresnet-mpi: rank %d: stopping all ranks\n", d ? d->rank : -1, msg,
          d ? d->rank : -1);
  fflush(stderr);
  fflush(stdout);
  MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
  abort();
}

rn_status rn_dist_agree(const rn_dist *d, rn_status st, rn_err *e) {
  /* The lowest failing rank speaks for all. */
  int key = st != RN_OK ? d->rank : d->size, lowest;
  MPI_CHECK(MPI_Allreduce(&key, &lowest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (lowest == d->size) return RN_OK;
  int code = st;
  MPI_CHECK(MPI_Bcast(&code, 1, MPI_INT, lowest, MPI_COMM_WORLD));
  char msg[sizeof e->msg];
  if (d->rank == lowest) snprintf(msg, sizeof msg, "%s", e->msg);
  MPI_CHECK(MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, lowest, MPI_COMM_WORLD));
  if (d->rank != lowest) rn_err_set(e, (rn_status)code, "rank %d: %s", lowest, msg);
  return (rn_status)code;
}

static void bcast_floats(float *p, size_t n, int root) {
  const size_t chunk = (size_t)1 << 28;
  for (size_t i = 0; i < n; i += chunk) {
    size_t c = n - i < chunk ? n - i : chunk;
    MPI_CHECK(MPI_Bcast(p + i, (int)c, MPI_FLOAT, root, MPI_COMM_WORLD));
  }
}

rn_status rn_dist_bcast_model(const rn_dist *d, rn_model *m, rn_err *e) {
  if (d->size == 1) return RN_OK;
  bcast_floats(m->param, m->ntotal, 0);
  bcast_floats(m->mom, m->ntrain, 0);
  return rn_dist_check_replicas(d, m, "after the initial broadcast", e);
}

uint64_t rn_dist_param_checksum(const rn_model *m) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  /* Trainable parameters and momentum only: BN running statistics legitimately differ between
   * ranks (each rank normalises with its own batch statistics). */
  const uint32_t *w = (const uint32_t *)m->param;
  for (size_t i = 0; i < m->ntrain; i++) h = rn_mix64(h ^ w[i]) + i;
  const uint32_t *v = (const uint32_t *)m->mom;
  for (size_t i = 0; i < m->ntrain; i++) h = rn_mix64(h ^ v[i]) + i;
  return h;
}

rn_status rn_dist_check_replicas(const rn_dist *d, const rn_model *m, const char *when, rn_err *e) {
  if (d->size == 1) return RN_OK;
  unsigned long long mine = rn_dist_param_checksum(m), root = mine;
  MPI_CHECK(MPI_Bcast(&root, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD));
  int bad = mine != root, nbad = 0, first = bad ? d->rank : d->size, firstbad;
  MPI_CHECK(MPI_Allreduce(&bad, &nbad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
  MPI_CHECK(MPI_Allreduce(&first, &firstbad, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (nbad)
    return rn_err_set(e, RN_EFORMAT,
                      "replica check %s: parameters of %d rank(s) differ from rank 0 (first: rank %d); "
                      "replicas diverged",
                      when, nbad, firstbad);
  return RN_OK;
}

void rn_dist_average_buffers(const rn_dist *d, rn_model *m) {
  if (d->size == 1 || m->ntotal == m->ntrain) return;
  float *b = m->param + m->ntrain;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, b, (int)(m->ntotal - m->ntrain), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
  float s = 1.0f / (float)d->size;
  for (size_t i = 0; i < m->ntotal - m->ntrain; i++) b[i] *= s;
}

void rn_dist_sum(const rn_dist *d, double *v, int n) {
  if (d->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
}
void rn_dist_max(const rn_dist *d, double *v, int n) {
  if (d->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
}
void rn_dist_gather_floats(const rn_dist *d, const float *src, size_t n, float *dst_root) {
  if (d->size == 1) {
    if (dst_root != src) memcpy(dst_root, src, n * sizeof(float));
    return;
  }
  MPI_CHECK(MPI_Gather(src, (int)n, MPI_FLOAT, dst_root, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD));
}

void rn_dist_scatter_floats(const rn_dist *d, const float *src_root, size_t n, float *dst) {
  if (d->size == 1) {
    if (dst != src_root) memcpy(dst, src_root, n * sizeof(float));
    return;
  }
  MPI_CHECK(MPI_Scatter(src_root, (int)n, MPI_FLOAT, dst, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD));
}

void rn_dist_barrier(const rn_dist *d) {
  if (d->size > 1) MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
}
void rn_dist_bcast_bytes(const rn_dist *d, void *buf, size_t n, int root) {
  if (d->size > 1) MPI_CHECK(MPI_Bcast(buf, (int)n, MPI_BYTE, root, MPI_COMM_WORLD));
}

/* ---- bucketed allreduce ---- */
struct rn_allreducer {
  int size, overlap, nb;
  /* overlap == 2: a communication thread starts the buckets and drives their progress. */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int thread_on, quit, started_by_main; /* started_by_main: buckets handed to the thread */
  int done;                              /* buckets completed (thread mode) */
  int gen;                               /* step generation (the thread restarts its count) */
  float *grad;
  size_t n, bucket; /* floats */
  size_t lowest_ready; /* everything in [lowest_ready, n) is final */
  int next;            /* next bucket to start (bucket k covers [lo_k, hi_k) from the end) */
  MPI_Request *req;
};

static size_t b_lo(const rn_allreducer *a, int k) {
  size_t hi = a->n - (size_t)k * a->bucket;
  return hi > a->bucket ? hi - a->bucket : 0;
}

static void start_bucket(rn_allreducer *a, int k);

/* The communication thread: starts each bucket the main thread hands over and polls MPI_Test
 * (with short sleeps, so it does not steal a core from the compute threads) until all are done. */
static void *comm_thread(void *arg) {
  rn_allreducer *a = arg;
  int started = 0, gen = 0;
  pthread_mutex_lock(&a->mu);
  for (;;) {
    while (!a->quit && gen == a->gen && started == a->started_by_main && a->done == started)
      pthread_cond_wait(&a->cv, &a->mu);
    if (a->quit) break;
    if (gen != a->gen) { /* a new step: nothing of it started yet */
      gen = a->gen;
      started = 0;
      continue;
    }
    int upto = a->started_by_main;
    pthread_mutex_unlock(&a->mu);
    while (started < upto) start_bucket(a, started++);
    int done = a->done;
    while (done < started) {
      int flag = 0;
      MPI_CHECK(MPI_Test(&a->req[done], &flag, MPI_STATUS_IGNORE));
      if (flag) done++;
      else {
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
      }
      pthread_mutex_lock(&a->mu);
      int more = a->started_by_main > started;
      pthread_mutex_unlock(&a->mu);
      if (more) break; /* start newly ready buckets first */
    }
    pthread_mutex_lock(&a->mu);
    a->done = done;
    pthread_cond_broadcast(&a->cv);
  }
  pthread_mutex_unlock(&a->mu);
  return NULL;
}

rn_allreducer *rn_ar_create(const rn_dist *d, float *grad, size_t n, size_t bucket_bytes, int overlap) {
  rn_allreducer *a = rn_alloc(sizeof *a);
  a->size = d->size;
  a->overlap = overlap;
  a->grad = grad;
  a->n = n;
  a->bucket = bucket_bytes / sizeof(float);
  if (a->bucket < 1024) a->bucket = 1024;
  if (a->bucket > ((size_t)1 << 30)) a->bucket = (size_t)1 << 30;
  a->nb = (int)((n + a->bucket - 1) / a->bucket);
  a->req = rn_alloc(sizeof(MPI_Request) * (size_t)(a->nb ? a->nb : 1));
  for (int k = 0; k < a->nb; k++) a->req[k] = MPI_REQUEST_NULL;
  if (overlap == 2 && d->size > 1) {
    if (!g_thread_multiple) {
      if (d->rank == 0)
        fprintf(stderr, "resnet-mpi: MPI_THREAD_MULTIPLE not available: communication thread off, "
                        "progress driven between layers instead\n");
      a->overlap = 1;
    } else {
      pthread_mutex_init(&a->mu, NULL);
      pthread_cond_init(&a->cv, NULL);
      a->thread_on = 1;
      pthread_create(&a->thread, NULL, comm_thread, a);
    }
  }
  return a;
}

void rn_ar_free(rn_allreducer *a) {
  if (!a) return;
  if (a->thread_on) {
    pthread_mutex_lock(&a->mu);
    a->quit = 1;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
  }
  rn_free(a->req);
  rn_free(a);
}

int rn_ar_nbuckets(const rn_allreducer *a) { return a->nb; }

void rn_ar_begin(rn_allreducer *a) {
  a->lowest_ready = a->n;
  a->next = 0;
  if (a->thread_on) {
    pthread_mutex_lock(&a->mu);
    a->started_by_main = 0;
    a->done = 0;
    a->gen++;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
  }
}

/* Thread mode: hand buckets [.., upto) to the communication thread. */
static void hand_over(rn_allreducer *a, int upto) {
  pthread_mutex_lock(&a->mu);
  if (upto > a->started_by_main) {
    a->started_by_main = upto;
    pthread_cond_broadcast(&a->cv);
  }
  pthread_mutex_unlock(&a->mu);
}

static void start_bucket(rn_allreducer *a, int k) {
  size_t lo = b_lo(a, k), hi = a->n - (size_t)k * a->bucket;
  MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, a->grad + lo, (int)(hi - lo), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                           &a->req[k]));
}

void rn_ar_ready(void *ctx, size_t off, size_t count) {
  rn_allreducer *a = ctx;
  if (a->size == 1) return;
  if (off < a->lowest_ready && off + count >= a->lowest_ready) a->lowest_ready = off;
  if (!a->overlap) return;
  if (a->thread_on) {
    while (a->next < a->nb && b_lo(a, a->next) >= a->lowest_ready) a->next++;
    hand_over(a, a->next);
    return;
  }
  while (a->next < a->nb && b_lo(a, a->next) >= a->lowest_ready) start_bucket(a, a->next++);
  /* Drive progress of what is in flight. */
  if (a->next > 0) {
    int flag;
    MPI_CHECK(MPI_Testall(a->next, a->req, &flag, MPI_STATUSES_IGNORE));
  }
}

double rn_ar_finish(rn_allreducer *a) {
  if (a->size == 1) return 0.0;
  double t0 = rn_now();
  if (a->thread_on) {
    hand_over(a, a->nb);
    a->next = a->nb;
    pthread_mutex_lock(&a->mu);
    while (a->done < a->nb) pthread_cond_wait(&a->cv, &a->mu);
    pthread_mutex_unlock(&a->mu);
  } else {
    while (a->next < a->nb) start_bucket(a, a->next++);
    MPI_CHECK(MPI_Waitall(a->nb, a->req, MPI_STATUSES_IGNORE));
  }
  double t = rn_now() - t0;
  float s = 1.0f / (float)a->size;
  float *g = a->grad;
  size_t n = a->n;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; i++) g[i] *= s;
  return t;
}
