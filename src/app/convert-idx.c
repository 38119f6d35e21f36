/* rn-convert-idx: MNIST / Fashion-MNIST IDX files (gzipped or not) -> HDF5 shards. */
#include <string.h>

#include "rn/data.h"

static void usage(void) {
  fprintf(stderr,
          "usage: rn-convert-idx [options] OUT_DIR TRAIN_IMAGES TRAIN_LABELS [TEST_IMAGES TEST_LABELS]\n"
          "  writes OUT_DIR/train.manifest (+ test.manifest) and shards train-00000.h5 ...\n"
          "  --per-shard N     images per shard (default 20000)\n"
          "  --classes K       number of classes (default: max label + 1, at least 10)\n"
          "  --names fashion|FILE  class names (FILE: one per line)\n"
          "  --quiet           no progress on stderr\n"
          "mean/std come from the training images and are stored in both splits. Existing output is\n"
          "never overwritten.\n");
}

int main(int argc, char **argv) {
  rn_err e = {0};
  rn_convert_opts o = {0};
  o.per_shard = 20000;
  char **names = NULL;
  int nnames = 0;
  const char *pos[5];
  int npos = 0;
  for (int i = 1; i < argc; i++) {
    long v;
    if (!strcmp(argv[i], "--per-shard") && i + 1 < argc) {
      if (rn_parse_int("option --per-shard", argv[++i], 1, 1L << 30, &v, &e)) goto fail;
      o.per_shard = v;
    } else if (!strcmp(argv[i], "--classes") && i + 1 < argc) {
      if (rn_parse_int("option --classes", argv[++i], 1, 1000000, &v, &e)) goto fail;
      o.classes = (int)v;
    } else if (!strcmp(argv[i], "--names") && i + 1 < argc) {
      i++;
      if (!strcmp(argv[i], "fashion")) {
        names = (char **)rn_fashion_mnist_names;
        nnames = 10;
      } else if (rn_data_read_names(argv[i], &names, &nnames, &e)) {
        goto fail;
      }
    } else if (!strcmp(argv[i], "--quiet")) {
      o.quiet = 1;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage();
      return 0;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      rn_err_set(&e, RN_EINVAL, "unknown option '%s'", argv[i]);
      usage();
      goto fail;
    } else if (npos < 5) {
      pos[npos++] = argv[i];
    } else {
      rn_err_set(&e, RN_EINVAL, "too many arguments ('%s')", argv[i]);
      goto fail;
    }
  }
  if (npos != 3 && npos != 5) {
    usage();
    return 2;
  }
  if (names) {
    if (!o.classes) o.classes = nnames;
    if (nnames != o.classes) {
      rn_err_set(&e, RN_EINVAL, "option --names: %d names but %d classes", nnames, o.classes);
      goto fail;
    }
    o.class_names = (const char *const *)names;
  }
  o.out_dir = pos[0];
  float mean[4], std[4];
  if (rn_convert_idx(&o, "train", pos[1], pos[2], NULL, NULL, mean, std, &e)) goto fail;
  if (npos == 5 && rn_convert_idx(&o, "test", pos[3], pos[4], mean, std, NULL, NULL, &e)) goto fail;
  if (!o.quiet) fprintf(stderr, "rn-convert-idx: done: %s (mean %.4f std %.4f, 0..1 units)\n", o.out_dir, mean[0], std[0]);
  return 0;
fail:
  fprintf(stderr, "rn-convert-idx: error: %s\n", e.msg);
  return 1;
}
