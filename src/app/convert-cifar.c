/* rn-convert-cifar: CIFAR-10/100 binary batches -> HDF5 shards. */
#include <string.h>

#include "rn/data.h"

static void usage(void) {
  fprintf(stderr,
          "usage: rn-convert-cifar [options] OUT_DIR --train FILE... [--test FILE...]\n"
          "  CIFAR-10: data_batch_1.bin ... / test_batch.bin; CIFAR-100 (--cifar100): train.bin / test.bin\n"
          "  --cifar100        records carry <coarse><fine> labels; the fine label is used\n"
          "  --per-shard N     images per shard (default 25000)\n"
          "  --names FILE      class names, one per line (e.g. batches.meta.txt)\n"
          "  --quiet           no progress on stderr\n");
}

int main(int argc, char **argv) {
  rn_err e = {0};
  rn_convert_opts o = {0};
  o.per_shard = 25000;
  int cifar100 = 0, mode = 0, ntr = 0, nte = 0, nnames = 0;
  char **names = NULL;
  const char **tr = calloc((size_t)argc, sizeof *tr), **te = calloc((size_t)argc, sizeof *te);
  const char *out = NULL;
  for (int i = 1; i < argc; i++) {
    long v;
    if (!strcmp(argv[i], "--per-shard") && i + 1 < argc) {
      if (rn_parse_int("option --per-shard", argv[++i], 1, 1L << 30, &v, &e)) goto fail;
      o.per_shard = v;
    } else if (!strcmp(argv[i], "--names") && i + 1 < argc) {
      if (rn_data_read_names(argv[++i], &names, &nnames, &e)) goto fail;
    } else if (!strcmp(argv[i], "--cifar100")) {
      cifar100 = 1;
    } else if (!strcmp(argv[i], "--quiet")) {
      o.quiet = 1;
    } else if (!strcmp(argv[i], "--train")) {
      mode = 1;
    } else if (!strcmp(argv[i], "--test")) {
      mode = 2;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage();
      return 0;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      rn_err_set(&e, RN_EINVAL, "unknown option '%s'", argv[i]);
      usage();
      goto fail;
    } else if (mode == 1) {
      tr[ntr++] = argv[i];
    } else if (mode == 2) {
      te[nte++] = argv[i];
    } else if (!out) {
      out = argv[i];
    } else {
      rn_err_set(&e, RN_EINVAL, "unexpected argument '%s' (files follow --train / --test)", argv[i]);
      goto fail;
    }
  }
  if (!out || !ntr) {
    usage();
    return 2;
  }
  o.out_dir = out;
  o.classes = cifar100 ? 100 : 10;
  if (names) {
    if (nnames != o.classes) {
      rn_err_set(&e, RN_EINVAL, "option --names: %d names but %d classes", nnames, o.classes);
      goto fail;
    }
    o.class_names = (const char *const *)names;
  }
  float mean[4], std[4];
  if (rn_convert_cifar(&o, "train", cifar100, tr, ntr, NULL, NULL, mean, std, &e)) goto fail;
  if (nte && rn_convert_cifar(&o, "test", cifar100, te, nte, mean, std, NULL, NULL, &e)) goto fail;
  if (!o.quiet)
    fprintf(stderr, "rn-convert-cifar: done: %s (mean %.4f %.4f %.4f, std %.4f %.4f %.4f, 0..1 units)\n", out, mean[0],
            mean[1], mean[2], std[0], std[1], std[2]);
  free(tr);
  free(te);
  return 0;
fail:
  fprintf(stderr, "rn-convert-cifar: error: %s\n", e.msg);
  free(tr);
  free(te);
  return 1;
}
