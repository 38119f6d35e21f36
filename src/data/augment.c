/* Augmentation: crops, flips, bilinear resizing, colour noise and normalisation. */
#include <math.h>
#include <string.h>

#include "rn/data.h"

static const struct {
  const char *name;
  rn_aug aug;
} k_augs[] = {{"none", RN_AUG_NONE},
              {"cifar", RN_AUG_CIFAR},
              {"imagenet-paper", RN_AUG_IMAGENET_PAPER},
              {"imagenet-torch", RN_AUG_IMAGENET_TORCH},
              {"center", RN_AUG_EVAL_CENTER},
              {"10crop", RN_AUG_EVAL_10CROP}};

rn_status rn_aug_parse(const char *name, rn_aug *out, rn_err *e) {
  for (size_t i = 0; i < sizeof k_augs / sizeof k_augs[0]; i++)
    if (name && !strcmp(name, k_augs[i].name)) {
      *out = k_augs[i].aug;
      return RN_OK;
    }
  return rn_err_set(e, RN_EINVAL,
                    "augmentation: unknown name '%s' (expected none, cifar, imagenet-paper, imagenet-torch, center, 10crop)",
                    name ? name : "(null)");
}

const char *rn_aug_name(rn_aug a) {
  for (size_t i = 0; i < sizeof k_augs / sizeof k_augs[0]; i++)
    if (k_augs[i].aug == a) return k_augs[i].name;
  return "?";
}

int rn_aug_outputs(rn_aug a) { return a == RN_AUG_EVAL_10CROP ? 10 : 1; }

int rn_aug_eval_size(int eval_resize, int out_h, int out_w, int minside) {
  if (eval_resize > 0) return eval_resize;
  int o = out_h > out_w ? out_h : out_w;
  if (minside > o) return (int)lround(o * 256.0 / 224.0);
  return minside;
}

/* AlexNet PCA lighting (fb.resnet.torch values, RGB, 0..1 pixel units). */
static const float k_eigval[3] = {0.2175f, 0.0188f, 0.0045f};
static const float k_eigvec[3][3] = {
    {-0.5675f, 0.7192f, 0.4009f}, {-0.5808f, -0.0045f, -0.8140f}, {-0.5836f, -0.6948f, 0.4203f}};

/* Renders one out_h x out_w image. Output pixel (oy,ox) samples the source at
 * y = y0 + (oy + 0.5)*sy - 0.5 (same for x), i.e. a crop starting at source coordinate y0 with sy
 * source pixels per output pixel (half-pixel centres, like torchvision). When sy = sx = 1 and
 * y0, x0 are integers the crop is an exact copy; positions outside the image give 0 (padding).
 * flip mirrors horizontally. Values are normalised as (v/255 + add[c] - mean[c]) / std[c]. */
