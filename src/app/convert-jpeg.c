/* rn-convert-jpeg: ImageNet-style JPEG tree -> HDF5 shards (raw resized pixels or JPEG bytes). */
#include <string.h>

#include "rn/data.h"

static void usage(void) {
  fprintf(stderr,
          "usage: rn-convert-jpeg [options] OUT_DIR TRAIN_DIR [VAL_DIR VAL_LABELS]\n"
          "  TRAIN_DIR/<class>/*.JPEG (classes = sorted subdirectory names);\n"
          "  VAL_DIR/*.JPEG with VAL_LABELS lines '<file name> <class name or index>'\n"
          "  --resize S        shorter side S, then centre crop S x S (raw; default 256)\n"
          "  --keep-jpeg       store the original JPEG bytes (encoding 'jpeg'), no resize\n"
          "  --threads T       decoder threads (default 2)\n"
          "  --per-shard N     images per shard (default 10000)\n"
          "  --val-split NAME  name of the second split (default 'val')\n"
          "  --quiet           no progress on stderr\n");
}

int main(int argc, char **argv) {
  rn_err e = {0};
  rn_convert_opts o = {0};
  rn_jpeg_opts j = {256, 0, 2};
  o.per_shard = 10000;
  const char *pos[4], *vname = "val";
  int npos = 0;
  for (int i = 1; i < argc; i++) {
    long v;
    if (!strcmp(argv[i], "--per-shard") && i + 1 < argc) {
      if (rn_parse_int("option --per-shard", argv[++i], 1, 1L << 30, &v, &e)) goto fail;
      o.per_shard = v;
    } else if (!strcmp(argv[i], "--resize") && i + 1 < argc) {
      if (rn_parse_int("option --resize", argv[++i], 1, 8192, &v, &e)) goto fail;
      j.resize = (int)v;
    } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      if (rn_parse_int("option --threads", argv[++i], 1, 256, &v, &e)) goto fail;
      j.threads = (int)v;
    } else if (!strcmp(argv[i], "--val-split") && i + 1 < argc) {
      vname = argv[++i];
    } else if (!strcmp(argv[i], "--keep-jpeg")) {
      j.keep_jpeg = 1;
    } else if (!strcmp(argv[i], "--quiet")) {
      o.quiet = 1;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage();
      return 0;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      rn_err_set(&e, RN_EINVAL, "unknown option '%s'", argv[i]);
      usage();
      goto fail;
    } else if (npos < 4) {
      pos[npos++] = argv[i];
    } else {
      rn_err_set(&e, RN_EINVAL, "too many arguments ('%s')", argv[i]);
      goto fail;
    }
  }
  if (npos != 2 && npos != 4) {
    usage();
    return 2;
  }
  o.out_dir = pos[0];
  char **classes = NULL;
  int ncls = 0;
  float mean[3], std[3];
  if (rn_convert_jpeg(&o, &j, "train", pos[1], NULL, &classes, &ncls, NULL, NULL, mean, std, &e)) goto fail;
  if (npos == 4 && rn_convert_jpeg(&o, &j, vname, pos[2], pos[3], &classes, &ncls, mean, std, NULL, NULL, &e))
    goto fail;
  if (!o.quiet)
    fprintf(stderr, "rn-convert-jpeg: done: %s, %d classes (mean %.4f %.4f %.4f, std %.4f %.4f %.4f, 0..1 units)\n",
            o.out_dir, ncls, mean[0], mean[1], mean[2], std[0], std[1], std[2]);
  for (int i = 0; i < ncls; i++) free(classes[i]);
  free(classes);
  return 0;
fail:
  fprintf(stderr, "rn-convert-jpeg: error: %s\n", e.msg);
  return 1;
}
