/* Converters on generated IDX / CIFAR / JPEG inputs: exact round trip and statistics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "rn/data.h"
#include "testutil.h"

static uint32_t lcg = 12345;
static uint8_t rnd8(void) {
  lcg = lcg * 1664525u + 1013904223u;
  return (uint8_t)(lcg >> 24);
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* Writes an IDX u8 file (gz if gz). */
static void write_idx(const char *path, int gz, int rank, const int *dims, const uint8_t *data) {
  uint8_t hdr[20] = {0, 0, 8, (uint8_t)rank};
  size_t n = 1;
  for (int i = 0; i < rank; i++) put_be32(hdr + 4 + 4 * i, (uint32_t)dims[i]), n *= (size_t)dims[i];
  if (gz) {
    gzFile g = gzopen(path, "wb");
    gzwrite(g, hdr, 4 + 4 * (unsigned)rank);
    gzwrite(g, data, (unsigned)n);
    gzclose(g);
  } else {
    FILE *f = fopen(path, "wb");
    fwrite(hdr, 1, 4 + 4 * (size_t)rank, f);
    fwrite(data, 1, n, f);
    fclose(f);
  }
}

static void check_stats(const uint8_t *pix, size_t npix, int c, const float *mean, const float *std, const char *what) {
  for (int k = 0; k < c; k++) {
    double s = 0, s2 = 0;
    for (size_t p = 0; p < npix; p++) s += pix[p * c + k];
    double m = s / npix;
    for (size_t p = 0; p < npix; p++) s2 += (pix[p * c + k] - m) * (pix[p * c + k] - m);
    double sd = sqrt(s2 / npix);
    CHECK(fabs(mean[k] - m / 255) < 1e-6 && fabs(std[k] - sd / 255) < 1e-6, "%s: channel %d mean/std %g/%g vs %g/%g",
          what, k, mean[k], std[k], m / 255, sd / 255);
  }
}

/* Opens dir/split and compares every sample with pix/labels. */
static void check_dataset(const char *dir, const char *split, const uint8_t *pix, const int32_t *labels, int64_t n,
                          int h, int w, int c, int classes, int nshards, const char *what) {
  rn_dataset d;
  rn_err e = {0};
  rn_status st = rn_dataset_open(&d, dir, split, &e);
  CHECK(st == RN_OK, "%s: open: %s", what, e.msg);
  if (st) return;
  CHECK(d.n == n && d.meta.height == h && d.meta.width == w && d.meta.channels == c && d.meta.classes == classes &&
            d.nshards == nshards && d.meta.encoding == RN_ENC_RAW,
        "%s: n=%lld h=%d w=%d c=%d classes=%d shards=%d", what, (long long)d.n, d.meta.height, d.meta.width,
        d.meta.channels, d.meta.classes, d.nshards);
  rn_image im;
  CHECK(rn_image_init(&im, &d, &e) == RN_OK, "image init");
  int bad = 0;
  size_t img = (size_t)h * w * c;
  for (int64_t i = 0; i < n && i < d.n; i++) {
    int32_t lab = -1;
    if (rn_dataset_read(&d, i, &im, &lab, &e) != RN_OK) {
      bad++;
      continue;
    }
    if (lab != labels[i] || memcmp(im.pix, pix + i * img, img) != 0) bad++;
  }
  CHECK(bad == 0, "%s: %d samples differ", what, bad);
  rn_image_free(&im);
  rn_dataset_close(&d);
}