static void render(const uint8_t *src, int h, int w, int c, double y0, double x0, double sy, double sx, int oh,
                   int ow, int flip, const float *add, const float *mean, const float *std, float *out) {
  float scale[RN_DATA_MAX_CHANNELS], bias[RN_DATA_MAX_CHANNELS];
  for (int k = 0; k < c; k++) {
    scale[k] = 1.0f / (255.0f * std[k]);
    bias[k] = (add[k] - mean[k]) / std[k];
  }
  int exact = sy == 1.0 && sx == 1.0 && y0 == floor(y0) && x0 == floor(x0);
  for (int oy = 0; oy < oh; oy++) {
    float *row = out + (size_t)oy * ow * c;
    if (exact) {
      long iy = (long)y0 + oy;
      for (int ox = 0; ox < ow; ox++) {
        long ix = (long)x0 + (flip ? ow - 1 - ox : ox);
        float *o = row + (size_t)ox * c;
        if (iy < 0 || iy >= h || ix < 0 || ix >= w) {
          for (int k = 0; k < c; k++) o[k] = bias[k];
        } else {
          const uint8_t *p = src + ((size_t)iy * w + (size_t)ix) * c;
          for (int k = 0; k < c; k++) o[k] = (float)p[k] * scale[k] + bias[k];
        }
      }
      continue;
    }
    double fy = y0 + (oy + 0.5) * sy - 0.5;
    int yout = fy < -0.5 || fy > h - 0.5;
    if (fy < 0) fy = 0;
    if (fy > h - 1) fy = h - 1;
    int ya = (int)fy, yb = ya + 1 < h ? ya + 1 : ya;
    float wy = (float)(fy - ya);
    for (int ox = 0; ox < ow; ox++) {
      int sxo = flip ? ow - 1 - ox : ox;
      double fx = x0 + (sxo + 0.5) * sx - 0.5;
      float *o = row + (size_t)ox * c;
      if (yout || fx < -0.5 || fx > w - 0.5) {
        for (int k = 0; k < c; k++) o[k] = bias[k];
        continue;
      }
      if (fx < 0) fx = 0;
      if (fx > w - 1) fx = w - 1;
      int xa = (int)fx, xb = xa + 1 < w ? xa + 1 : xa;
      float wx = (float)(fx - xa);
      const uint8_t *p00 = src + ((size_t)ya * w + xa) * c, *p01 = src + ((size_t)ya * w + xb) * c;
      const uint8_t *p10 = src + ((size_t)yb * w + xa) * c, *p11 = src + ((size_t)yb * w + xb) * c;
      for (int k = 0; k < c; k++) {
        float top = p00[k] + wx * (float)(p01[k] - p00[k]);
        float bot = p10[k] + wx * (float)(p11[k] - p10[k]);
        o[k] = (top + wy * (bot - top)) * scale[k] + bias[k];
      }
    }
  }
}

/* Shorter side of (h,w) resized to s: resized dims. */
static void resized_dims(int h, int w, int s, int *rh, int *rw) {
  if (h <= w) {
    *rh = s;
    *rw = (int)lround((double)w * s / h);
  } else {
    *rw = s;
    *rh = (int)lround((double)h * s / w);
  }
  if (*rh < 1) *rh = 1;
  if (*rw < 1) *rw = 1;
}

/* Crop at (cy,cx) of size (oh,ow) from the image resized to (rh,rw). */
static void render_resized(const uint8_t *src, int h, int w, int c, int rh, int rw, int cy, int cx, int oh, int ow,
                           int flip, const float *add, const float *mean, const float *std, float *out) {
  double fy = (double)h / rh, fx = (double)w / rw;
  render(src, h, w, c, cy * fy, cx * fx, fy, fx, oh, ow, flip, add, mean, std, out);
}

