/* Sampler and augmentation: pure functions, no files. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rn/data.h"
#include "testutil.h"

static void test_order(void) {
  const int64_t n = 1003;
  int64_t *p = malloc(n * sizeof *p), *q = malloc(n * sizeof *q), *r = malloc(n * sizeof *r);
  rn_sampler_epoch_order(42, 3, n, p);
  rn_sampler_epoch_order(42, 3, n, q);
  rn_sampler_epoch_order(42, 4, n, r);
  char *seen = calloc(n, 1);
  int ok = 1, same = 1, diff = 0, ident = 0;
  for (int64_t i = 0; i < n; i++) {
    if (p[i] < 0 || p[i] >= n || seen[p[i]]) ok = 0;
    else seen[p[i]] = 1;
    if (p[i] != q[i]) same = 0;
    if (p[i] != r[i]) diff++;
    if (p[i] == i) ident++;
  }
  CHECK(ok, "epoch order is not a permutation");
  CHECK(same, "order differs for the same (seed, epoch)");
  CHECK(diff > n / 2, "epochs 3 and 4 share too many positions (%d differ)", diff);
  CHECK(ident < 20, "order looks unshuffled (%d fixed points)", ident);
  rn_sampler_epoch_order(43, 3, n, r);
  diff = 0;
  for (int64_t i = 0; i < n; i++) diff += p[i] != r[i];
  CHECK(diff > n / 2, "seeds 42 and 43 give similar orders");
  free(p), free(q), free(r), free(seen);
}

/* Training: for nranks 1..4 the union over steps and ranks is exactly positions [0, steps*G)
 * and position k goes to step k / G, rank (k % G) / B. */
static void test_train_cover(void) {
  const int64_t n = 103;
  const int B = 5;
  for (int P = 1; P <= 4; P++) {
    int64_t G = (int64_t)B * P, steps = rn_sampler_train_steps(n, B, P);
    CHECK(steps == n / G, "steps %lld for P=%d", (long long)steps, P);
    int *cnt = calloc(n, sizeof *cnt);
    for (int64_t s = 0; s < steps; s++)
      for (int r = 0; r < P; r++) {
        int64_t f = rn_sampler_train_first(0, B, r, P, s);
        for (int k = 0; k < B; k++) {
          int64_t pos = f + k;
          CHECK(pos >= 0 && pos < n, "pos %lld out of range", (long long)pos);
          if (pos >= 0 && pos < n) cnt[pos]++;
          CHECK(pos / G == s && (pos % G) / B == r, "position %lld at step %lld rank %d", (long long)pos, (long long)s, r);
        }
      }
    int bad = 0;
    for (int64_t i = 0; i < n; i++) bad += cnt[i] != (i < steps * G ? 1 : 0);
    CHECK(bad == 0, "P=%d: %d positions not covered exactly once (or beyond steps*G)", P, bad);
    free(cnt);
  }
  /* resume: offset 40 with a different global batch continues at position 40 */
  CHECK(rn_sampler_train_first(40, 4, 1, 2, 0) == 44, "resume first");
  CHECK(rn_sampler_train_first(40, 4, 0, 2, 3) == 64, "resume step 3");
}

static void test_eval_cover(void) {
  for (int64_t n = 0; n < 30; n++)
    for (int P = 1; P <= 4; P++) {
      int64_t prev = 0, sizes[4];
      for (int r = 0; r < P; r++) {
        int64_t lo, hi;
        rn_sampler_eval_slice(n, r, P, &lo, &hi);
        CHECK(lo == prev, "n=%lld P=%d r=%d slices not contiguous", (long long)n, P, r);
        sizes[r] = hi - lo;
        prev = hi;
      }
      CHECK(prev == n, "n=%lld P=%d: slices cover %lld", (long long)n, P, (long long)prev);
      for (int r = 1; r < P; r++)
        CHECK(llabs(sizes[r] - sizes[0]) <= 1, "n=%lld P=%d unbalanced", (long long)n, P);
    }
}

