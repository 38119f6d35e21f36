/* Distributed sampler coverage through the real loader, one process per rank (mpirun -n P).
 * Rank 0 writes a small raw data set (N = 103 samples in 3 shards, label = index % 10) with the
 * shard writer; every rank opens it with rn_loader and records rn_loader_last_indices over an
 * epoch; rank 0 gathers everything (MPI_Gatherv) and checks:
 * - evaluation (train = 0): every sample exactly once over all ranks, each rank exactly its
 *   rn_sampler_eval_slice, labels match the indices;
 * - training (train = 1, global batch G = B*P): rank r's batch at step s is exactly
 *   order[offset + s*G + r*B ...] of rn_sampler_epoch_order, so the union over ranks is the first
 *   steps*G positions of the global order, each sample at most once, for two epochs and for an
 *   epoch restarted at a non-zero position (resume). */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "rn/data.h"
#include "testutil.h"

#define N 103
#define HW 4

static int rank, nranks;

static void write_data(const char *dir) {
  rn_err e = {0};
  rn_shard_meta m;
  memset(&m, 0, sizeof m);
  m.height = m.width = HW;
  m.channels = 1;
  m.classes = 10;
  m.encoding = RN_ENC_RAW;
  m.max_height = m.max_width = HW;
  m.max_bytes = HW * HW;
  rn_shardw *w = NULL;
  rn_status st = rn_shardw_open(&w, dir, "train", &m, NULL, N, 40, &e);
  CHECK(st == RN_OK, "rn_shardw_open: %s", e.msg);
  if (st) return;
  for (int i = 0; i < N; i++) {
    uint8_t px[HW * HW];
    for (int k = 0; k < HW * HW; k++) px[k] = (uint8_t)(i + k);
    st = rn_shardw_add(w, px, sizeof px, i % 10, &e);
    CHECK(st == RN_OK, "rn_shardw_add %d: %s", i, e.msg);
    if (st) {
      rn_shardw_abort(w);
      return;
    }
  }
  float mean[1] = {0.5f}, sd[1] = {0.25f};
  st = rn_shardw_finish(w, mean, sd, HW, HW, HW * HW, &e);
  CHECK(st == RN_OK, "rn_shardw_finish: %s", e.msg);
}

/* Runs one epoch (from offset) on this rank; returns malloc'd indices in read order, *cnt. */
static int64_t *run_epoch(rn_dataset *d, int train, int B, int epoch, int64_t offset, int *cnt, int64_t *steps_out) {
  rn_err e = {0};
  rn_loader_config c = {.local_batch = B, .rank = rank, .nranks = nranks, .seed = 1234, .aug = RN_AUG_NONE,
                        .out_h = HW, .out_w = HW, .train = train, .prefetch_depth = 2, .workers = 1};
  rn_loader *L = NULL;
  *cnt = 0;
  *steps_out = 0;
  rn_status st = rn_loader_open(&L, d, &c, &e);
  CHECK(st == RN_OK, "rank %d: rn_loader_open(train=%d): %s", rank, train, e.msg);
  if (st) return calloc(1, sizeof(int64_t));
  st = rn_loader_start_epoch(L, epoch, offset, &e);
  CHECK(st == RN_OK, "rank %d: start_epoch(%d, %lld): %s", rank, epoch, (long long)offset, e.msg);
  int cap = rn_loader_batch_capacity(L);
  float *img = malloc(sizeof(float) * (size_t)cap * HW * HW);
  int32_t *lab = malloc(sizeof(int32_t) * (size_t)cap);
  int64_t *out = malloc(sizeof(int64_t) * (N + 1));
  int64_t steps = 0;
  while (st == RN_OK) {
    if (train && rn_loader_steps_left(L) == 0) break;
    int n = 0;
    st = rn_loader_next(L, img, lab, &n, &e);
    CHECK(st == RN_OK, "rank %d: rn_loader_next: %s", rank, e.msg);
    if (st || n == 0) break;
    int k = 0;
    const int64_t *idx = rn_loader_last_indices(L, &k);
    CHECK(idx != NULL && k == n, "rank %d: last_indices count %d for a batch of %d", rank, k, n);
    if (!idx) break;
    if (train) CHECK(n == B, "rank %d: training batch of %d, expected %d", rank, n, B);
    for (int j = 0; j < k && *cnt < N; j++) {
      CHECK(lab[j] == idx[j] % 10, "rank %d: label %d for sample %lld", rank, lab[j], (long long)idx[j]);
      out[(*cnt)++] = idx[j];
    }
    steps++;
    CHECK(steps <= N, "rank %d: epoch does not end", rank);
    if (steps > N) break;
  }
  *steps_out = steps;
  free(img);
  free(lab);
  rn_loader_close(L);
  return out;
}