void rn_augment(const uint8_t *src, int h, int w, int c, rn_aug aug, uint64_t key, int oh, int ow, int eval_resize,
                const float *mean, const float *std, float *out) {
  float add[RN_DATA_MAX_CHANNELS] = {0};
  rn_rng r = rn_rng_make(key);
  size_t img = (size_t)oh * ow * c;
  switch (aug) {
    case RN_AUG_NONE:
      if (h == oh && w == ow)
        render(src, h, w, c, 0, 0, 1, 1, oh, ow, 0, add, mean, std, out);
      else
        render(src, h, w, c, 0, 0, (double)h / oh, (double)w / ow, oh, ow, 0, add, mean, std, out);
      return;
    case RN_AUG_CIFAR: {
      const int pad = 4;
      int ry = h + 2 * pad - oh, rx = w + 2 * pad - ow;
      int oy = ry > 0 ? (int)rn_rng_below(&r, (uint64_t)ry + 1) : ry / 2;
      int ox = rx > 0 ? (int)rn_rng_below(&r, (uint64_t)rx + 1) : rx / 2;
      int flip = (int)(rn_rng_u64(&r) >> 63);
      render(src, h, w, c, oy - pad, ox - pad, 1, 1, oh, ow, flip, add, mean, std, out);
      return;
    }
    case RN_AUG_IMAGENET_PAPER: {
      int lo = 256, hi = 480, o = oh > ow ? oh : ow;
      if (lo < o) lo = o;
      if (hi < lo) hi = lo;
      int s = lo + (int)rn_rng_below(&r, (uint64_t)(hi - lo + 1));
      int rh, rw;
      resized_dims(h, w, s, &rh, &rw);
      int cy = rh > oh ? (int)rn_rng_below(&r, (uint64_t)(rh - oh + 1)) : (rh - oh) / 2;
      int cx = rw > ow ? (int)rn_rng_below(&r, (uint64_t)(rw - ow + 1)) : (rw - ow) / 2;
      int flip = (int)(rn_rng_u64(&r) >> 63);
      if (c == 3) {
        float alpha[3];
        for (int i = 0; i < 3; i++) alpha[i] = 0.1f * rn_rng_normal(&r);
        for (int k = 0; k < 3; k++)
          add[k] = k_eigvec[k][0] * alpha[0] * k_eigval[0] + k_eigvec[k][1] * alpha[1] * k_eigval[1] +
                   k_eigvec[k][2] * alpha[2] * k_eigval[2];
      }
      render_resized(src, h, w, c, rh, rw, cy, cx, oh, ow, flip, add, mean, std, out);
      return;
    }
    case RN_AUG_IMAGENET_TORCH: {
      double area = (double)h * w;
      int ch = 0, cw = 0, y = 0, x = 0, found = 0;
      for (int attempt = 0; attempt < 10 && !found; attempt++) {
        double ta = area * (0.08 + 0.92 * rn_rng_uniform(&r));
        double lr = log(3.0 / 4.0) + (log(4.0 / 3.0) - log(3.0 / 4.0)) * rn_rng_uniform(&r);
        double ar = exp(lr);
        cw = (int)lround(sqrt(ta * ar));
        ch = (int)lround(sqrt(ta / ar));
        if (cw > 0 && ch > 0 && cw <= w && ch <= h) {
          y = (int)rn_rng_below(&r, (uint64_t)(h - ch + 1));
          x = (int)rn_rng_below(&r, (uint64_t)(w - cw + 1));
          found = 1;
        }
      }
      if (!found) { /* central crop with the ratio clamped to [3/4, 4/3] */
        double in = (double)w / h;
        if (in < 3.0 / 4.0) {
          cw = w;
          ch = (int)lround(w / (3.0 / 4.0));
        } else if (in > 4.0 / 3.0) {
          ch = h;
          cw = (int)lround(h * (4.0 / 3.0));
        } else {
          cw = w;
          ch = h;
        }
        y = (h - ch) / 2;
        x = (w - cw) / 2;
      }
      int flip = (int)(rn_rng_u64(&r) >> 63);
      render(src, h, w, c, y, x, (double)ch / oh, (double)cw / ow, oh, ow, flip, add, mean, std, out);
      return;
    }
    case RN_AUG_EVAL_CENTER:
    case RN_AUG_EVAL_10CROP: {
      int mins = h < w ? h : w;
      int s = rn_aug_eval_size(eval_resize, oh, ow, mins);
      int rh = h, rw = w;
      if (s != mins) resized_dims(h, w, s, &rh, &rw);
      /* crop origins: centre, then corners tl, tr, bl, br */
      int cy = (rh - oh) / 2, cx = (rw - ow) / 2;
      if (aug == RN_AUG_EVAL_CENTER) {
        render_resized(src, h, w, c, rh, rw, cy, cx, oh, ow, 0, add, mean, std, out);
        return;
      }
      /* order: tl, tr, bl, br, centre, then the same five mirrored */
      int ys[5] = {0, 0, rh - oh, rh - oh, cy}, xs[5] = {0, rw - ow, 0, rw - ow, cx};
      for (int f = 0; f < 2; f++)
        for (int i = 0; i < 5; i++)
          render_resized(src, h, w, c, rh, rw, ys[i], xs[i], oh, ow, f, add, mean, std, out + (size_t)(f * 5 + i) * img);
      return;
    }
  }
}
