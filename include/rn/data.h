/* data: HDF5 image shards (reader + writer), the deterministic sampler, augmentation and the
 * background prefetching loader. Shard format: datasets/README.md.
 *
 * Threading: Debian's parallel HDF5 is not thread-safe. Every HDF5 call in this module is made
 * while holding rn_h5_lock() (core.h); other modules that call HDF5 (checkpoints) must take it too when a
 * loader may be running. Decoding and augmentation run outside the lock. */
#ifndef RN_DATA_H
#define RN_DATA_H
#include <stdint.h>

#include "rn/core.h"

/* ---- global HDF5 lock: rn_h5_lock()/rn_h5_unlock() are declared in core.h (recursive mutex) ---- */

/* ---- shard metadata ---- */
#define RN_DATA_FORMAT_VERSION 1
#define RN_DATA_MAX_CHANNELS 4
typedef enum { RN_ENC_RAW = 0, RN_ENC_JPEG = 1 } rn_encoding;

typedef struct {
  int height, width;  /* raw: every image is height x width; jpeg: 0 (images vary in size) */
  int channels;       /* 1 (grey) or 3 (RGB) */
  int classes;        /* labels lie in [0, classes) */
  rn_encoding encoding;
  float mean[RN_DATA_MAX_CHANNELS], std[RN_DATA_MAX_CHANNELS]; /* training split, 0..1 units */
  int max_height, max_width; /* jpeg: largest decoded image; raw: = height, width */
  int64_t max_bytes;         /* jpeg: largest encoded image in bytes; raw: H*W*C */
} rn_shard_meta;

/* ---- dataset (one split: a manifest listing shard files) ---- */
typedef struct rn_shard rn_shard; /* internal: one open shard file */
typedef struct {
  char manifest[1024]; /* path of the manifest */
  int64_t n;           /* total samples over all shards */
  rn_shard_meta meta;  /* identical in every shard (verified) */
  char **class_names;  /* meta.classes strings (may be "" when a converter knew no names) */
  int nshards;
  rn_shard *shards;
  int64_t *shard_start; /* [nshards+1] global index of each shard's first sample */
} rn_dataset;

/* Opens a split. If split is non-NULL, path is a directory and the manifest is
 * <path>/<split>.manifest; if split is NULL, path is the manifest itself. Every shard is opened
 * and verified (attributes present and equal across shards, dtypes, ranks and shapes, N > 0,
 * all labels in [0, classes)). Errors name the file, the field and the value. */
rn_status rn_dataset_open(rn_dataset *d, const char *path, const char *split, rn_err *e);
void rn_dataset_close(rn_dataset *d); /* safe on a zeroed or failed-open dataset */

/* A decoded image buffer (and decoder) sized for a dataset's largest image. */
typedef struct {
  uint8_t *pix;  /* [h][w][c] */
  int h, w, c;
  size_t cap;    /* bytes of pix */
  uint8_t *jbuf; /* encoded bytes (jpeg shards) */
  size_t jcap;
  void *tj;      /* TurboJPEG decompressor (jpeg shards) */
} rn_image;
rn_status rn_image_init(rn_image *im, const rn_dataset *d, rn_err *e);
void rn_image_free(rn_image *im);
/* Reads (and for jpeg decodes) sample `index` in [0, n) into im; *label gets its label. A corrupt
 * JPEG is an RN_EFORMAT error naming the shard file and the sample index. Thread-safe. */
rn_status rn_dataset_read(rn_dataset *d, int64_t index, rn_image *im, int32_t *label, rn_err *e);

/* ---- shard writer (used by the converters) ---- */
typedef struct rn_shardw rn_shardw;
/* Creates shards <dir>/<split>-00000.h5 ... holding `total` samples, at most per_shard each.
 * class_names may be NULL. Refuses (RN_EIO) to overwrite an existing manifest or shard. */
rn_status rn_shardw_open(rn_shardw **w, const char *dir, const char *split, const rn_shard_meta *meta,
                         const char *const *class_names, int64_t total, int64_t per_shard, rn_err *e);
/* Appends one sample: raw: nbytes == H*W*C pixels; jpeg: the encoded bytes. */
rn_status rn_shardw_add(rn_shardw *w, const uint8_t *data, size_t nbytes, int32_t label, rn_err *e);
/* Writes the final mean/std (0..1 units; max_* for jpeg) into every shard, then the manifest
 * <dir>/<split>.manifest (written last, via a temp file + rename), and frees w. */
rn_status rn_shardw_finish(rn_shardw *w, const float *mean, const float *std, int max_h, int max_w,
                           int64_t max_bytes, rn_err *e);
