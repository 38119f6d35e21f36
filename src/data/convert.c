/* Converters from IDX (MNIST), CIFAR binary batches and JPEG trees into shards. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "rn/data.h"

static void progress(const rn_convert_opts *o, const char *what, const char *split, int64_t done, int64_t total) {
  if (o->quiet) return;
  fprintf(stderr, "\r%s: split %s: %lld/%lld images (%.0f%%)%s", what, split, (long long)done, (long long)total,
          total ? 100.0 * (double)done / (double)total : 100.0, done == total ? "\n" : "");
  fflush(stderr);
}

/* ---------------------------------------------------------------- IDX */
rn_status rn_idx_read(const char *path, int *rank, int64_t dims[4], uint8_t **data, rn_err *e) {
  *data = NULL;
  gzFile g = gzopen(path, "rb");
  if (!g) return rn_err_set(e, RN_EIO, "%s: cannot open: %s", path, strerror(errno));
  unsigned char h[4];
  rn_status st = RN_OK;
  int got = gzread(g, h, 4);
  if (got != 4) {
    st = rn_err_set(e, RN_EFORMAT, "%s: IDX header: file too short (%d bytes)", path, got < 0 ? 0 : got);
    goto out;
  }
  if (h[0] != 0 || h[1] != 0 || h[2] != 0x08 || h[3] < 1 || h[3] > 4) {
    st = rn_err_set(e, RN_EFORMAT, "%s: IDX magic: bytes %02x %02x %02x %02x (expected 00 00 08 <rank 1..4>: uint8 data)",
                    path, h[0], h[1], h[2], h[3]);
    goto out;
  }
  *rank = h[3];
  uint64_t total = 1;
  for (int i = 0; i < *rank; i++) {
    unsigned char b[4];
    if (gzread(g, b, 4) != 4) {
      st = rn_err_set(e, RN_EFORMAT, "%s: IDX header: truncated in dimension %d", path, i);
      goto out;
    }
    dims[i] = ((int64_t)b[0] << 24) | ((int64_t)b[1] << 16) | ((int64_t)b[2] << 8) | b[3];
    if (dims[i] <= 0 || dims[i] > (1 << 30)) {
      st = rn_err_set(e, RN_EFORMAT, "%s: IDX dimension %d = %lld is invalid", path, i, (long long)dims[i]);
      goto out;
    }
    total *= (uint64_t)dims[i];
    if (total > ((uint64_t)1 << 36)) {
      st = rn_err_set(e, RN_EFORMAT, "%s: IDX data too large", path);
      goto out;
    }
  }
  *data = malloc(total ? total : 1);
  if (!*data) {
    st = rn_err_set(e, RN_ENOMEM, "%s: out of memory for %llu bytes", path, (unsigned long long)total);
    goto out;
  }
  uint64_t done = 0;
  while (done < total) {
    unsigned chunk = total - done > (1u << 30) ? (1u << 30) : (unsigned)(total - done);
    int r = gzread(g, *data + done, chunk);
    if (r <= 0) break;
    done += (uint64_t)r;
  }
  if (done != total) {
    int zerr = 0;
    const char *zm = gzerror(g, &zerr);
    st = rn_err_set(e, RN_EFORMAT, "%s: IDX data truncated: %llu of %llu bytes%s%s", path, (unsigned long long)done,
                    (unsigned long long)total, zerr ? ": " : "", zerr ? zm : "");
    free(*data);
    *data = NULL;
  }
out:
  gzclose(g);
  return st;
}