static void test_aug_parse(void) {
  const char *names[] = {"none", "cifar", "imagenet-paper", "imagenet-torch", "center", "10crop"};
  for (int i = 0; i < 6; i++) {
    rn_aug a;
    rn_err e = {0};
    CHECK(rn_aug_parse(names[i], &a, &e) == RN_OK && !strcmp(rn_aug_name(a), names[i]), "parse %s", names[i]);
  }
  rn_aug a;
  rn_err e = {0};
  CHECK(rn_aug_parse("flip", &a, &e) == RN_EINVAL && strstr(e.msg, "augmentation") && strstr(e.msg, "'flip'"),
        "unknown augmentation message: %s", e.msg);
}

static uint8_t *make_img(int h, int w, int c, int seed) {
  uint8_t *p = malloc((size_t)h * w * c);
  for (int i = 0; i < h * w * c; i++) p[i] = (uint8_t)((i * 7 + seed * 13 + (i / c) * 3) & 255);
  return p;
}

static void test_tencrop(void) {
  const int h = 12, w = 10, c = 3, oh = 6, ow = 4;
  uint8_t *src = make_img(h, w, c, 1);
  float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
  float *out = malloc(sizeof(float) * 10 * oh * ow * c);
  /* eval_resize = min side (10) -> no resize; crops taken from the 12x10 image */
  rn_augment(src, h, w, c, RN_AUG_EVAL_10CROP, 0, oh, ow, 10, mean, std, out);
  int ys[5] = {0, 0, h - oh, h - oh, (h - oh) / 2}, xs[5] = {0, w - ow, 0, w - ow, (w - ow) / 2};
  int bad = 0;
  for (int f = 0; f < 2; f++)
    for (int k = 0; k < 5; k++)
      for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++)
          for (int ch = 0; ch < c; ch++) {
            int sx = xs[k] + (f ? ow - 1 - x : x);
            float want = src[((ys[k] + y) * w + sx) * c + ch] / 255.0f;
            float got = out[((((size_t)(f * 5 + k) * oh + y) * ow + x) * c) + ch];
            if (fabsf(got - want) > 1e-6f) bad++;
          }
  CHECK(bad == 0, "10-crop: %d wrong values", bad);
  /* centre crop equals crop 4 of 10 */
  float *cen = malloc(sizeof(float) * oh * ow * c);
  rn_augment(src, h, w, c, RN_AUG_EVAL_CENTER, 0, oh, ow, 10, mean, std, cen);
  CHECK(memcmp(cen, out + 4 * oh * ow * c, sizeof(float) * oh * ow * c) == 0, "centre crop != 10-crop #4");
  /* normalisation */
  float m2[3] = {0.5f, 0.25f, 0.0f}, s2[3] = {0.5f, 0.25f, 2.0f};
  rn_augment(src, h, w, c, RN_AUG_EVAL_CENTER, 0, oh, ow, 10, m2, s2, cen);
  int cy = (h - oh) / 2, cx = (w - ow) / 2;
  float want = (src[((cy + 1) * w + cx + 2) * c + 1] / 255.0f - 0.25f) / 0.25f;
  CHECK(fabsf(cen[((1 * ow) + 2) * c + 1] - want) < 1e-5f, "normalised %g vs %g", cen[((1 * ow) + 2) * c + 1], want);
  /* auto eval size: 224 crop from a 300x400 image resizes the shorter side to 256 */
  CHECK(rn_aug_eval_size(0, 224, 224, 300) == 256, "eval size 256");
  CHECK(rn_aug_eval_size(0, 32, 32, 32) == 32, "eval size keeps 32");
  free(src), free(out), free(cen);
}

