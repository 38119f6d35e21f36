/* Training configuration: every option is a key with a type, a default and a help line. Values
 * come from a preset, then an optional key=value file (--config), then the command line
 * (--key value or --key=value). Unknown keys and bad values are errors naming key and value. */
#ifndef RN_CONFIG_H
#define RN_CONFIG_H
#include "rn/core.h"

/* X(key, C field, type, default, help); types: S string, I integer, F float, B boolean (0/1,
 * on/off, true/false, yes/no). */
#define RN_CONFIG_KEYS(X)                                                                              \
  X("preset", preset, S, "fashion-mnist", "named recipe applied first (see --list-presets)")           \
  X("model", model, S, "cifar-resnet20", "architecture: resnet18..152, cifar-resnet<6n+2>, plain twins") \
  X("shortcut", shortcut, S, "auto", "shortcut option: A, B, C or auto (A for CIFAR, B for ImageNet)")  \
  X("preact", preact, B, "0", "pre-activation blocks (He et al. 2016)")                                \
  X("stride-in-1x1", stride_in_1x1, B, "0", "bottleneck stride on the first 1x1 (paper) not the 3x3")    \
  X("sd-pl", sd_pl, F, "1", "stochastic depth: survival probability of the last block (1 = off)")      \
  X("zero-init-residual", zero_init_residual, B, "0", "last BN gamma of each residual branch = 0")      \
  X("width", width, I, "0", "first-stage width (0 = standard: 16 CIFAR, 64 ImageNet); small for tests") \
  X("bn-eval", bn_eval, B, "0", "BN uses running statistics also in training (equivalence tests)")     \
  X("sync-bn", sync_bn, B, "0", "synchronised BN: batch statistics over the global batch (all ranks)")  \
  X("recompute", recompute, B, "1", "recompute BN/add/ReLU outputs in backward where it lowers peak memory (same results)") \
  X("recompute-mb", recompute_mb, F, "0", "with recompute: MB per rank the activations may grow to replay less, costliest replays kept first") \
  X("data", data, S, "datasets/fashion-mnist", "data set directory (HDF5 shards)")                    \
  X("train-split", train_split, S, "train", "training split name")                                     \
  X("val-split", val_split, S, "test", "validation split name (empty: no validation)")                 \
  X("aug", aug, S, "cifar", "training augmentation: none, cifar, imagenet-paper, imagenet-torch")     \
  X("eval-aug", eval_aug, S, "none", "validation preprocessing: none, center, 10crop")                  \
  X("crop", crop, I, "0", "training/validation crop size (0 = the data's image size)")                 \
  X("batch", batch, I, "128", "global batch size (split evenly across ranks)")                        \
  X("threads", threads, I, "0", "threads per rank (0: SLURM_CPUS_PER_TASK, OMP_NUM_THREADS, or cores/ranks)") \
  X("seed", seed, I, "1", "seed of initialisation, data order, augmentation, stochastic depth")         \
  X("epochs", epochs, F, "2", "training length in epochs (ignored when steps > 0)")                    \
  X("steps", steps, I, "0", "training length in optimiser steps (0: use epochs)")                      \
  X("lr", lr, F, "0.1", "base learning rate (at lr-ref-batch when linear scaling is on)")               \
  X("lr-ref-batch", lr_ref_batch, I, "0", "linear scaling rule reference batch (0 = off, 256 = Goyal)") \
  X("schedule", schedule, S, "step-epoch", "step-iter, step-epoch or cosine")                          \
  X("milestones", milestones, S, "", "comma-separated iterations (step-iter) or epochs (step-epoch)")    \
  X("gamma", gamma, F, "0.1", "LR factor at each milestone")                                          \
  X("warmup-epochs", warmup_epochs, F, "0", "linear LR warm-up length in epochs")                      \
  X("warmup-from", warmup_from, F, "0.1", "warm-up starts at this fraction of the target LR")          \
  X("const-warmup-lr", const_warmup_lr, F, "0", "constant warm-up LR (ResNet-110: 0.01), 0 = off")      \
  X("const-warmup-until", const_warmup_until, F, "0.8", "end constant warm-up once training error < this") \
  X("momentum", momentum, F, "0.9", "SGD momentum")                                                    \
  X("wd", wd, F, "0.0001", "weight decay")                                                             \
  X("wd-exempt-bn-bias", wd_exempt, B, "0", "no weight decay on BN parameters and biases")             \
  X("label-smoothing", label_smoothing, F, "0", "label smoothing of the cross-entropy")                \
  X("out", out, S, "checkpoints/default", "output directory: checkpoints and metrics.jsonl")          \
  X("resume", resume, S, "auto", "auto (newest valid checkpoint in --out), none, or a checkpoint path") \
  X("ckpt-every-steps", ckpt_every_steps, I, "0", "checkpoint every N steps (0 = off)")                \
  X("ckpt-every-minutes", ckpt_every_minutes, F, "10", "checkpoint every M minutes (0 = off)")         \
  X("keep", keep, I, "3", "checkpoints kept (plus the best)")                                          \
  X("log-every", log_every, I, "20", "metrics line every N steps")                                     \
  X("eval-every", eval_every, I, "1", "validate every N epochs (0 = only at the end)")                  \
  X("bucket-mb", bucket_mb, F, "25", "gradient allreduce bucket size in MB")                           \
  X("overlap", overlap, B, "1", "overlap gradient allreduce with backward")                           \
  X("comm-thread", comm_thread, B, "0", "drive the overlapped allreduce from a communication thread instead of MPI_Test between layers") \
  X("check-replicas-every", check_replicas_every, I, "0", "compare parameter checksums across ranks every N steps") \
  X("blis-arch", blis_arch, S, "auto", "BLIS kernel set: auto, skx, haswell, zen3, zen2, zen, generic") \
  X("progress", progress, S, "auto", "progress display: bar, lines, or auto (bar on a terminal outside mpirun)")

typedef struct {
#define RN_CFG_FIELD_S(f) char f[256];
#define RN_CFG_FIELD_I(f) long f;
#define RN_CFG_FIELD_F(f) double f;
#define RN_CFG_FIELD_B(f) int f;
#define RN_CFG_X(k, f, t, d, h) RN_CFG_FIELD_##t(f)
  RN_CONFIG_KEYS(RN_CFG_X)
#undef RN_CFG_X
} rn_config;

/* Defaults, then the preset named on the command line (or the default preset), then --config
 * FILE, then the other command-line options. argv[0] is skipped. */
rn_status rn_config_from_args(rn_config *c, int argc, char **argv, rn_err *e);
rn_status rn_config_set(rn_config *c, const char *key, const char *value, const char *origin, rn_err *e);
rn_status rn_config_apply_preset(rn_config *c, const char *name, rn_err *e);
/* Resolved configuration as key=value lines (malloc'd). */
char *rn_config_text(const rn_config *c);
void rn_config_help(FILE *f);
void rn_config_list_presets(FILE *f);

#endif