/* Writes n raw images (+labels) as split; stats from these images when mean == NULL. */
static rn_status write_raw(const rn_convert_opts *o, const char *what, const char *split, rn_shard_meta *m,
                           const uint8_t *pix, const int32_t *labels, int64_t n, const float *mean, const float *std,
                           float *mean_out, float *std_out, rn_err *e) {
  size_t img = (size_t)m->height * m->width * m->channels;
  float mn[RN_DATA_MAX_CHANNELS], sd[RN_DATA_MAX_CHANNELS];
  if (mean && std) {
    memcpy(mn, mean, sizeof(float) * (size_t)m->channels);
    memcpy(sd, std, sizeof(float) * (size_t)m->channels);
  } else {
    rn_pixstats ps;
    memset(&ps, 0, sizeof ps);
    rn_pixstats_add(&ps, pix, (size_t)n * m->height * m->width, m->channels);
    rn_pixstats_result(&ps, m->channels, mn, sd);
  }
  memcpy(m->mean, mn, sizeof mn);
  memcpy(m->std, sd, sizeof sd);
  rn_shardw *w;
  rn_status st = rn_shardw_open(&w, o->out_dir, split, m, o->class_names, n, o->per_shard, e);
  if (st) return st;
  for (int64_t i = 0; i < n; i++) {
    if ((st = rn_shardw_add(w, pix + (size_t)i * img, img, labels[i], e))) {
      rn_shardw_abort(w);
      return st;
    }
    if ((i + 1) % 5000 == 0 || i + 1 == n) progress(o, what, split, i + 1, n);
  }
  if ((st = rn_shardw_finish(w, mn, sd, 0, 0, 0, e))) return st;
  if (mean_out) memcpy(mean_out, mn, sizeof(float) * (size_t)m->channels);
  if (std_out) memcpy(std_out, sd, sizeof(float) * (size_t)m->channels);
  return RN_OK;
}

static int check_classes(const rn_convert_opts *o, int dflt) { return o->classes > 0 ? o->classes : dflt; }

rn_status rn_convert_idx(const rn_convert_opts *o, const char *split, const char *images_path,
                         const char *labels_path, const float *mean, const float *std, float *mean_out,
                         float *std_out, rn_err *e) {
  int ri = 0, rl = 0;
  int64_t di[4] = {0}, dl[4] = {0};
  uint8_t *pix = NULL, *lab = NULL;
  int32_t *labels = NULL;
  rn_status st = rn_idx_read(images_path, &ri, di, &pix, e);
  if (!st) st = rn_idx_read(labels_path, &rl, dl, &lab, e);
  if (st) goto out;
  if (ri != 3 && ri != 4) {
    st = rn_err_set(e, RN_EFORMAT, "%s: IDX images: rank %d (expected 3: N,H,W or 4: N,H,W,C)", images_path, ri);
    goto out;
  }
  if (ri == 4 && di[3] != 1 && di[3] != 3) {
    st = rn_err_set(e, RN_EFORMAT, "%s: IDX images: %lld channels (expected 1 or 3)", images_path, (long long)di[3]);
    goto out;
  }
  if (rl != 1) {
    st = rn_err_set(e, RN_EFORMAT, "%s: IDX labels: rank %d (expected 1)", labels_path, rl);
    goto out;
  }
  if (dl[0] != di[0]) {
    st = rn_err_set(e, RN_EFORMAT, "%s: IDX labels: %lld labels but %s holds %lld images", labels_path,
                    (long long)dl[0], images_path, (long long)di[0]);
    goto out;
  }
  int maxl = 0;
  for (int64_t i = 0; i < dl[0]; i++)
    if (lab[i] > maxl) maxl = lab[i];
  int classes = check_classes(o, maxl + 1 > 10 ? maxl + 1 : 10);
  labels = malloc((size_t)dl[0] * sizeof *labels);
  for (int64_t i = 0; i < dl[0]; i++) {
    if (lab[i] >= classes) {
      st = rn_err_set(e, RN_EFORMAT, "%s: label[%lld] = %d outside [0, classes=%d)", labels_path, (long long)i, lab[i],
                      classes);
      goto out;
    }
    labels[i] = lab[i];
  }
  rn_shard_meta m;
  memset(&m, 0, sizeof m);
  m.height = (int)di[1];
  m.width = (int)di[2];
  m.channels = ri == 4 ? (int)di[3] : 1;
  m.classes = classes;
  m.encoding = RN_ENC_RAW;
  st = write_raw(o, "rn-convert-idx", split, &m, pix, labels, di[0], mean, std, mean_out, std_out, e);
out:
  free(pix);
  free(lab);
  free(labels);
  return st;
}