static void test_idx(void) {
  const char *dir = tu_tmpdir("data-idx");
  const int n = 50, nt = 9, h = 7, w = 5;
  uint8_t *pix = malloc(n * h * w), *lab = malloc(n), *tpix = malloc(nt * h * w), *tlab = malloc(nt);
  for (int i = 0; i < n * h * w; i++) pix[i] = rnd8();
  for (int i = 0; i < n; i++) lab[i] = rnd8() % 10;
  for (int i = 0; i < nt * h * w; i++) tpix[i] = rnd8();
  for (int i = 0; i < nt; i++) tlab[i] = rnd8() % 10;
  char a[600], b[600], c[600], d[600], out[600];
  snprintf(a, sizeof a, "%s/train-images-idx3-ubyte.gz", dir);
  snprintf(b, sizeof b, "%s/train-labels-idx1-ubyte", dir);
  snprintf(c, sizeof c, "%s/t10k-images-idx3-ubyte.gz", dir);
  snprintf(d, sizeof d, "%s/t10k-labels-idx1-ubyte.gz", dir);
  snprintf(out, sizeof out, "%s/out", dir);
  int di[3] = {n, h, w}, dl[1] = {n}, ti[3] = {nt, h, w}, tl[1] = {nt};
  write_idx(a, 1, 3, di, pix);
  write_idx(b, 0, 1, dl, lab);
  write_idx(c, 1, 3, ti, tpix);
  write_idx(d, 1, 1, tl, tlab);
  rn_convert_opts o = {out, 16, 0, NULL, 1};
  rn_err e = {0};
  float mean[4], std[4];
  CHECK(rn_convert_idx(&o, "train", a, b, NULL, NULL, mean, std, &e) == RN_OK, "idx train: %s", e.msg);
  CHECK(rn_convert_idx(&o, "test", c, d, mean, std, NULL, NULL, &e) == RN_OK, "idx test: %s", e.msg);
  check_stats(pix, (size_t)n * h * w, 1, mean, std, "idx");
  int32_t *l32 = malloc(n * 4), *t32 = malloc(nt * 4);
  for (int i = 0; i < n; i++) l32[i] = lab[i];
  for (int i = 0; i < nt; i++) t32[i] = tlab[i];
  check_dataset(out, "train", pix, l32, n, h, w, 1, 10, 4, "idx train");
  check_dataset(out, "test", tpix, t32, nt, h, w, 1, 10, 1, "idx test");
  /* the test split carries the training statistics */
  rn_dataset ds;
  if (rn_dataset_open(&ds, out, "test", &e) == RN_OK) {
    CHECK(ds.meta.mean[0] == mean[0] && ds.meta.std[0] == std[0], "test split stats");
    rn_dataset_close(&ds);
  }
  /* converting again refuses to overwrite */
  rn_status st = rn_convert_idx(&o, "train", a, b, NULL, NULL, NULL, NULL, &e);
  CHECK(st == RN_EIO && strstr(e.msg, "train.manifest") && strstr(e.msg, "overwrit"), "overwrite: %s", e.msg);
  /* truncated IDX: names the file */
  char tr[600];
  snprintf(tr, sizeof tr, "%s/trunc-images", dir);
  FILE *f = fopen(tr, "wb");
  uint8_t hdr[16] = {0, 0, 8, 3};
  put_be32(hdr + 4, 10), put_be32(hdr + 8, 28), put_be32(hdr + 12, 28);
  fwrite(hdr, 1, 16, f);
  fwrite(pix, 1, 100, f);
  fclose(f);
  char out2[600];
  snprintf(out2, sizeof out2, "%s/out2", dir);
  o.out_dir = out2;
  st = rn_convert_idx(&o, "train", tr, b, NULL, NULL, NULL, NULL, &e);
  CHECK(st == RN_EFORMAT && strstr(e.msg, "trunc-images") && strstr(e.msg, "truncated"), "truncated idx: %s", e.msg);
  /* label/image count mismatch */
  st = rn_convert_idx(&o, "train", c, b, NULL, NULL, NULL, NULL, &e);
  CHECK(st == RN_EFORMAT && strstr(e.msg, "train-labels-idx1-ubyte"), "count mismatch: %s", e.msg);
  /* the program: runs, and refuses to overwrite */
  const char *bd = getenv("RN_BUILD_DIR");
  if (bd) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/rn-convert-idx --quiet --per-shard 20 --names fashion %s/prog %s %s %s %s 2>/dev/null",
             bd, dir, a, b, c, d);
    CHECK(system(cmd) == 0, "rn-convert-idx failed: %s", cmd);
    snprintf(cmd, sizeof cmd, "%s/prog", dir);
    check_dataset(cmd, "train", pix, l32, n, h, w, 1, 10, 3, "rn-convert-idx train");
    rn_dataset ds2;
    if (rn_dataset_open(&ds2, cmd, "test", &e) == RN_OK) {
      CHECK(!strcmp(ds2.class_names[9], "Ankle boot"), "class name '%s'", ds2.class_names[9]);
      rn_dataset_close(&ds2);
    }
    snprintf(cmd, sizeof cmd, "%s/rn-convert-idx --quiet %s/prog %s %s 2>/dev/null", bd, dir, a, b);
    CHECK(system(cmd) != 0, "second conversion should refuse");
  }
  free(pix), free(lab), free(tpix), free(tlab), free(l32), free(t32);
}