/* Abandons a writer: closes and deletes the shards written so far, frees w. */
void rn_shardw_abort(rn_shardw *w);

/* Per-channel pixel statistics accumulator (values 0..255 in, 0..1 units out). */
typedef struct {
  double sum[RN_DATA_MAX_CHANNELS], sumsq[RN_DATA_MAX_CHANNELS];
  uint64_t count; /* pixels per channel */
} rn_pixstats;
void rn_pixstats_add(rn_pixstats *s, const uint8_t *pix, size_t npix, int c);
void rn_pixstats_merge(rn_pixstats *into, const rn_pixstats *from);
void rn_pixstats_result(const rn_pixstats *s, int c, float *mean, float *std); /* population std */

/* ---- converters (the rn-convert-* programs are thin wrappers) ---- */
/* IDX (MNIST / Fashion-MNIST), gzipped or not: images u8 (N,H,W) and labels u8 (N). Writes split
 * `split` into out_dir. If mean/std are NULL the statistics of these images are used and
 * returned through stats_out (may be NULL). */
typedef struct {
  const char *out_dir;
  int64_t per_shard;     /* images per shard (>0) */
  int classes;           /* 0: max label + 1 (at least 10) */
  const char *const *class_names; /* NULL or `classes` names */
  int quiet;             /* no progress on stderr */
} rn_convert_opts;
rn_status rn_convert_idx(const rn_convert_opts *o, const char *split, const char *images_path,
                         const char *labels_path, const float *mean, const float *std,
                         float *mean_out, float *std_out, rn_err *e);
/* CIFAR binary batches: cifar100 = 0: records <1 label><3072 CHW pixels>; cifar100 = 1:
 * <coarse><fine><3072> (the fine label is used). Several files form one split. */
rn_status rn_convert_cifar(const rn_convert_opts *o, const char *split, int cifar100, const char *const *files,
                           int nfiles, const float *mean, const float *std, float *mean_out,
                           float *std_out, rn_err *e);
/* JPEG tree. train: <root>/<class>/<*.JPEG|*.jpg|*.jpeg> with classes sorted by name. val: a
 * directory of images plus a labels file with lines "<file name> <class index or class name>".
 * resize: shorter side (raw: then centre crop to resize x resize); keep_jpeg: store the original
 * bytes. threads: decoder threads. The class list of a val split comes from `class_dirs`
 * (the train split's class names). */
typedef struct {
  int resize;    /* default 256 */
  int keep_jpeg; /* 1: encoding "jpeg" */
  int threads;   /* >= 1 */
} rn_jpeg_opts;
rn_status rn_convert_jpeg(const rn_convert_opts *o, const rn_jpeg_opts *j, const char *split,
                          const char *root, const char *val_labels, char ***class_names_io,
                          int *nclasses_io, const float *mean, const float *std, float *mean_out,
                          float *std_out, rn_err *e);
/* Reads a text file of names, one per line (blank lines skipped). Caller frees each and *names. */
rn_status rn_data_read_names(const char *path, char ***names, int *n, rn_err *e);
/* Fashion-MNIST's ten class names. */
extern const char *const rn_fashion_mnist_names[10];
/* Reads an IDX file (gz or plain) fully: dims[0..rank), data u8. Caller frees *data. */
rn_status rn_idx_read(const char *path, int *rank, int64_t dims[4], uint8_t **data, rn_err *e);

/* ---- sampler (pure functions, no MPI) ---- */
/* Global order of an epoch: a permutation of [0,n) that depends on (seed, epoch) only
 * (Fisher-Yates driven by rn_key(seed, 1, epoch, 0)). */
void rn_sampler_epoch_order(uint64_t seed, int epoch, int64_t n, int64_t *perm);
/* Training: steps per epoch = floor(n / (local_batch*nranks)); the n mod G samples left over are
 * dropped (a different set every epoch because the order is reshuffled). */
int64_t rn_sampler_train_steps(int64_t n, int local_batch, int nranks);
/* Training: positions (indices into the epoch order) read by `rank` at step `step` of an epoch
 * (re)started at global position `offset`: [offset + step*G + rank*B, ... + B). Returns first. */
int64_t rn_sampler_train_first(int64_t offset, int local_batch, int rank, int nranks, int64_t step);
/* Evaluation (no shuffle, every sample once): rank's contiguous balanced slice [*lo, *hi) of
 * [0,n); the rank reads it in batches of local_batch, the last one possibly smaller. */
void rn_sampler_eval_slice(int64_t n, int rank, int nranks, int64_t *lo, int64_t *hi);
/* Key of the augmentation randomness of sample `index` (a dataset index) in `epoch`. */
static inline uint64_t rn_sampler_aug_key(uint64_t seed, int epoch, int64_t index) {
  return rn_key(seed, 2, (uint64_t)epoch, (uint64_t)index);
}

