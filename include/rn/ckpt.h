/* ckpt: the only code that writes or reads checkpoints (HDF5, format in docs/CHECKPOINTS.md).
 *
 * Checkpoints are written by rank 0 only, with the default (sec2, non-MPI) file access property
 * list. Every HDF5 call is made while holding rn_h5_lock() (the data loader's threads use HDF5
 * concurrently); the lock is released between datasets and around fsync/rename.
 *
 * Guarantees (see docs/CHECKPOINTS.md):
 * - A checkpoint file dir/ckpt-<step %08d>.h5 appears only complete: it is written to a temporary
 *   file dir/.ckpt-XXXXXX.tmp, flushed, closed, fsync'ed, renamed, and the directory fsync'ed.
 * - dir/latest (and dir/best) name a complete checkpoint; they are replaced atomically
 *   (temp + fsync + rename) only after the checkpoint they name is complete.
 * - Older checkpoints are deleted only after the new one and the pointers are complete.
 * - Any failure leaves the previous checkpoints and pointers intact and removes the temp file.
 * - Every dataset carries a CRC32 of its stored bytes; load verifies everything before it touches
 *   the model, so garbage is never loaded.
 */
#ifndef RN_CKPT_H
#define RN_CKPT_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "rn/core.h"
#include "rn/model.h"

#define RN_CKPT_FORMAT_VERSION 1

/* Training state stored with every checkpoint (attributes of /state). */
typedef struct {
  int64_t epoch;        /* epoch in progress (0-based) */
  int64_t step;         /* global optimiser steps done */
  int64_t epoch_offset; /* global sample position in this epoch's order where the next batch starts */
  int64_t samples;      /* total samples consumed */
  int nranks;           /* rank count at save time */
  int global_batch;     /* global batch at save time */
  uint64_t seed;
  double lr;            /* learning rate at save */
  double val_err;       /* validation top-1 error at save, -1 if none */
  double best_val_err;  /* best validation error so far, -1 if none */
  int flags;            /* recipe state bits (RN_CKPT_FLAG_*) */
} rn_ckpt_state;

#define RN_CKPT_FLAG_WARMUP_DONE 1

/* Writes dir/ckpt-<step>.h5 atomically (dir is created if missing), updates dir/latest, updates
 * dir/best when st->val_err >= 0 is lower than the val_err of the checkpoint dir/best names (or
 * there is none), then deletes checkpoints older than this one except the newest `keep`-1 of them
 * and the best (keep <= 0: delete nothing). Stale temp files of a crashed writer are removed first.
 * metrics_text and config_text may be NULL (stored as empty strings).
 * Test-only fault injection: RN_CKPT_FAULT (docs/CHECKPOINTS.md). */
rn_status rn_ckpt_save(const char *dir, const rn_model *m, const rn_ckpt_state *st, const char *config_text,
                       const char *metrics_text, int keep, rn_err *e);

/* Checks a file without a model: HDF5 readable, format version supported, required groups,
 * attributes and datasets present, every momentum buffer matching a parameter of the same shape,
 * every dataset's CRC32. */
rn_status rn_ckpt_verify(const char *path, rn_err *e);

/* Verifies the file against m (model description equal to m->cfg, every parameter and momentum
 * buffer present with the expected shape, no unexpected datasets, checksums) and only then copies
 * parameters (OIHW -> internal layout) into m->param and momentum into m->mom, and fills *st.
 * On any error m and *st are untouched. *config_text (if config_text != NULL) receives a malloc'd
 * copy of the stored configuration text (free()). */
rn_status rn_ckpt_load(const char *path, rn_model *m, rn_ckpt_state *st, char **config_text, rn_err *e);

/* `--resume auto`: path of the newest valid checkpoint in dir. `latest` is tried first; if it is
 * missing or invalid, all ckpt-*.h5 are tried newest (by step) first. Every invalid candidate is
 * reported on `warn` (may be NULL) with the file and the reason. *found = 0 (and RN_OK) when dir
 * is absent/empty or nothing is valid. Errors only for path buffer too small / unreadable dir. */
rn_status rn_ckpt_find_resume(const char *dir, char *path, size_t len, int *found, FILE *warn, rn_err *e);

/* Reads /state only (checks version and the /state attributes; no checksum pass). */
rn_status rn_ckpt_read_state(const char *path, rn_ckpt_state *st, rn_err *e);
/* Reads the model description attributes into c (arch and the fields listed in CHECKPOINTS.md;
 * derived fields depth/bottleneck/cifar/plain are read as stored). */
rn_status rn_ckpt_read_config(const char *path, rn_model_config *c, rn_err *e);
/* Reads a text dataset ("config" or "metrics"), verifying its checksum; *out is malloc'd. */
rn_status rn_ckpt_read_text(const char *path, const char *name, char **out, rn_err *e);

/* Prints a human-readable summary: format, state, model description, every dataset with shape,
 * dtype and checksum status. Returns the verify status. */
rn_status rn_ckpt_info(const char *path, FILE *out, rn_err *e);

/* Compares the datasets under /model (and /optim/momentum unless params_only) of a and b bitwise.
 * *identical = 1 iff both files have the same set of such datasets with the same shapes, dtypes and
 * bytes. Otherwise the first difference (dataset name, shape or max abs diff and count) is printed
 * to out. Errors (unreadable file, bad checksum) return a status. */
rn_status rn_ckpt_diff(const char *a, const char *b, int params_only, FILE *out, int *identical, rn_err *e);

/* Name of the checkpoint file for a step: "ckpt-%08lld.h5". */
void rn_ckpt_filename(int64_t step, char *buf, size_t len);

/* Optional per-rank BN running statistics ([nranks][nbuf] floats, rank-major, in the order of the
 * model's non-trainable parameters) written by the next rn_ckpt_save as /rank_buffers. /model holds
 * their average (what evaluation and torchvision use); a resume on the same rank count restores
 * each rank's own statistics from here, so it continues bit for bit. data must stay valid until
 * the save; NULL turns it off. */
void rn_ckpt_set_rank_buffers(const float *data, int nranks, size_t nbuf);
/* Reads rank `rank`'s row when the file has /rank_buffers of exactly [nranks][nbuf]; *found = 0
 * otherwise (another rank count, or an older file): not an error. Checksum verified. */
rn_status rn_ckpt_read_rank_buffers(const char *path, int rank, int nranks, float *out, size_t nbuf, int *found,
                                    rn_err *e);

#endif