static void test_cifar(void) {
  const char *dir = tu_tmpdir("data-cifar");
  for (int c100 = 0; c100 < 2; c100++) {
    const int per[2] = {7, 5};
    const int rec = c100 ? 3074 : 3073, classes = c100 ? 100 : 10;
    int n = per[0] + per[1];
    uint8_t *pix = malloc((size_t)n * 3072);
    int32_t *lab = malloc(n * 4);
    char files[2][600];
    int k = 0;
    for (int f = 0; f < 2; f++) {
      snprintf(files[f], sizeof files[f], "%s/batch%d_%d.bin", dir, c100, f);
      FILE *fp = fopen(files[f], "wb");
      uint8_t r[3074];
      for (int i = 0; i < per[f]; i++, k++) {
        for (int j = 0; j < rec; j++) r[j] = rnd8();
        lab[k] = r[rec - 3073] % classes;
        r[rec - 3073] = (uint8_t)lab[k];
        if (c100) r[0] = (uint8_t)(lab[k] / 5);
        for (int ch = 0; ch < 3; ch++)
          for (int p = 0; p < 1024; p++) pix[(size_t)k * 3072 + p * 3 + ch] = r[rec - 3072 + ch * 1024 + p];
        fwrite(r, 1, rec, fp);
      }
      fclose(fp);
    }
    char out[600];
    snprintf(out, sizeof out, "%s/out%d", dir, c100);
    rn_convert_opts o = {out, 5, classes, NULL, 1};
    rn_err e = {0};
    float mean[4], std[4];
    const char *fl[2] = {files[0], files[1]};
    CHECK(rn_convert_cifar(&o, "train", c100, fl, 2, NULL, NULL, mean, std, &e) == RN_OK, "cifar: %s", e.msg);
    check_stats(pix, (size_t)n * 1024, 3, mean, std, "cifar");
    check_dataset(out, "train", pix, lab, n, 32, 32, 3, classes, 3, c100 ? "cifar100" : "cifar10");
    /* a file whose size is not a whole number of records */
    FILE *fp = fopen(files[1], "ab");
    fputc(1, fp);
    fclose(fp);
    char out2[700];
    snprintf(out2, sizeof out2, "%s/bad", out);
    o.out_dir = out2;
    rn_status st = rn_convert_cifar(&o, "train", c100, fl, 2, NULL, NULL, NULL, NULL, &e);
    CHECK(st == RN_EFORMAT && strstr(e.msg, files[1]) && strstr(e.msg, "record"), "cifar bad size: %s", e.msg);
    free(pix), free(lab);
  }
}

