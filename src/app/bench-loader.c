/* rn-bench-loader: how fast one loader (one prefetch thread: read, decode, augment) produces
 * training batches from a data set, to compare with the training speed it has to keep up with. */
#include <stdlib.h>
#include <string.h>

#include "rn/data.h"

int main(int argc, char **argv) {
  const char *data = NULL, *split = "train", *aug = "cifar";
  long batch = 128, steps = 50, crop = 0, workers = 1;
  rn_err e = {0};
  rn_status st = RN_OK;
  for (int i = 1; i < argc && !st; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      printf("usage: rn-bench-loader --data DIR [--split train] [--aug cifar|imagenet-paper|imagenet-torch|none]\n"
             "                       [--crop N] [--batch N] [--steps N] [--workers N]\n"
             "Images/s of the prefetching loader (default one worker thread) on a real data set, the\n"
             "time the consumer waited, and the time per batch; compare with rn-bench's images/s.\n");
      return 0;
    }
    if (!v) {
      st = rn_err_set(&e, RN_EINVAL, "option %s needs a value", a);
      break;
    }
    i++;
    if (!strcmp(a, "--data")) data = v;
    else if (!strcmp(a, "--split")) split = v;
    else if (!strcmp(a, "--aug")) aug = v;
    else if (!strcmp(a, "--crop")) st = rn_parse_int("option crop", v, 0, 100000, &crop, &e);
    else if (!strcmp(a, "--batch")) st = rn_parse_int("option batch", v, 1, 100000, &batch, &e);
    else if (!strcmp(a, "--steps")) st = rn_parse_int("option steps", v, 1, 1000000, &steps, &e);
    else if (!strcmp(a, "--workers")) st = rn_parse_int("option workers", v, 0, 64, &workers, &e);
    else st = rn_err_set(&e, RN_EINVAL, "unknown option '%s' (see --help)", a);
  }
  if (!st && !data) st = rn_err_set(&e, RN_EINVAL, "--data DIR is required");
  rn_dataset ds;
  memset(&ds, 0, sizeof ds);
  rn_aug a = RN_AUG_NONE;
  if (!st) st = rn_aug_parse(aug, &a, &e);
  if (!st) st = rn_dataset_open(&ds, data, split, &e);
  rn_loader *L = NULL;
  if (!st) {
    rn_loader_config c = {.local_batch = (int)batch, .rank = 0, .nranks = 1, .seed = 1, .aug = a,
                          .out_h = (int)crop, .out_w = (int)crop, .train = 1, .prefetch_depth = 3,
                          .workers = (int)workers};
    st = rn_loader_open(&L, &ds, &c, &e);
  }
  if (st) {
    fprintf(stderr, "rn-bench-loader: error: %s\n", e.msg);
    rn_dataset_close(&ds);
    return 2;
  }
  int h, w, ch;
  rn_loader_out_shape(L, &h, &w, &ch);
  float *img = rn_alloc(sizeof(float) * (size_t)rn_loader_batch_capacity(L) * h * w * ch);
  int32_t *lab = rn_alloc(sizeof(int32_t) * (size_t)rn_loader_batch_capacity(L));
  long done = 0, images = 0;
  int epoch = 0;
  double t0 = rn_now();
  while (!st && done < steps) {
    st = rn_loader_start_epoch(L, epoch++, 0, &e);
    int n = 1;
    while (!st && done < steps) {
      st = rn_loader_next(L, img, lab, &n, &e);
      if (st || n == 0) break;
      images += n;
      done++;
    }
  }
  double t = rn_now() - t0;
  if (st) fprintf(stderr, "rn-bench-loader: error: %s\n", e.msg);
  else
    printf("loader %s/%s (%s, %s), %ld worker(s): %ld batches of %ld at %dx%dx%d in %.2f s = %.0f images/s "
           "(%.1f ms per batch; consumer waited %.2f s)\n",
           data, split, ds.meta.encoding == RN_ENC_JPEG ? "jpeg" : "raw", aug, workers, done, batch, h, w, ch, t,
           images / t, 1e3 * t / (double)done, rn_loader_wait_seconds(L));
  rn_loader_close(L);
  rn_dataset_close(&ds);
  rn_free(img), rn_free(lab);
  return st ? 1 : 0;
}