/* Gathers every rank's indices on rank 0: all[r*N + i], counts[r]. */
static void gather(const int64_t *mine, int cnt, int64_t *all, int *counts) {
  int displs[64];
  MPI_Gather(&cnt, 1, MPI_INT, counts, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (rank == 0)
    for (int r = 0; r < nranks; r++) displs[r] = r * N;
  MPI_Gatherv(mine, cnt, MPI_INT64_T, all, counts, displs, MPI_INT64_T, 0, MPI_COMM_WORLD);
}

static void check_eval(rn_dataset *d, int B) {
  int cnt;
  int64_t steps;
  int64_t *mine = run_epoch(d, 0, B, 0, 0, &cnt, &steps);
  int64_t *all = malloc(sizeof(int64_t) * N * (size_t)nranks);
  int counts[64];
  gather(mine, cnt, all, counts);
  if (rank == 0) {
    int seen[N] = {0};
    int bad = 0, total = 0;
    for (int r = 0; r < nranks; r++) {
      int64_t lo, hi;
      rn_sampler_eval_slice(N, r, nranks, &lo, &hi);
      CHECK(counts[r] == hi - lo, "eval P=%d B=%d: rank %d read %d samples, slice [%lld,%lld)", nranks, B, r,
            counts[r], (long long)lo, (long long)hi);
      for (int i = 0; i < counts[r]; i++) {
        int64_t x = all[r * N + i];
        if (x < 0 || x >= N) {
          bad++;
          continue;
        }
        seen[x]++;
        total++;
        if (x != lo + i) bad++;
      }
    }
    int notonce = 0;
    for (int i = 0; i < N; i++) notonce += seen[i] != 1;
    CHECK(total == N && notonce == 0, "eval P=%d B=%d: %d samples read, %d not exactly once", nranks, B, total,
          notonce);
    CHECK(bad == 0, "eval P=%d B=%d: %d samples out of range or out of slice order", nranks, B, bad);
  }
  free(mine);
  free(all);
}

static void check_train(rn_dataset *d, int B, int epoch, int64_t offset) {
  int cnt;
  int64_t steps;
  int64_t *mine = run_epoch(d, 1, B, epoch, offset, &cnt, &steps);
  int64_t *all = malloc(sizeof(int64_t) * N * (size_t)nranks);
  int counts[64];
  gather(mine, cnt, all, counts);
  if (rank == 0) {
    int64_t G = (int64_t)B * nranks;
    int64_t expect_steps = (N - offset) / G;
    int64_t *order = malloc(sizeof(int64_t) * N);
    rn_sampler_epoch_order(1234, epoch, N, order);
    int seen[N] = {0};
    int wrong = 0, dup = 0;
    for (int r = 0; r < nranks; r++) {
      CHECK(counts[r] == expect_steps * B, "train P=%d B=%d epoch %d offset %lld: rank %d read %d samples, expected %lld",
            nranks, B, epoch, (long long)offset, r, counts[r], (long long)(expect_steps * B));
      for (int i = 0; i < counts[r]; i++) {
        int64_t s = i / B, k = i % B;
        int64_t pos = rn_sampler_train_first(offset, B, r, nranks, s) + k;
        int64_t x = all[r * N + i];
        if (pos != offset + s * G + r * B + k || pos >= N || order[pos] != x) wrong++;
        if (x >= 0 && x < N && seen[x]++) dup++;
      }
    }
    /* union over ranks == the global order's positions [offset, offset + steps*G) */
    int miss = 0;
    for (int64_t p = offset; p < offset + expect_steps * G; p++) miss += seen[order[p]] != 1;
    CHECK(wrong == 0, "train P=%d B=%d epoch %d offset %lld: %d samples not at their global-order position",
          nranks, B, epoch, (long long)offset, wrong);
    CHECK(dup == 0 && miss == 0, "train P=%d B=%d epoch %d offset %lld: %d duplicates, %d positions missed", nranks, B,
          epoch, (long long)offset, dup, miss);
    free(order);
  }
  free(mine);
  free(all);
}

int main(int argc, char **argv) {
  int prov;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  if (nranks > 64) MPI_Abort(MPI_COMM_WORLD, 2);
  char dir[512] = "";
  if (rank == 0) {
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("mpi-sampler"));
    write_data(dir);
  }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  int fails = tu_fail;
  MPI_Bcast(&fails, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (fails) MPI_Abort(MPI_COMM_WORLD, 1);

  rn_dataset d;
  memset(&d, 0, sizeof d);
  rn_err e = {0};
  rn_status st = rn_dataset_open(&d, dir, "train", &e);
  CHECK(st == RN_OK, "rank %d: rn_dataset_open %s: %s", rank, dir, e.msg);
  int ok = st == RN_OK, all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all_ok) {
    CHECK(d.n == N, "dataset has %lld samples", (long long)d.n);
    for (int B = 1; B <= 7; B += 3) check_eval(&d, B); /* B = 1, 4, 7 */
    check_train(&d, 4, 0, 0);
    check_train(&d, 4, 1, 0);
    check_train(&d, 3, 2, 0);
    check_train(&d, 4, 1, 48); /* resume inside an epoch (48: a multiple of G = 4P for P = 1..4) */
    rn_dataset_close(&d);
  }
  /* Every rank's failures count: sum them on rank 0. */
  int f = tu_fail, ftot = 0;
  MPI_Reduce(&f, &ftot, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  int rc = 0;
  if (rank == 0) {
    tu_fail = ftot;
    printf("P=%d: ", nranks);
    rc = tu_done("test_mpi_sampler");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (getenv("RN_KEEP_TMP")) printf("kept %s\n", dir);
    else if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  }
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return rc;
}