/* ---------------------------------------------------------------- CIFAR */
rn_status rn_convert_cifar(const rn_convert_opts *o, const char *split, int cifar100, const char *const *files,
                           int nfiles, const float *mean, const float *std, float *mean_out, float *std_out,
                           rn_err *e) {
  const int64_t rec = cifar100 ? 3074 : 3073, hdr = cifar100 ? 2 : 1;
  int classes = check_classes(o, cifar100 ? 100 : 10);
  int64_t n = 0;
  for (int f = 0; f < nfiles; f++) {
    struct stat sb;
    if (stat(files[f], &sb) != 0) return rn_err_set(e, RN_EIO, "%s: cannot open: %s", files[f], strerror(errno));
    if (sb.st_size == 0 || sb.st_size % rec)
      return rn_err_set(e, RN_EFORMAT, "%s: size %lld bytes is not a positive multiple of the %lld-byte %s record",
                        files[f], (long long)sb.st_size, (long long)rec, cifar100 ? "CIFAR-100" : "CIFAR-10");
    n += sb.st_size / rec;
  }
  if (n == 0) return rn_err_set(e, RN_EINVAL, "split %s: no CIFAR files given", split);
  uint8_t *pix = malloc((size_t)n * 3072), *buf = malloc((size_t)rec);
  int32_t *labels = malloc((size_t)n * sizeof *labels);
  rn_status st = RN_OK;
  if (!pix || !buf || !labels) {
    st = rn_err_set(e, RN_ENOMEM, "split %s: out of memory for %lld images", split, (long long)n);
    goto out;
  }
  int64_t k = 0;
  for (int f = 0; f < nfiles && !st; f++) {
    FILE *fp = fopen(files[f], "rb");
    if (!fp) {
      st = rn_err_set(e, RN_EIO, "%s: cannot open: %s", files[f], strerror(errno));
      break;
    }
    int64_t r = 0;
    while (fread(buf, 1, (size_t)rec, fp) == (size_t)rec) {
      int lab = buf[hdr - 1];
      if (lab >= classes) {
        st = rn_err_set(e, RN_EFORMAT, "%s: record %lld: label %d outside [0, classes=%d)", files[f], (long long)r, lab,
                        classes);
        break;
      }
      labels[k] = lab;
      uint8_t *dst = pix + (size_t)k * 3072;
      for (int c = 0; c < 3; c++)
        for (int p = 0; p < 1024; p++) dst[p * 3 + c] = buf[hdr + c * 1024 + p];
      k++;
      r++;
    }
    fclose(fp);
  }
  if (!st && k != n) st = rn_err_set(e, RN_EIO, "split %s: read %lld records, expected %lld", split, (long long)k, (long long)n);
  if (!st) {
    rn_shard_meta m;
    memset(&m, 0, sizeof m);
    m.height = m.width = 32;
    m.channels = 3;
    m.classes = classes;
    m.encoding = RN_ENC_RAW;
    st = write_raw(o, "rn-convert-cifar", split, &m, pix, labels, n, mean, std, mean_out, std_out, e);
  }
out:
  free(pix);
  free(buf);
  free(labels);
  return st;
}

/* ---------------------------------------------------------------- JPEG tree */
static int is_jpeg_name(const char *s) {
  const char *dot = strrchr(s, '.');
  return dot && (!strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".jpg"));
}
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted entries of dir (dirs_only: subdirectories; else JPEG files). */
static rn_status list_dir(const char *dir, int dirs_only, char ***out, int *n, rn_err *e) {
  DIR *dp = opendir(dir);
  *out = NULL;
  *n = 0;
  if (!dp) return rn_err_set(e, RN_EIO, "%s: cannot open directory: %s", dir, strerror(errno));
  struct dirent *de;
  int cap = 0;
  while ((de = readdir(dp))) {
    if (de->d_name[0] == '.') continue;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    struct stat sb;
    if (stat(p, &sb) != 0) continue;
    if (dirs_only ? !S_ISDIR(sb.st_mode) : !(S_ISREG(sb.st_mode) && is_jpeg_name(de->d_name))) continue;
    if (*n == cap) {
      cap = cap ? cap * 2 : 64;
      *out = realloc(*out, (size_t)cap * sizeof **out);
    }
    (*out)[(*n)++] = strdup(de->d_name);
  }
  closedir(dp);
  if (*n) qsort(*out, (size_t)*n, sizeof **out, cmp_str);
  return RN_OK;
}

static void free_list(char **l, int n) {
  for (int i = 0; i < n; i++) free(l[i]);
  free(l);
}

typedef struct {
  char *path;
  int32_t label;
  uint8_t *out; /* raw pixels or JPEG bytes */
  size_t nbytes;
  int h, w;
  rn_status st;
  char err[512];
  rn_pixstats stats;
} jitem;