/* ---- augmentation ---- */
typedef enum {
  RN_AUG_NONE,           /* resize to out size if needed, normalise */
  RN_AUG_CIFAR,          /* zero-pad 4, random out_h x out_w crop, horizontal flip */
  RN_AUG_IMAGENET_PAPER, /* shorter side U{256..480}, random crop, flip, PCA colour noise 0.1 */
  RN_AUG_IMAGENET_TORCH, /* random-resized crop scale (0.08,1) ratio (3/4,4/3), flip */
  RN_AUG_EVAL_CENTER,    /* resize shorter side, centre crop */
  RN_AUG_EVAL_10CROP     /* resize shorter side; 4 corners + centre, then their flips: 10 images */
} rn_aug;
/* Names: none, cifar, imagenet-paper, imagenet-torch, center, 10crop. */
rn_status rn_aug_parse(const char *name, rn_aug *out, rn_err *e);
const char *rn_aug_name(rn_aug a);
int rn_aug_outputs(rn_aug a); /* images produced per sample: 10 for 10crop, else 1 */
/* Shorter-side target of the eval augmentations for a source image of min side `minside`:
 * eval_resize if > 0; else round(max(out_h,out_w)*256/224) if minside is larger than the crop,
 * else no resize (returns minside). */
int rn_aug_eval_size(int eval_resize, int out_h, int out_w, int minside);
/* Augments one image (h,w,c u8) into rn_aug_outputs(aug) images of out_h x out_w x c float,
 * normalised as (x/255 + colour noise - mean)/std. key: rn_sampler_aug_key (ignored by eval). */
void rn_augment(const uint8_t *src, int h, int w, int c, rn_aug aug, uint64_t key, int out_h, int out_w,
                int eval_resize, const float *mean, const float *std, float *out);

/* ---- loader (sampler + reads + augmentation, prefetched by background threads) ---- */
typedef struct {
  int local_batch;    /* B, samples per rank per step (> 0) */
  int rank, nranks;
  uint64_t seed;
  rn_aug aug;
  int out_h, out_w;   /* output crop; 0 = the dataset's image size */
  int train;          /* 1: shuffled global order, drop remainder; 0: eval slice */
  int prefetch_depth; /* batch buffers in the ring (>= 1; 0 -> 2) */
  int workers;        /* prefetch threads; 0 = synchronous (read in rn_loader_next) */
  int eval_resize;    /* see rn_aug_eval_size; 0 = auto */
} rn_loader_config;
typedef struct rn_loader rn_loader;
/* Validates the config against the dataset (local_batch > 0, G = B*nranks <= n for training,
 * rank in [0,nranks), ...), allocates every buffer and starts the threads. d must outlive L. */
rn_status rn_loader_open(rn_loader **L, rn_dataset *d, const rn_loader_config *c, rn_err *e);
/* Starts (or restarts) an epoch at global position global_offset (training: in [0, n], normally
 * the number of samples the interrupted run consumed = steps done x the global batch of that run;
 * the rest of the epoch continues the same global order in steps of the current G, even if G
 * changed; evaluation: must be 0). Abandons any batches of the previous epoch still in flight. */
rn_status rn_loader_start_epoch(rn_loader *L, int epoch, int64_t global_offset, rn_err *e);
/* Training: floor(n/G) (full epoch); evaluation: ceil(slice/B) for this rank. */
int64_t rn_loader_steps_per_epoch(const rn_loader *L);
/* Steps of the current epoch not yet handed out by rn_loader_next. */
int64_t rn_loader_steps_left(const rn_loader *L);
/* Maximum images per batch (B, or 10*B for 10crop): size images as [cap][out_h][out_w][c] and
 * labels as [cap]. */
int rn_loader_batch_capacity(const rn_loader *L);
void rn_loader_out_shape(const rn_loader *L, int *h, int *w, int *c);
/* Copies the next batch out: *n images (10crop: 10 per sample, sample-major), labels per image.
 * RN_OK with *n == 0 at the end of the epoch. A read/decode error is returned here. */
rn_status rn_loader_next(rn_loader *L, float *images, int32_t *labels, int *n, rn_err *e);
/* Dataset sample indices of the last batch returned (NULL before the first; count = samples). */
const int64_t *rn_loader_last_indices(const rn_loader *L, int *count);
double rn_loader_wait_seconds(const rn_loader *L); /* cumulative time rn_loader_next waited */
void rn_loader_close(rn_loader *L); /* stops threads (also mid-epoch) and frees; NULL ok */

#endif