/* CIFAR: output is an exact shifted copy (with zero pad) possibly flipped; identical per key. */
static void test_cifar_aug(void) {
  const int h = 8, w = 8, c = 3;
  uint8_t *src = make_img(h, w, c, 2);
  float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
  float out[8 * 8 * 3], out2[8 * 8 * 3];
  int flips = 0, shifts = 0;
  for (int k = 0; k < 64; k++) {
    uint64_t key = rn_sampler_aug_key(7, 1, k);
    rn_augment(src, h, w, c, RN_AUG_CIFAR, key, h, w, 0, mean, std, out);
    rn_augment(src, h, w, c, RN_AUG_CIFAR, key, h, w, 0, mean, std, out2);
    CHECK(memcmp(out, out2, sizeof out) == 0, "cifar aug not deterministic");
    /* find a (dy,dx,flip) explaining the output */
    int found = 0;
    for (int f = 0; f < 2 && !found; f++)
      for (int dy = -4; dy <= 4 && !found; dy++)
        for (int dx = -4; dx <= 4 && !found; dx++) {
          int ok = 1;
          for (int y = 0; y < h && ok; y++)
            for (int x = 0; x < w && ok; x++) {
              int sy = y + dy, sx = dx + (f ? w - 1 - x : x);
              for (int ch = 0; ch < c; ch++) {
                float want = (sy < 0 || sy >= h || sx < 0 || sx >= w) ? 0.0f : src[(sy * w + sx) * c + ch] / 255.0f;
                if (fabsf(out[(y * w + x) * c + ch] - want) > 1e-6f) ok = 0;
              }
            }
          if (ok) {
            found = 1;
            flips += f;
            shifts += dy != 0 || dx != 0;
          }
        }
    CHECK(found, "cifar aug output %d is not a padded crop", k);
  }
  CHECK(flips > 10 && flips < 54, "flip rate %d/64", flips);
  CHECK(shifts > 40, "shift rate %d/64", shifts);
  free(src);
}

/* Random ImageNet recipes: deterministic per key, different across keys, finite values. */
static void test_imagenet_aug(void) {
  const int h = 300, w = 400, c = 3, o = 224;
  uint8_t *src = make_img(h, w, c, 3);
  float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
  size_t n = (size_t)o * o * c;
  float *a = malloc(n * 4), *b = malloc(n * 4), *d = malloc(n * 4);
  rn_aug augs[2] = {RN_AUG_IMAGENET_PAPER, RN_AUG_IMAGENET_TORCH};
  for (int i = 0; i < 2; i++) {
    rn_augment(src, h, w, c, augs[i], 11, o, o, 0, mean, std, a);
    rn_augment(src, h, w, c, augs[i], 11, o, o, 0, mean, std, b);
    rn_augment(src, h, w, c, augs[i], 12, o, o, 0, mean, std, d);
    int fin = 1;
    for (size_t k = 0; k < n; k++) fin &= isfinite(a[k]) && fabsf(a[k]) < 10;
    CHECK(fin, "%s: non-finite or huge values", rn_aug_name(augs[i]));
    CHECK(memcmp(a, b, n * 4) == 0, "%s not deterministic", rn_aug_name(augs[i]));
    CHECK(memcmp(a, d, n * 4) != 0, "%s ignores the key", rn_aug_name(augs[i]));
  }
  /* a constant image through bilinear resizing stays constant (PCA noise only shifts per channel) */
  memset(src, 100, (size_t)h * w * c);
  rn_augment(src, h, w, c, RN_AUG_IMAGENET_TORCH, 5, o, o, 0, mean, std, a);
  float want = (100 / 255.0f - mean[0]) / std[0];
  CHECK(fabsf(a[0] - want) < 1e-4f && fabsf(a[n - 3] - want) < 1e-4f, "constant image: %g vs %g", a[0], want);
  free(src), free(a), free(b), free(d);
}

int main(void) {
  test_order();
  test_train_cover();
  test_eval_cover();
  test_aug_parse();
  test_tencrop();
  test_cifar_aug();
  test_imagenet_aug();
  return tu_done("test_data_sampler");
}