typedef struct {
  jitem *items;
  int n;
  int next;
  pthread_mutex_t mu;
  int resize, keep;
} jjob;

static int read_file(const char *path, uint8_t **buf, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (sz <= 0) {
    fclose(f);
    *buf = NULL;
    *len = 0;
    return 0;
  }
  *buf = malloc((size_t)sz);
  size_t r = *buf ? fread(*buf, 1, (size_t)sz, f) : 0;
  fclose(f);
  *len = r;
  return r == (size_t)sz ? 0 : -1;
}

/* Shorter side to s, centre crop s x s, bilinear (half-pixel centres). */
static void resize_crop_u8(const uint8_t *src, int h, int w, int s, uint8_t *dst) {
  int rh, rw;
  if (h <= w) {
    rh = s;
    rw = (int)lround((double)w * s / h);
  } else {
    rw = s;
    rh = (int)lround((double)h * s / w);
  }
  int cy = (rh - s) / 2, cx = (rw - s) / 2;
  double fy = (double)h / rh, fx = (double)w / rw;
  for (int y = 0; y < s; y++) {
    double sy = (cy + y + 0.5) * fy - 0.5;
    if (sy < 0) sy = 0;
    if (sy > h - 1) sy = h - 1;
    int ya = (int)sy, yb = ya + 1 < h ? ya + 1 : ya;
    double wy = sy - ya;
    for (int x = 0; x < s; x++) {
      double sx = (cx + x + 0.5) * fx - 0.5;
      if (sx < 0) sx = 0;
      if (sx > w - 1) sx = w - 1;
      int xa = (int)sx, xb = xa + 1 < w ? xa + 1 : xa;
      double wx = sx - xa;
      for (int c = 0; c < 3; c++) {
        double t = src[((size_t)ya * w + xa) * 3 + c] * (1 - wx) + src[((size_t)ya * w + xb) * 3 + c] * wx;
        double b = src[((size_t)yb * w + xa) * 3 + c] * (1 - wx) + src[((size_t)yb * w + xb) * 3 + c] * wx;
        double v = t * (1 - wy) + b * wy;
        dst[((size_t)y * s + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lround(v));
      }
    }
  }
}

static void jwork_one(jjob *j, jitem *it, tjhandle tj) {
  uint8_t *bytes = NULL, *dec = NULL;
  size_t len = 0;
  if (read_file(it->path, &bytes, &len) != 0 || len == 0) {
    it->st = RN_EIO;
    snprintf(it->err, sizeof it->err, "%s: cannot read JPEG file (or empty)", it->path);
    free(bytes);
    return;
  }
  int w = 0, h = 0, sub = 0, cs = 0;
  if (tjDecompressHeader3(tj, bytes, (unsigned long)len, &w, &h, &sub, &cs) != 0 || w <= 0 || h <= 0 || w > 65535 ||
      h > 65535) {
    it->st = RN_EFORMAT;
    snprintf(it->err, sizeof it->err, "%s: corrupt JPEG header (%s)", it->path, tjGetErrorStr2(tj));
    free(bytes);
    return;
  }
  dec = malloc((size_t)w * h * 3);
  if (!dec || tjDecompress2(tj, bytes, (unsigned long)len, dec, w, 0, h, TJPF_RGB, TJFLAG_ACCURATEDCT) != 0) {
    it->st = RN_EFORMAT;
    snprintf(it->err, sizeof it->err, "%s: corrupt JPEG data (%s)", it->path, dec ? tjGetErrorStr2(tj) : "no memory");
    free(bytes);
    free(dec);
    return;
  }
  if (j->keep) {
    rn_pixstats_add(&it->stats, dec, (size_t)w * h, 3);
    it->out = bytes;
    it->nbytes = len;
    it->h = h;
    it->w = w;
    free(dec);
    return;
  }
  free(bytes);
  int s = j->resize;
  uint8_t *out = malloc((size_t)s * s * 3);
  if (!out) {
    it->st = RN_ENOMEM;
    snprintf(it->err, sizeof it->err, "%s: out of memory", it->path);
    free(dec);
    return;
  }
  resize_crop_u8(dec, h, w, s, out);
  free(dec);
  rn_pixstats_add(&it->stats, out, (size_t)s * s, 3);
  it->out = out;
  it->nbytes = (size_t)s * s * 3;
  it->h = it->w = s;
}

static void *jworker(void *p) {
  jjob *j = p;
  tjhandle tj = tjInitDecompress();
  for (;;) {
    pthread_mutex_lock(&j->mu);
    int i = j->next++;
    pthread_mutex_unlock(&j->mu);
    if (i >= j->n) break;
    if (!tj) {
      j->items[i].st = RN_ENOMEM;
      snprintf(j->items[i].err, sizeof j->items[i].err, "cannot create a JPEG decompressor");
      continue;
    }
    jwork_one(j, &j->items[i], tj);
  }
  if (tj) tjDestroy(tj);
  return NULL;
}

rn_status rn_convert_jpeg(const rn_convert_opts *o, const rn_jpeg_opts *jo, const char *split, const char *root,
                          const char *val_labels, char ***class_names_io, int *nclasses_io, const float *mean,
                          const float *std, float *mean_out, float *std_out, rn_err *e) {
  rn_status st = RN_OK;
  int resize = jo->resize > 0 ? jo->resize : 256, threads = jo->threads > 0 ? jo->threads : 1;
  if (resize > 8192) return rn_err_set(e, RN_EINVAL, "option --resize: %d too large", resize);
  char **classes = *class_names_io;
  int ncls = *nclasses_io;
  char **paths = NULL;
  int32_t *labels = NULL;
  int64_t n = 0;
  if (!val_labels) { /* class subdirectories */
    char **dirs;
    int nd;
    if ((st = list_dir(root, 1, &dirs, &nd, e))) return st;
    if (nd == 0) return rn_err_set(e, RN_EFORMAT, "%s: no class subdirectories", root);
    if (classes) {
      for (int c = 0; c < nd && nd == ncls; c++)
        if (strcmp(dirs[c], classes[c])) {
          st = rn_err_set(e, RN_EFORMAT, "%s: class directory %d is '%s' but the train split has '%s'", root, c,
                          dirs[c], classes[c]);
          free_list(dirs, nd);
          return st;
        }
      if (nd != ncls) {
        free_list(dirs, nd);
        return rn_err_set(e, RN_EFORMAT, "%s: %d class directories but %d classes known", root, nd, ncls);
      }
      free_list(dirs, nd);
      dirs = NULL;
    } else {
      classes = dirs;
      ncls = nd;
    }
    for (int c = 0; c < ncls && !st; c++) {
      char d[4096];
      snprintf(d, sizeof d, "%s/%s", root, classes[c]);
      char **fl;
      int nfl;
      if ((st = list_dir(d, 0, &fl, &nfl, e))) break;
      paths = realloc(paths, (size_t)(n + nfl) * sizeof *paths);
      labels = realloc(labels, (size_t)(n + nfl) * sizeof *labels);
      for (int i = 0; i < nfl; i++) {
        size_t L = strlen(d) + strlen(fl[i]) + 2;
        paths[n] = malloc(L);
        snprintf(paths[n], L, "%s/%s", d, fl[i]);
        labels[n++] = c;
      }
      free_list(fl, nfl);
    }
  } else { /* flat directory + labels file */
    if (!classes) return rn_err_set(e, RN_EINVAL, "split %s: a labels file needs the class list of the train split", split);
    FILE *f = fopen(val_labels, "r");
    if (!f) return rn_err_set(e, RN_EIO, "%s: cannot open labels file: %s", val_labels, strerror(errno));
    char line[4096];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
      lineno++;
      char name[2048], lab[1024];
      char *p = line;
      while (isspace((unsigned char)*p)) p++;
      if (!*p || *p == '#') continue;
      if (sscanf(p, "%2047s %1023s", name, lab) != 2) {
        st = rn_err_set(e, RN_EFORMAT, "%s: line %d: expected '<file> <label>', got '%.100s'", val_labels, lineno, p);
        break;
      }
      int li = -1;
      for (int c = 0; c < ncls; c++)
        if (!strcmp(classes[c], lab)) li = c;
      if (li < 0) {
        char *end;
        long v = strtol(lab, &end, 10);
        if (*end == 0 && v >= 0 && v < ncls) li = (int)v;
      }
      if (li < 0) {
        st = rn_err_set(e, RN_EFORMAT, "%s: line %d: label '%s' is neither a class name nor an index in [0, %d)",
                        val_labels, lineno, lab, ncls);
        break;
      }
      paths = realloc(paths, (size_t)(n + 1) * sizeof *paths);
      labels = realloc(labels, (size_t)(n + 1) * sizeof *labels);
      size_t L = strlen(root) + strlen(name) + 2;
      paths[n] = malloc(L);
      snprintf(paths[n], L, "%s/%s", root, name);
      labels[n++] = li;
    }
    fclose(f);
  }
  *class_names_io = classes;
  *nclasses_io = ncls;
  if (!st && n == 0) st = rn_err_set(e, RN_EFORMAT, "%s: no JPEG files found (*.JPEG, *.jpg, *.jpeg)", root);
  if (st) goto out;
  {
    rn_shard_meta m;
    memset(&m, 0, sizeof m);
    m.channels = 3;
    m.classes = ncls;
    m.encoding = jo->keep_jpeg ? RN_ENC_JPEG : RN_ENC_RAW;
    m.height = m.width = resize;
    rn_convert_opts oo = *o;
    oo.class_names = (const char *const *)classes;
    rn_shardw *w;
    if ((st = rn_shardw_open(&w, o->out_dir, split, &m, oo.class_names, n, o->per_shard, e))) goto out;
    rn_pixstats ps;
    memset(&ps, 0, sizeof ps);
    int maxh = 0, maxw = 0;
    int64_t maxb = 0;
    const int64_t block = 256;
    jitem *items = calloc((size_t)block, sizeof *items);
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    for (int64_t b0 = 0; b0 < n && !st; b0 += block) {
      int bn = (int)(n - b0 < block ? n - b0 : block);
      memset(items, 0, (size_t)bn * sizeof *items);
      for (int i = 0; i < bn; i++) {
        items[i].path = paths[b0 + i];
        items[i].label = labels[b0 + i];
      }
      jjob job = {items, bn, 0, PTHREAD_MUTEX_INITIALIZER, resize, jo->keep_jpeg};
      int started = 0;
      for (int t = 0; t < threads; t++)
        if (pthread_create(&th[t], NULL, jworker, &job) == 0) started++;
      if (!started) jworker(&job);
      for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
      for (int i = 0; i < bn; i++) {
        jitem *it = &items[i];
        if (!st && it->st) st = rn_err_set(e, it->st, "%s", it->err);
        if (!st) st = rn_shardw_add(w, it->out, it->nbytes, it->label, e);
        if (!st) {
          rn_pixstats_merge(&ps, &it->stats);
          if (it->h > maxh) maxh = it->h;
          if (it->w > maxw) maxw = it->w;
          if ((int64_t)it->nbytes > maxb) maxb = (int64_t)it->nbytes;
        }
        free(it->out);
      }
      if (!st) progress(o, "rn-convert-jpeg", split, b0 + bn, n);
    }
    free(items);
    free(th);
    if (st) {
      rn_shardw_abort(w);
      goto out;
    }
    float mn[3], sd[3];
    if (mean && std) {
      memcpy(mn, mean, sizeof mn);
      memcpy(sd, std, sizeof sd);
    } else {
      rn_pixstats_result(&ps, 3, mn, sd);
    }
    if ((st = rn_shardw_finish(w, mn, sd, maxh, maxw, maxb, e))) goto out;
    if (mean_out) memcpy(mean_out, mn, sizeof mn);
    if (std_out) memcpy(std_out, sd, sizeof sd);
  }
out:
  for (int64_t i = 0; i < n; i++) free(paths[i]);
  free(paths);
  free(labels);
  return st;
}

const char *const rn_fashion_mnist_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

rn_status rn_data_read_names(const char *path, char ***names, int *n, rn_err *e) {
  FILE *f = fopen(path, "r");
  *names = NULL;
  *n = 0;
  if (!f) return rn_err_set(e, RN_EIO, "%s: cannot open names file: %s", path, strerror(errno));
  char line[1024];
  int cap = 0;
  while (fgets(line, sizeof line, f)) {
    size_t L = strlen(line);
    while (L && isspace((unsigned char)line[L - 1])) line[--L] = 0;
    if (!L) continue;
    if (*n == cap) {
      cap = cap ? 2 * cap : 16;
      *names = realloc(*names, (size_t)cap * sizeof **names);
    }
    (*names)[(*n)++] = strdup(line);
  }
  fclose(f);
  if (!*n) return rn_err_set(e, RN_EFORMAT, "%s: names file is empty", path);
  return RN_OK;
}
