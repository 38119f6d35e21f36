/* dist: the only module that calls MPI. Rank set-up, parameter broadcast and replica checks,
 * bucketed gradient allreduce overlapped with backward, reductions of metrics and BN statistics,
 * and agreement on stopping. */
#ifndef RN_DIST_H
#define RN_DIST_H
#include <stdint.h>
#include "rn/core.h"
#include "rn/model.h"

typedef struct {
  int rank, size;
  int local_rank, local_size; /* ranks on this node */
} rn_dist;

/* MPI_Init_thread (MPI_THREAD_MULTIPLE requested; FUNNELED is enough) and errors-return handler. */
rn_status rn_dist_init(int *argc, char ***argv, rn_dist *d, rn_err *e);
void rn_dist_finalize(void);
/* Prints msg (prefixed with the rank) and aborts the whole job: never leave the other ranks
 * hanging in a collective. */
_Noreturn void rn_dist_abort(const rn_dist *d, int code, const char *msg);
/* If any rank has st != RN_OK, every rank returns a non-OK status; the failing rank's message
 * is broadcast so rank 0 can print it. Collective. */
rn_status rn_dist_agree(const rn_dist *d, rn_status st, rn_err *e);

/* Parameters (all floats incl. BN buffers) and momentum from rank 0 to all. */
rn_status rn_dist_bcast_model(const rn_dist *d, rn_model *m, rn_err *e);
/* Checksum of the bits of the trainable parameters and momentum (not the BN running statistics,
 * which differ between ranks by design). */
uint64_t rn_dist_param_checksum(const rn_model *m);
/* Compares checksums across ranks; RN_EFORMAT with the ranks that differ if replicas diverged. */
rn_status rn_dist_check_replicas(const rn_dist *d, const rn_model *m, const char *when, rn_err *e);
/* Averages BN running statistics across ranks (before evaluation and checkpoints). */
void rn_dist_average_buffers(const rn_dist *d, rn_model *m);
/* Synchronised BN's reduction (an rn_bn_reduce_fn; ctx = the rn_dist): in-place sum over ranks on a
 * communicator of its own. */
void rn_dist_bn_sum(void *ctx, double *v, int n);
/* In-place sum of a small double vector over ranks. */
void rn_dist_sum(const rn_dist *d, double *v, int n);
void rn_dist_max(const rn_dist *d, double *v, int n);
void rn_dist_barrier(const rn_dist *d);
/* n floats from every rank to rank 0 (rank-major), and back. */
void rn_dist_gather_floats(const rn_dist *d, const float *src, size_t n, float *dst_root);
void rn_dist_scatter_floats(const rn_dist *d, const float *src_root, size_t n, float *dst);
void rn_dist_bcast_bytes(const rn_dist *d, void *buf, size_t n, int root);

/* ---- bucketed gradient allreduce ---- */
typedef struct rn_allreducer rn_allreducer;
/* Buckets of bucket_bytes over grad[0, n) taken from the END of the array (backward finishes the
 * last parameters first). overlap: 0 = all allreduces after backward (for comparison);
 * 1 = each bucket's MPI_Iallreduce starts as soon as backward has produced it and progress is
 * driven by MPI_Testall between layers (Open MPI has no asynchronous progress here);
 * 2 = the same, started and driven by a communication thread (MPI_THREAD_MULTIPLE). */
rn_allreducer *rn_ar_create(const rn_dist *d, float *grad, size_t n, size_t bucket_bytes, int overlap);
void rn_ar_free(rn_allreducer *a);
int rn_ar_nbuckets(const rn_allreducer *a);
void rn_ar_begin(rn_allreducer *a);
/* Backward's grad-ready callback (rn_grad_ready_fn): starts every bucket that is complete and
 * drives progress of the outstanding ones (Open MPI has no asynchronous progress here). */
void rn_ar_ready(void *a, size_t off, size_t count);
/* Starts what is left, waits for all, divides by the rank count. Returns the seconds spent
 * waiting here (exposed communication). */
double rn_ar_finish(rn_allreducer *a);

#endif