/* JPEG tree: 3 classes, images of size 24x32 (and 32x24); val with a labels file. */
static void test_jpeg(void) {
  const char *dir = tu_tmpdir("data-jpeg");
  const char *cls[3] = {"n001", "n002", "n003"};
  char p[1200];
  snprintf(p, sizeof p, "%s/train", dir);
  mkdir(p, 0777);
  tjhandle tc = tjInitCompress(), td = tjInitDecompress();
  int n = 0;
  uint8_t *dec[16];
  int32_t labs[16];
  int decw[16], dech[16];
  for (int c = 0; c < 3; c++) {
    snprintf(p, sizeof p, "%s/train/%s", dir, cls[c]);
    mkdir(p, 0777);
    for (int i = 0; i < 3; i++) {
      int w = (i == 1) ? 24 : 32, h = (i == 1) ? 32 : 24;
      uint8_t img[32 * 32 * 3];
      for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
          for (int k = 0; k < 3; k++) img[(y * w + x) * 3 + k] = (uint8_t)(x * 7 + y * 5 + k * 60 + c * 30 + i * 11);
      unsigned char *jb = NULL;
      unsigned long jl = 0;
      tjCompress2(tc, img, w, 0, h, TJPF_RGB, &jb, &jl, TJSAMP_444, 95, 0);
      snprintf(p, sizeof p, "%s/train/%s/img%d.JPEG", dir, cls[c], i);
      FILE *f = fopen(p, "wb");
      fwrite(jb, 1, jl, f);
      fclose(f);
      dec[n] = malloc((size_t)w * h * 3);
      tjDecompress2(td, jb, jl, dec[n], w, 0, h, TJPF_RGB, TJFLAG_ACCURATEDCT);
      decw[n] = w, dech[n] = h, labs[n] = c;
      n++;
      tjFree(jb);
    }
  }
  /* val: copies of two train images, labels by name and by index */
  snprintf(p, sizeof p, "%s/val", dir);
  mkdir(p, 0777);
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "cp %s/train/n002/img0.JPEG %s/val/a.JPEG && cp %s/train/n003/img2.JPEG %s/val/b.JPEG", dir,
           dir, dir, dir);
  CHECK(system(cmd) == 0, "cp");
  snprintf(p, sizeof p, "%s/val_labels.txt", dir);
  FILE *f = fopen(p, "w");
  fprintf(f, "a.JPEG n002\nb.JPEG 2\n");
  fclose(f);
  for (int keep = 0; keep < 2; keep++) {
    char out[1200], root[1200], vroot[1200];
    snprintf(out, sizeof out, "%s/out%d", dir, keep);
    snprintf(root, sizeof root, "%s/train", dir);
    snprintf(vroot, sizeof vroot, "%s/val", dir);
    rn_convert_opts o = {out, 4, 0, NULL, 1};
    rn_jpeg_opts jo = {24, keep, 2};
    char **names = NULL;
    int ncls = 0;
    rn_err e = {0};
    float mean[3], std[3];
    CHECK(rn_convert_jpeg(&o, &jo, "train", root, NULL, &names, &ncls, NULL, NULL, mean, std, &e) == RN_OK,
          "jpeg train: %s", e.msg);
    CHECK(ncls == 3, "classes %d", ncls);
    CHECK(rn_convert_jpeg(&o, &jo, "val", vroot, p, &names, &ncls, mean, std, NULL, NULL, &e) == RN_OK, "jpeg val: %s",
          e.msg);
    for (int i = 0; i < ncls; i++) free(names[i]);
    free(names);
    rn_dataset d;
    if (rn_dataset_open(&d, out, "train", &e) != RN_OK) {
      CHECK(0, "open jpeg dataset: %s", e.msg);
      continue;
    }
    CHECK(d.n == n && d.nshards == 3 && d.meta.encoding == (keep ? RN_ENC_JPEG : RN_ENC_RAW) && d.meta.classes == 3 &&
              !strcmp(d.class_names[1], "n002"),
          "jpeg dataset meta (keep=%d)", keep);
    rn_image im;
    rn_image_init(&im, &d, &e);
    int bad = 0;
    rn_pixstats ps = {{0}, {0}, 0};
    for (int i = 0; i < n; i++) {
      int32_t lab;
      if (rn_dataset_read(&d, i, &im, &lab, &e)) {
        bad++;
        continue;
      }
      /* raw: the shorter side is 24 = original shorter side, so the 24x24 centre crop is exact */
      int w = decw[i], h = dech[i], cy = keep ? 0 : (h - 24) / 2, cx = keep ? 0 : (w - 24) / 2;
      int ow = keep ? w : 24, oh = keep ? h : 24;
      if (lab != labs[i] || im.w != ow || im.h != oh) bad++;
      else
        for (int y = 0; y < oh; y++)
          if (memcmp(im.pix + (size_t)y * ow * 3, dec[i] + ((size_t)(y + cy) * w + cx) * 3, (size_t)ow * 3)) bad++;
      rn_pixstats_add(&ps, im.pix, (size_t)im.w * im.h, 3);
    }
    CHECK(bad == 0, "jpeg keep=%d: %d mismatches", keep, bad);
    float m2[3], s2[3];
    rn_pixstats_result(&ps, 3, m2, s2);
    for (int k = 0; k < 3; k++)
      CHECK(fabsf(m2[k] - mean[k]) < 1e-6f && fabsf(s2[k] - std[k]) < 1e-6f, "jpeg stats ch %d", k);
    rn_image_free(&im);
    rn_dataset_close(&d);
    if (rn_dataset_open(&d, out, "val", &e) == RN_OK) {
      int32_t lab0 = -1, lab1 = -1;
      rn_image_init(&im, &d, &e);
      rn_dataset_read(&d, 0, &im, &lab0, &e);
      rn_dataset_read(&d, 1, &im, &lab1, &e);
      CHECK(d.n == 2 && lab0 == 1 && lab1 == 2, "val labels %d %d", lab0, lab1);
      rn_image_free(&im);
      rn_dataset_close(&d);
    } else {
      CHECK(0, "open val: %s", e.msg);
    }
  }
  /* a corrupt JPEG file in the tree: error names the file */
  snprintf(p, sizeof p, "%s/train/n001/zz_bad.JPEG", dir);
  f = fopen(p, "wb");
  fprintf(f, "this is not a jpeg");
  fclose(f);
  char out[1200], root[1200];
  snprintf(out, sizeof out, "%s/outbad", dir);
  snprintf(root, sizeof root, "%s/train", dir);
  rn_convert_opts o = {out, 4, 0, NULL, 1};
  rn_jpeg_opts jo = {24, 0, 2};
  char **names = NULL;
  int ncls = 0;
  rn_err e = {0};
  rn_status st = rn_convert_jpeg(&o, &jo, "train", root, NULL, &names, &ncls, NULL, NULL, NULL, NULL, &e);
  CHECK(st == RN_EFORMAT && strstr(e.msg, "zz_bad.JPEG"), "corrupt jpeg file: %s", e.msg);
  struct stat sb;
  snprintf(p, sizeof p, "%.900s/train-00000.h5", out);
  CHECK(stat(p, &sb) != 0, "failed conversion left %s behind", p);
  for (int i = 0; i < ncls; i++) free(names[i]);
  free(names);
  for (int i = 0; i < n; i++) free(dec[i]);
  tjDestroy(tc);
  tjDestroy(td);
}

int main(void) {
  test_idx();
  test_cifar();
  test_jpeg();
  return tu_done("test_data_convert");
}
