/* Sampler: the global order of an epoch and which positions each rank reads. Pure functions. */
#include "rn/data.h"

void rn_sampler_epoch_order(uint64_t seed, int epoch, int64_t n, int64_t *perm) {
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  rn_rng r = rn_rng_make(rn_key(seed, 1, (uint64_t)epoch, 0));
  for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
    int64_t j = (int64_t)rn_rng_below(&r, (uint64_t)i + 1);
    int64_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

int64_t rn_sampler_train_steps(int64_t n, int local_batch, int nranks) {
  int64_t g = (int64_t)local_batch * nranks;
  return g > 0 ? n / g : 0;
}

int64_t rn_sampler_train_first(int64_t offset, int local_batch, int rank, int nranks, int64_t step) {
  int64_t g = (int64_t)local_batch * nranks;
  return offset + step * g + (int64_t)rank * local_batch;
}

void rn_sampler_eval_slice(int64_t n, int rank, int nranks, int64_t *lo, int64_t *hi) {
  int64_t q = n / nranks, r = n % nranks;
  *lo = rank * q + (rank < r ? rank : r);
  *hi = *lo + q + (rank < r ? 1 : 0);
}
