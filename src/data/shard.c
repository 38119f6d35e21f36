/* HDF5 shards: the global HDF5 lock, the verifying reader (rn_dataset) and the writer. */
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "rn/data.h"


struct rn_shard {
  char path[1024];
  hid_t file, images, fspace, mspace, vltype;
  int64_t n;
  int32_t *labels; /* [n] */
  uint8_t *cache;  /* raw: all images [n][H][W][C] when the split is small, else NULL */
};

/* ---------------------------------------------------------------- attribute helpers */
/* All called with the lock held and inside H5E_BEGIN_TRY. */
static rn_status attr_int(hid_t f, const char *path, const char *name, int64_t *out, rn_err *e) {
  if (H5Aexists(f, name) <= 0)
    return rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is missing", path, name);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  hid_t t = a >= 0 ? H5Aget_type(a) : -1;
  hid_t s = a >= 0 ? H5Aget_space(a) : -1;
  rn_status st = RN_OK;
  long long v = 0;
  if (a < 0 || t < 0 || s < 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is unreadable", path, name);
  } else if (H5Tget_class(t) != H5T_INTEGER || H5Sget_simple_extent_npoints(s) != 1) {
    st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is not a scalar integer", path, name);
  } else if (H5Aread(a, H5T_NATIVE_LLONG, &v) < 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is unreadable", path, name);
  }
  if (s >= 0) H5Sclose(s);
  if (t >= 0) H5Tclose(t);
  if (a >= 0) H5Aclose(a);
  *out = v;
  return st;
}

static rn_status attr_floats(hid_t f, const char *path, const char *name, int n, float *out, rn_err *e) {
  if (H5Aexists(f, name) <= 0)
    return rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is missing", path, name);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  hid_t t = a >= 0 ? H5Aget_type(a) : -1;
  hid_t s = a >= 0 ? H5Aget_space(a) : -1;
  rn_status st = RN_OK;
  hssize_t np = s >= 0 ? H5Sget_simple_extent_npoints(s) : -1;
  if (a < 0 || t < 0 || s < 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is unreadable", path, name);
  } else if (H5Tget_class(t) != H5T_FLOAT || np != n) {
    st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' must hold %d floats (has %lld values)", path, name, n,
                    (long long)np);
  } else if (H5Aread(a, H5T_NATIVE_FLOAT, out) < 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is unreadable", path, name);
  }
  if (s >= 0) H5Sclose(s);
  if (t >= 0) H5Tclose(t);
  if (a >= 0) H5Aclose(a);
  return st;
}

static rn_status attr_string(hid_t f, const char *path, const char *name, char *out, size_t cap, rn_err *e) {
  if (H5Aexists(f, name) <= 0)
    return rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is missing", path, name);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  hid_t t = a >= 0 ? H5Aget_type(a) : -1;
  rn_status st = RN_OK;
  out[0] = 0;
  if (a < 0 || t < 0 || H5Tget_class(t) != H5T_STRING) {
    st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is not a string", path, name);
  } else if (H5Tis_variable_str(t) > 0) {
    char *s = NULL;
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, H5T_VARIABLE);
    H5Tset_cset(mt, H5Tget_cset(t));
    if (H5Aread(a, mt, &s) < 0 || !s) {
      st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is unreadable", path, name);
    } else {
      snprintf(out, cap, "%s", s);
    }
    if (s) H5free_memory(s);
    H5Tclose(mt);
  } else {
    size_t sz = H5Tget_size(t);
    char *buf = calloc(1, sz + 1);
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, sz);
    H5Tset_cset(mt, H5Tget_cset(t));
    if (!buf || H5Aread(a, mt, buf) < 0)
      st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is unreadable", path, name);
    else
      snprintf(out, cap, "%s", buf);
    free(buf);
    H5Tclose(mt);
  }
  if (t >= 0) H5Tclose(t);
  if (a >= 0) H5Aclose(a);
  return st;
}

/* class_names: vlen string array of `classes` entries. Fills names (caller frees). */
static rn_status attr_names(hid_t f, const char *path, int classes, char ***names, rn_err *e) {
  const char *name = "class_names";
  if (H5Aexists(f, name) <= 0)
    return rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is missing", path, name);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  hid_t t = a >= 0 ? H5Aget_type(a) : -1;
  hid_t s = a >= 0 ? H5Aget_space(a) : -1;
  rn_status st = RN_OK;
  hssize_t np = s >= 0 ? H5Sget_simple_extent_npoints(s) : -1;
  if (a < 0 || t < 0 || s < 0 || H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) <= 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is not an array of variable-length strings", path, name);
  } else if (np != classes) {
    st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' has %lld names but num_classes = %d", path, name,
                    (long long)np, classes);
  } else {
    char **tmp = calloc((size_t)classes, sizeof *tmp);
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, H5T_VARIABLE);
    H5Tset_cset(mt, H5Tget_cset(t));
    if (H5Aread(a, mt, tmp) < 0) {
      st = rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' is unreadable", path, name);
    } else {
      char **out = calloc((size_t)classes, sizeof *out);
      for (int i = 0; i < classes; i++) out[i] = strdup(tmp[i] ? tmp[i] : "");
      *names = out;
    }
    for (int i = 0; i < classes; i++)
      if (tmp[i]) H5free_memory(tmp[i]);
    free(tmp);
    H5Tclose(mt);
  }
  if (s >= 0) H5Sclose(s);
  if (t >= 0) H5Tclose(t);
  if (a >= 0) H5Aclose(a);
  return st;
}

static rn_status read_meta(hid_t f, const char *path, rn_shard_meta *m, rn_err *e) {
  int64_t v;
  rn_status st;
  memset(m, 0, sizeof *m);
  if ((st = attr_int(f, path, "format_version", &v, e))) return st;
  if (v != RN_DATA_FORMAT_VERSION)
    return rn_err_set(e, RN_EFORMAT, "%s: attribute 'format_version' = %lld, this program reads version %d", path,
                      (long long)v, RN_DATA_FORMAT_VERSION);
  char enc[64];
  if ((st = attr_string(f, path, "encoding", enc, sizeof enc, e))) return st;
  if (!strcmp(enc, "raw"))
    m->encoding = RN_ENC_RAW;
  else if (!strcmp(enc, "jpeg"))
    m->encoding = RN_ENC_JPEG;
  else
    return rn_err_set(e, RN_EFORMAT, "%s: attribute 'encoding' = '%s' (expected 'raw' or 'jpeg')", path, enc);
  static const char *names[] = {"num_classes", "height", "width", "channels", "max_height", "max_width", "max_bytes"};
  int64_t vals[7];
  for (int i = 0; i < 7; i++)
    if ((st = attr_int(f, path, names[i], &vals[i], e))) return st;
  if (vals[0] < 1 || vals[0] > 1000000)
    return rn_err_set(e, RN_EFORMAT, "%s: attribute 'num_classes' = %lld is out of range", path, (long long)vals[0]);
  if (vals[3] != 1 && vals[3] != 3)
    return rn_err_set(e, RN_EFORMAT, "%s: attribute 'channels' = %lld (expected 1 or 3)", path, (long long)vals[3]);
  for (int i = 1; i <= 2; i++) {
    int64_t lo = m->encoding == RN_ENC_RAW ? 1 : 0;
    if (vals[i] < lo || vals[i] > 65535)
      return rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' = %lld is out of range", path, names[i], (long long)vals[i]);
  }
  for (int i = 4; i <= 5; i++)
    if (vals[i] < 1 || vals[i] > 65535)
      return rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' = %lld is out of range", path, names[i], (long long)vals[i]);
  if (vals[6] < 1 || vals[6] > ((int64_t)1 << 31))
    return rn_err_set(e, RN_EFORMAT, "%s: attribute 'max_bytes' = %lld is out of range", path, (long long)vals[6]);
  m->classes = (int)vals[0];
  m->height = (int)vals[1];
  m->width = (int)vals[2];
  m->channels = (int)vals[3];
  m->max_height = (int)vals[4];
  m->max_width = (int)vals[5];
  m->max_bytes = vals[6];
  if (m->encoding == RN_ENC_RAW &&
      (m->max_height != m->height || m->max_width != m->width ||
       m->max_bytes != (int64_t)m->height * m->width * m->channels))
    return rn_err_set(e, RN_EFORMAT, "%s: raw shard: attributes max_height/max_width/max_bytes = %d/%d/%lld "
                      "disagree with height/width/channels = %d/%d/%d", path, m->max_height, m->max_width,
                      (long long)m->max_bytes, m->height, m->width, m->channels);
  if ((st = attr_floats(f, path, "mean", m->channels, m->mean, e))) return st;
  if ((st = attr_floats(f, path, "std", m->channels, m->std, e))) return st;
  for (int c = 0; c < m->channels; c++) {
    if (!(m->mean[c] >= 0 && m->mean[c] <= 1))
      return rn_err_set(e, RN_EFORMAT, "%s: attribute 'mean'[%d] = %g is outside [0,1]", path, c, m->mean[c]);
    if (!(m->std[c] > 0 && m->std[c] <= 1))
      return rn_err_set(e, RN_EFORMAT, "%s: attribute 'std'[%d] = %g is outside (0,1]", path, c, m->std[c]);
  }
  return RN_OK;
}

static rn_status meta_same(const rn_shard_meta *a, const rn_shard_meta *b, const char *pa, const char *pb, rn_err *e) {
#define SAME(f, name)                                                                                         \
  if (a->f != b->f)                                                                                           \
    return rn_err_set(e, RN_EFORMAT, "%s: attribute '%s' = %lld differs from %lld in %s", pb, name,          \
                      (long long)b->f, (long long)a->f, pa);
  SAME(encoding, "encoding")
  SAME(classes, "num_classes")
  SAME(height, "height")
  SAME(width, "width")
  SAME(channels, "channels")
#undef SAME
  for (int c = 0; c < a->channels; c++)
    if (a->mean[c] != b->mean[c] || a->std[c] != b->std[c])
      return rn_err_set(e, RN_EFORMAT, "%s: attribute 'mean'/'std'[%d] = %g/%g differs from %g/%g in %s", pb, c,
                        b->mean[c], b->std[c], a->mean[c], a->std[c], pa);
  return RN_OK;
}

/* ---------------------------------------------------------------- reader */
static void shard_close(rn_shard *s) {
  if (s->vltype > 0) H5Tclose(s->vltype);
  if (s->mspace > 0) H5Sclose(s->mspace);
  if (s->fspace > 0) H5Sclose(s->fspace);
  if (s->images > 0) H5Dclose(s->images);
  if (s->file > 0) H5Fclose(s->file);
  free(s->labels);
  free(s->cache);
  memset(s, 0, sizeof *s);
}

/* Opens and verifies one shard; meta/names filled (names only if *names == NULL). Lock held. */
static rn_status shard_open(rn_shard *s, const char *path, rn_shard_meta *m, char ***names, rn_err *e) {
  rn_status st = RN_OK;
  hid_t lab = -1, lt = -1, ls = -1, it = -1;
  snprintf(s->path, sizeof s->path, "%s", path);
  struct stat sb;
  if (stat(path, &sb) != 0) return rn_err_set(e, RN_EIO, "%s: cannot open shard: %s", path, strerror(errno));
  if (!S_ISREG(sb.st_mode)) return rn_err_set(e, RN_EIO, "%s: shard is not a regular file", path);
  htri_t is = H5Fis_hdf5(path);
  if (is <= 0)
    return rn_err_set(e, RN_EFORMAT, "%s: not an HDF5 file (or truncated: %lld bytes)", path, (long long)sb.st_size);
  s->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (s->file < 0)
    return rn_err_set(e, RN_EFORMAT, "%s: HDF5 file cannot be opened (truncated or corrupt? %lld bytes)", path,
                      (long long)sb.st_size);
  if ((st = read_meta(s->file, path, m, e))) goto out;
  if (names && !*names && (st = attr_names(s->file, path, m->classes, names, e))) goto out;
  if (H5Lexists(s->file, "images", H5P_DEFAULT) <= 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images' is missing", path);
    goto out;
  }
  if (H5Lexists(s->file, "labels", H5P_DEFAULT) <= 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'labels' is missing", path);
    goto out;
  }
  s->images = H5Dopen2(s->file, "images", H5P_DEFAULT);
  if (s->images < 0 || (s->fspace = H5Dget_space(s->images)) < 0 || (it = H5Dget_type(s->images)) < 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images' cannot be opened", path);
    goto out;
  }
  int rank = H5Sget_simple_extent_ndims(s->fspace);
  hsize_t dims[8] = {0};
  if (rank > 0 && rank <= 8) H5Sget_simple_extent_dims(s->fspace, dims, NULL);
  if (m->encoding == RN_ENC_RAW) {
    if (H5Tget_class(it) != H5T_INTEGER || H5Tget_size(it) != 1 || H5Tget_sign(it) != H5T_SGN_NONE) {
      st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images': dtype must be uint8 (class %d, %zu bytes)", path,
                      (int)H5Tget_class(it), H5Tget_size(it));
      goto out;
    }
    if (rank != 4 || dims[1] != (hsize_t)m->height || dims[2] != (hsize_t)m->width || dims[3] != (hsize_t)m->channels) {
      st = rn_err_set(e, RN_EFORMAT,
                      "%s: dataset 'images': shape must be (N,%d,%d,%d) from the attributes, got rank %d "
                      "(%llu,%llu,%llu,%llu)", path, m->height, m->width, m->channels, rank,
                      (unsigned long long)dims[0], (unsigned long long)dims[1], (unsigned long long)dims[2],
                      (unsigned long long)dims[3]);
      goto out;
    }
    hsize_t md[1] = {(hsize_t)m->height * m->width * m->channels};
    s->mspace = H5Screate_simple(1, md, NULL);
  } else {
    hid_t base = H5Tget_class(it) == H5T_VLEN ? H5Tget_super(it) : -1;
    int ok = base >= 0 && H5Tget_class(base) == H5T_INTEGER && H5Tget_size(base) == 1;
    if (base >= 0) H5Tclose(base);
    if (!ok) {
      st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images': dtype must be variable-length uint8 for encoding 'jpeg'", path);
      goto out;
    }
    if (rank != 1) {
      st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images': rank %d, expected 1 for encoding 'jpeg'", path, rank);
      goto out;
    }
    hsize_t md[1] = {1};
    s->mspace = H5Screate_simple(1, md, NULL);
    s->vltype = H5Tvlen_create(H5T_NATIVE_UINT8);
  }
  s->n = (int64_t)dims[0];
  if (s->n <= 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images': N = 0 (empty shard)", path);
    goto out;
  }
  lab = H5Dopen2(s->file, "labels", H5P_DEFAULT);
  lt = lab >= 0 ? H5Dget_type(lab) : -1;
  ls = lab >= 0 ? H5Dget_space(lab) : -1;
  if (lab < 0 || lt < 0 || ls < 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'labels' cannot be opened", path);
    goto out;
  }
  if (H5Tget_class(lt) != H5T_INTEGER || H5Tget_size(lt) != 4 || H5Tget_sign(lt) != H5T_SGN_2) {
    st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'labels': dtype must be int32 (class %d, %zu bytes)", path,
                    (int)H5Tget_class(lt), H5Tget_size(lt));
    goto out;
  }
  hsize_t ld[2] = {0};
  int lrank = H5Sget_simple_extent_ndims(ls);
  if (lrank == 1) H5Sget_simple_extent_dims(ls, ld, NULL);
  if (lrank != 1 || ld[0] != dims[0]) {
    st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'labels': shape must be (%llu) like 'images', got rank %d (%llu)",
                    path, (unsigned long long)dims[0], lrank, (unsigned long long)ld[0]);
    goto out;
  }
  s->labels = malloc((size_t)s->n * sizeof(int32_t));
  if (!s->labels) {
    st = rn_err_set(e, RN_ENOMEM, "%s: out of memory for %lld labels", path, (long long)s->n);
    goto out;
  }
  if (H5Dread(lab, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->labels) < 0) {
    st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'labels' cannot be read (truncated file?)", path);
    goto out;
  }
  for (int64_t i = 0; i < s->n; i++)
    if (s->labels[i] < 0 || s->labels[i] >= m->classes) {
      st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'labels'[%lld] = %d is outside [0, num_classes=%d)", path,
                      (long long)i, s->labels[i], m->classes);
      goto out;
    }
  /* Probe the last image so a truncated file fails now rather than mid-training. */
  if (m->encoding == RN_ENC_RAW) {
    uint8_t *tmp = malloc((size_t)m->height * m->width * m->channels);
    hsize_t start[4] = {(hsize_t)s->n - 1, 0, 0, 0}, cnt[4] = {1, (hsize_t)m->height, (hsize_t)m->width, (hsize_t)m->channels};
    herr_t r = tmp ? H5Sselect_hyperslab(s->fspace, H5S_SELECT_SET, start, NULL, cnt, NULL) : -1;
    if (r >= 0) r = H5Dread(s->images, H5T_NATIVE_UINT8, s->mspace, s->fspace, H5P_DEFAULT, tmp);
    free(tmp);
    if (r < 0) {
      st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images'[%lld] cannot be read (truncated file?)", path,
                      (long long)s->n - 1);
      goto out;
    }
  }
out:
  if (ls >= 0) H5Sclose(ls);
  if (lt >= 0) H5Tclose(lt);
  if (lab >= 0) H5Dclose(lab);
  if (it >= 0) H5Tclose(it);
  return st;
}

void rn_dataset_close(rn_dataset *d) {
  if (!d) return;
  rn_h5_lock();
  H5E_BEGIN_TRY {
    for (int i = 0; i < d->nshards; i++) shard_close(&d->shards[i]);
  }
  H5E_END_TRY;
  rn_h5_unlock();
  if (d->class_names)
    for (int i = 0; i < d->meta.classes; i++) free(d->class_names[i]);
  free(d->class_names);
  free(d->shards);
  free(d->shard_start);
  memset(d, 0, sizeof *d);
}

rn_status rn_dataset_open(rn_dataset *d, const char *path, const char *split, rn_err *e) {
  memset(d, 0, sizeof *d);
  if (split) {
    if (!*split) return rn_err_set(e, RN_EINVAL, "dataset %s: empty split name", path);
    snprintf(d->manifest, sizeof d->manifest, "%s/%s.manifest", path, split);
  } else {
    snprintf(d->manifest, sizeof d->manifest, "%s", path);
  }
  FILE *f = fopen(d->manifest, "r");
  if (!f) return rn_err_set(e, RN_EIO, "%s: cannot open manifest: %s", d->manifest, strerror(errno));
  char dir[1024];
  snprintf(dir, sizeof dir, "%s", d->manifest);
  char *slash = strrchr(dir, '/');
  if (slash)
    slash[1] = 0;
  else
    dir[0] = 0;
  char line[1024];
  char **files = NULL;
  int nf = 0, lineno = 0;
  rn_status st = RN_OK;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    size_t L = strlen(line);
    while (L && (line[L - 1] == '\n' || line[L - 1] == '\r' || line[L - 1] == ' ' || line[L - 1] == '\t')) line[--L] = 0;
    char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (!*p || *p == '#') continue;
    char **nfiles = realloc(files, (size_t)(nf + 1) * sizeof *files);
    if (!nfiles) {
      st = rn_err_set(e, RN_ENOMEM, "%s: out of memory", d->manifest);
      break;
    }
    files = nfiles;
    size_t need = strlen(dir) + strlen(p) + 1;
    files[nf] = malloc(need);
    if (p[0] == '/')
      snprintf(files[nf], need, "%s", p);
    else
      snprintf(files[nf], need, "%s%s", dir, p);
    nf++;
  }
  fclose(f);
  if (!st && nf == 0) st = rn_err_set(e, RN_EFORMAT, "%s: manifest lists no shards", d->manifest);
  if (!st) {
    d->shards = calloc((size_t)nf, sizeof *d->shards);
    d->shard_start = calloc((size_t)nf + 1, sizeof *d->shard_start);
    rn_h5_lock();
    H5E_BEGIN_TRY {
      for (int i = 0; i < nf && !st; i++) {
        rn_shard_meta m;
        memset(&m, 0, sizeof m);
        st = shard_open(&d->shards[i], files[i], &m, &d->class_names, e);
        d->nshards = i + 1;
        if (i == 0) d->meta = m; /* meta.classes counts class_names even on failure */
        if (st) break;
        if (i == 0) {
        } else if ((st = meta_same(&d->meta, &m, d->shards[0].path, files[i], e))) {
          break;
        } else {
          if (m.max_height > d->meta.max_height) d->meta.max_height = m.max_height;
          if (m.max_width > d->meta.max_width) d->meta.max_width = m.max_width;
          if (m.max_bytes > d->meta.max_bytes) d->meta.max_bytes = m.max_bytes;
        }
        d->shard_start[i + 1] = d->shard_start[i] + d->shards[i].n;
      }
    }
    H5E_END_TRY;
    rn_h5_unlock();
    if (st) rn_err_prefix(e, "opening %s", d->manifest);
  }
  for (int i = 0; i < nf; i++) free(files[i]);
  free(files);
  if (st) {
    if (!d->class_names) d->meta.classes = 0;
    rn_dataset_close(d);
    return st;
  }
  d->n = d->shard_start[d->nshards];
  /* Small raw splits (<= RN_DATA_CACHE_MB, default 1024 MiB) are read into memory once: a
   * per-sample HDF5 hyperslab read costs ~80 us, a memcpy nothing. */
  const char *env = getenv("RN_DATA_CACHE_MB");
  double cap_mb = env && *env ? atof(env) : 1024.0;
  size_t img = (size_t)d->meta.height * d->meta.width * d->meta.channels;
  if (d->meta.encoding == RN_ENC_RAW && (double)d->n * (double)img <= cap_mb * 1048576.0) {
    rn_h5_lock();
    H5E_BEGIN_TRY {
      for (int i = 0; i < d->nshards && !st; i++) {
        rn_shard *s = &d->shards[i];
        s->cache = malloc((size_t)s->n * img);
        if (!s->cache) break; /* fall back to per-sample reads */
        if (H5Dread(s->images, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->cache) < 0)
          st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images' cannot be read (truncated file?)", s->path);
      }
    }
    H5E_END_TRY;
    rn_h5_unlock();
    if (st) {
      rn_dataset_close(d);
      return st;
    }
  }
  return RN_OK;
}

rn_status rn_image_init(rn_image *im, const rn_dataset *d, rn_err *e) {
  memset(im, 0, sizeof *im);
  im->c = d->meta.channels;
  im->cap = (size_t)d->meta.max_height * d->meta.max_width * d->meta.channels;
  im->pix = malloc(im->cap ? im->cap : 1);
  if (d->meta.encoding == RN_ENC_JPEG) {
    im->jcap = (size_t)d->meta.max_bytes;
    im->jbuf = malloc(im->jcap);
    im->tj = tjInitDecompress();
    if (!im->tj) {
      rn_image_free(im);
      return rn_err_set(e, RN_ENOMEM, "%s: cannot create a JPEG decompressor: %s", d->manifest, tjGetErrorStr());
    }
  }
  if (!im->pix || (d->meta.encoding == RN_ENC_JPEG && !im->jbuf)) {
    rn_image_free(im);
    return rn_err_set(e, RN_ENOMEM, "%s: out of memory for an image buffer", d->manifest);
  }
  return RN_OK;
}

void rn_image_free(rn_image *im) {
  if (!im) return;
  free(im->pix);
  free(im->jbuf);
  if (im->tj) tjDestroy(im->tj);
  memset(im, 0, sizeof *im);
}

rn_status rn_dataset_read(rn_dataset *d, int64_t index, rn_image *im, int32_t *label, rn_err *e) {
  if (index < 0 || index >= d->n)
    return rn_err_set(e, RN_EINVAL, "%s: sample index %lld outside [0, %lld)", d->manifest, (long long)index,
                      (long long)d->n);
  int lo = 0, hi = d->nshards - 1;
  while (lo < hi) { /* last shard with start <= index */
    int mid = (lo + hi + 1) / 2;
    if (d->shard_start[mid] <= index)
      lo = mid;
    else
      hi = mid - 1;
  }
  rn_shard *s = &d->shards[lo];
  int64_t i = index - d->shard_start[lo];
  const rn_shard_meta *m = &d->meta;
  *label = s->labels[i];
  size_t jlen = 0;
  rn_status st = RN_OK;
  if (s->cache) {
    size_t img = (size_t)m->height * m->width * m->channels;
    memcpy(im->pix, s->cache + (size_t)i * img, img);
    im->h = m->height;
    im->w = m->width;
    im->c = m->channels;
    return RN_OK;
  }
  rn_h5_lock();
  H5E_BEGIN_TRY {
    if (m->encoding == RN_ENC_RAW) {
      hsize_t start[4] = {(hsize_t)i, 0, 0, 0}, cnt[4] = {1, (hsize_t)m->height, (hsize_t)m->width, (hsize_t)m->channels};
      if (H5Sselect_hyperslab(s->fspace, H5S_SELECT_SET, start, NULL, cnt, NULL) < 0 ||
          H5Dread(s->images, H5T_NATIVE_UINT8, s->mspace, s->fspace, H5P_DEFAULT, im->pix) < 0)
        st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images'[%lld] cannot be read", s->path, (long long)i);
    } else {
      hsize_t start[1] = {(hsize_t)i}, cnt[1] = {1};
      hvl_t v = {0, NULL};
      if (H5Sselect_hyperslab(s->fspace, H5S_SELECT_SET, start, NULL, cnt, NULL) < 0 ||
          H5Dread(s->images, s->vltype, s->mspace, s->fspace, H5P_DEFAULT, &v) < 0) {
        st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images'[%lld] cannot be read", s->path, (long long)i);
      } else {
        if (v.len > im->jcap || v.len == 0)
          st = rn_err_set(e, RN_EFORMAT, "%s: dataset 'images'[%lld]: %zu JPEG bytes (attribute max_bytes = %zu)",
                          s->path, (long long)i, v.len, im->jcap);
        else
          memcpy(im->jbuf, v.p, v.len);
        jlen = v.len;
        H5Dvlen_reclaim(s->vltype, s->mspace, H5P_DEFAULT, &v);
      }
    }
  }
  H5E_END_TRY;
  rn_h5_unlock();
  if (st) return st;
  if (m->encoding == RN_ENC_RAW) {
    im->h = m->height;
    im->w = m->width;
    im->c = m->channels;
    return RN_OK;
  }
  int w = 0, h = 0, sub = 0, cs = 0;
  if (tjDecompressHeader3(im->tj, im->jbuf, (unsigned long)jlen, &w, &h, &sub, &cs) != 0)
    return rn_err_set(e, RN_EFORMAT, "%s: dataset 'images'[%lld]: corrupt JPEG (%s)", s->path, (long long)i,
                      tjGetErrorStr2(im->tj));
  if (w <= 0 || h <= 0 || w > m->max_width || h > m->max_height)
    return rn_err_set(e, RN_EFORMAT, "%s: dataset 'images'[%lld]: JPEG is %dx%d, larger than max_width x max_height = %dx%d",
                      s->path, (long long)i, w, h, m->max_width, m->max_height);
  if (tjDecompress2(im->tj, im->jbuf, (unsigned long)jlen, im->pix, w, 0, h, m->channels == 3 ? TJPF_RGB : TJPF_GRAY,
                    TJFLAG_ACCURATEDCT) != 0)
    return rn_err_set(e, RN_EFORMAT, "%s: dataset 'images'[%lld]: corrupt JPEG (%s)", s->path, (long long)i,
                      tjGetErrorStr2(im->tj));
  im->h = h;
  im->w = w;
  im->c = m->channels;
  return RN_OK;
}

/* ---------------------------------------------------------------- pixel statistics */
void rn_pixstats_add(rn_pixstats *s, const uint8_t *pix, size_t npix, int c) {
  uint64_t sum[RN_DATA_MAX_CHANNELS] = {0}, sq[RN_DATA_MAX_CHANNELS] = {0};
  for (size_t p = 0; p < npix; p++)
    for (int k = 0; k < c; k++) {
      uint64_t v = pix[p * (size_t)c + (size_t)k];
      sum[k] += v;
      sq[k] += v * v;
    }
  for (int k = 0; k < c; k++) {
    s->sum[k] += (double)sum[k];
    s->sumsq[k] += (double)sq[k];
  }
  s->count += npix;
}
void rn_pixstats_merge(rn_pixstats *into, const rn_pixstats *from) {
  for (int k = 0; k < RN_DATA_MAX_CHANNELS; k++) {
    into->sum[k] += from->sum[k];
    into->sumsq[k] += from->sumsq[k];
  }
  into->count += from->count;
}
void rn_pixstats_result(const rn_pixstats *s, int c, float *mean, float *std) {
  for (int k = 0; k < c; k++) {
    double n = s->count ? (double)s->count : 1.0;
    double m = s->sum[k] / n, v = s->sumsq[k] / n - m * m;
    if (v < 0) v = 0;
    mean[k] = (float)(m / 255.0);
    std[k] = (float)(sqrt(v) / 255.0);
    if (!(std[k] > 0)) std[k] = 1.0f; /* constant images: avoid dividing by zero */
  }
}

/* ---------------------------------------------------------------- writer */
struct rn_shardw {
  char dir[1024], split[128];
  rn_shard_meta meta;
  char **names;
  int64_t total, per_shard, written;
  int nshards;
  char (*paths)[1200];
  /* current shard */
  hid_t file, images, vltype;
  int64_t cur_n, cur_pos, buf_first, buf_n, buf_cap;
  int32_t *labels;
  uint8_t *rawbuf;
  hvl_t *vbuf;
};

static rn_status write_attr_int(hid_t f, const char *name, int64_t v) {
  hid_t s = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
  long long x = v;
  herr_t r = a >= 0 ? H5Awrite(a, H5T_NATIVE_LLONG, &x) : -1;
  if (a >= 0) H5Aclose(a);
  H5Sclose(s);
  return r < 0 ? RN_EIO : RN_OK;
}
static rn_status write_attr_floats(hid_t f, const char *name, const float *v, int n, int overwrite) {
  if (overwrite && H5Aexists(f, name) > 0) H5Adelete(f, name);
  hsize_t d[1] = {(hsize_t)n};
  hid_t s = H5Screate_simple(1, d, NULL);
  hid_t a = H5Acreate2(f, name, H5T_IEEE_F32LE, s, H5P_DEFAULT, H5P_DEFAULT);
  herr_t r = a >= 0 ? H5Awrite(a, H5T_NATIVE_FLOAT, v) : -1;
  if (a >= 0) H5Aclose(a);
  H5Sclose(s);
  return r < 0 ? RN_EIO : RN_OK;
}
static rn_status write_attr_str(hid_t f, const char *name, const char *v) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, strlen(v) + 1);
  H5Tset_strpad(t, H5T_STR_NULLTERM);
  hid_t s = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
  herr_t r = a >= 0 ? H5Awrite(a, t, v) : -1;
  if (a >= 0) H5Aclose(a);
  H5Sclose(s);
  H5Tclose(t);
  return r < 0 ? RN_EIO : RN_OK;
}
static rn_status write_attr_names(hid_t f, char **names, int n) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  hsize_t d[1] = {(hsize_t)n};
  hid_t s = H5Screate_simple(1, d, NULL);
  hid_t a = H5Acreate2(f, "class_names", t, s, H5P_DEFAULT, H5P_DEFAULT);
  herr_t r = a >= 0 ? H5Awrite(a, t, names) : -1;
  if (a >= 0) H5Aclose(a);
  H5Sclose(s);
  H5Tclose(t);
  return r < 0 ? RN_EIO : RN_OK;
}

static rn_status shardw_flush(rn_shardw *w, rn_err *e) {
  if (!w->buf_n) return RN_OK;
  const rn_shard_meta *m = &w->meta;
  herr_t r;
  if (m->encoding == RN_ENC_RAW) {
    hsize_t start[4] = {(hsize_t)w->buf_first, 0, 0, 0},
            cnt[4] = {(hsize_t)w->buf_n, (hsize_t)m->height, (hsize_t)m->width, (hsize_t)m->channels};
    hid_t fs = H5Dget_space(w->images), ms = H5Screate_simple(4, cnt, NULL);
    r = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
    if (r >= 0) r = H5Dwrite(w->images, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, w->rawbuf);
    H5Sclose(ms);
    H5Sclose(fs);
  } else {
    hsize_t start[1] = {(hsize_t)w->buf_first}, cnt[1] = {(hsize_t)w->buf_n};
    hid_t fs = H5Dget_space(w->images), ms = H5Screate_simple(1, cnt, NULL);
    r = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
    if (r >= 0) r = H5Dwrite(w->images, w->vltype, ms, fs, H5P_DEFAULT, w->vbuf);
    H5Sclose(ms);
    H5Sclose(fs);
    for (int64_t k = 0; k < w->buf_n; k++) {
      free(w->vbuf[k].p);
      w->vbuf[k].p = NULL;
    }
  }
  w->buf_first += w->buf_n;
  w->buf_n = 0;
  if (r < 0)
    return rn_err_set(e, RN_EIO, "%s: writing dataset 'images' failed (disk full?)", w->paths[w->nshards - 1]);
  return RN_OK;
}

static rn_status shardw_close_cur(rn_shardw *w, rn_err *e) {
  if (w->file <= 0) return RN_OK;
  rn_status st = shardw_flush(w, e);
  const char *path = w->paths[w->nshards - 1];
  if (!st) {
    hsize_t d[1] = {(hsize_t)w->cur_n};
    hid_t s = H5Screate_simple(1, d, NULL);
    hid_t ds = H5Dcreate2(w->file, "labels", H5T_STD_I32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (ds < 0 || H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, w->labels) < 0)
      st = rn_err_set(e, RN_EIO, "%s: writing dataset 'labels' failed", path);
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(s);
  }
  if (w->images > 0) H5Dclose(w->images);
  if (H5Fclose(w->file) < 0 && !st) st = rn_err_set(e, RN_EIO, "%s: closing failed (disk full?)", path);
  w->file = w->images = 0;
  return st;
}

static rn_status shardw_new(rn_shardw *w, rn_err *e) {
  const rn_shard_meta *m = &w->meta;
  int k = w->nshards;
  snprintf(w->paths[k], sizeof w->paths[k], "%s/%s-%05d.h5", w->dir, w->split, k);
  const char *path = w->paths[k];
  if (access(path, F_OK) == 0) return rn_err_set(e, RN_EIO, "%s: shard already exists, not overwriting", path);
  w->nshards++;
  w->cur_n = w->total - w->written < w->per_shard ? w->total - w->written : w->per_shard;
  w->cur_pos = w->buf_first = w->buf_n = 0;
  w->file = H5Fcreate(path, H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
  if (w->file < 0) return rn_err_set(e, RN_EIO, "%s: cannot create shard", path);
  rn_status st = RN_OK;
  st |= write_attr_int(w->file, "format_version", RN_DATA_FORMAT_VERSION);
  st |= write_attr_str(w->file, "encoding", m->encoding == RN_ENC_RAW ? "raw" : "jpeg");
  st |= write_attr_int(w->file, "num_classes", m->classes);
  st |= write_attr_int(w->file, "height", m->height);
  st |= write_attr_int(w->file, "width", m->width);
  st |= write_attr_int(w->file, "channels", m->channels);
  st |= write_attr_int(w->file, "max_height", m->max_height);
  st |= write_attr_int(w->file, "max_width", m->max_width);
  st |= write_attr_int(w->file, "max_bytes", m->max_bytes);
  st |= write_attr_floats(w->file, "mean", m->mean, m->channels, 0);
  st |= write_attr_floats(w->file, "std", m->std, m->channels, 0);
  st |= write_attr_names(w->file, w->names, m->classes);
  st |= write_attr_str(w->file, "split", w->split);
  if (st) return rn_err_set(e, RN_EIO, "%s: writing attributes failed", path);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (m->encoding == RN_ENC_RAW) {
    size_t img = (size_t)m->height * m->width * m->channels;
    hsize_t chunk_n = 16384 / img;
    if (chunk_n < 1) chunk_n = 1;
    if (chunk_n > (hsize_t)w->cur_n) chunk_n = (hsize_t)w->cur_n;
    hsize_t d[4] = {(hsize_t)w->cur_n, (hsize_t)m->height, (hsize_t)m->width, (hsize_t)m->channels};
    hsize_t ch[4] = {chunk_n, d[1], d[2], d[3]};
    H5Pset_chunk(dcpl, 4, ch);
    hid_t s = H5Screate_simple(4, d, NULL);
    w->images = H5Dcreate2(w->file, "images", H5T_STD_U8LE, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Sclose(s);
  } else {
    hsize_t d[1] = {(hsize_t)w->cur_n}, ch[1] = {w->cur_n < 64 ? (hsize_t)w->cur_n : 64};
    H5Pset_chunk(dcpl, 1, ch);
    hid_t s = H5Screate_simple(1, d, NULL);
    hid_t ft = H5Tvlen_create(H5T_STD_U8LE);
    w->images = H5Dcreate2(w->file, "images", ft, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Tclose(ft);
    H5Sclose(s);
  }
  H5Pclose(dcpl);
  if (w->images < 0) return rn_err_set(e, RN_EIO, "%s: cannot create dataset 'images'", path);
  return RN_OK;
}

static void shardw_free(rn_shardw *w) {
  if (w->names)
    for (int i = 0; i < w->meta.classes; i++) free(w->names[i]);
  free(w->names);
  if (w->vbuf)
    for (int64_t k = 0; k < w->buf_cap; k++) free(w->vbuf[k].p);
  free(w->vbuf);
  free(w->rawbuf);
  free(w->labels);
  free(w->paths);
  free(w);
}

rn_status rn_shardw_open(rn_shardw **wp, const char *dir, const char *split, const rn_shard_meta *meta,
                         const char *const *class_names, int64_t total, int64_t per_shard, rn_err *e) {
  *wp = NULL;
  if (total <= 0) return rn_err_set(e, RN_EINVAL, "split %s: no samples to write (N = %lld)", split, (long long)total);
  if (per_shard <= 0)
    return rn_err_set(e, RN_EINVAL, "option --per-shard: %lld must be positive", (long long)per_shard);
  if (meta->classes < 1 || (meta->channels != 1 && meta->channels != 3))
    return rn_err_set(e, RN_EINVAL, "split %s: classes = %d, channels = %d invalid", split, meta->classes, meta->channels);
  char man[1200];
  snprintf(man, sizeof man, "%s/%s.manifest", dir, split);
  if (access(man, F_OK) == 0) return rn_err_set(e, RN_EIO, "%s: manifest already exists, not overwriting", man);
  if (mkdir(dir, 0777) != 0 && errno != EEXIST)
    return rn_err_set(e, RN_EIO, "%s: cannot create output directory: %s", dir, strerror(errno));
  rn_shardw *w = calloc(1, sizeof *w);
  snprintf(w->dir, sizeof w->dir, "%s", dir);
  snprintf(w->split, sizeof w->split, "%s", split);
  w->meta = *meta;
  if (w->meta.encoding == RN_ENC_RAW) {
    w->meta.max_height = meta->height;
    w->meta.max_width = meta->width;
    w->meta.max_bytes = (int64_t)meta->height * meta->width * meta->channels;
  } else {
    w->meta.height = w->meta.width = 0;
    if (w->meta.max_height < 1) w->meta.max_height = 1;
    if (w->meta.max_width < 1) w->meta.max_width = 1;
    if (w->meta.max_bytes < 1) w->meta.max_bytes = 1;
  }
  for (int c = 0; c < meta->channels; c++)
    if (!(w->meta.std[c] > 0)) w->meta.std[c] = 1, w->meta.mean[c] = 0;
  w->names = calloc((size_t)meta->classes, sizeof *w->names);
  for (int i = 0; i < meta->classes; i++) w->names[i] = strdup(class_names && class_names[i] ? class_names[i] : "");
  w->total = total;
  w->per_shard = per_shard;
  int64_t ns = (total + per_shard - 1) / per_shard;
  w->paths = calloc((size_t)ns, sizeof *w->paths);
  int64_t lab_n = per_shard < total ? per_shard : total;
  w->labels = calloc((size_t)lab_n, sizeof *w->labels);
  if (w->meta.encoding == RN_ENC_RAW) {
    size_t img = (size_t)meta->height * meta->width * meta->channels;
    w->buf_cap = (int64_t)((1u << 22) / img);
    if (w->buf_cap < 1) w->buf_cap = 1;
    w->rawbuf = malloc((size_t)w->buf_cap * img);
  } else {
    w->buf_cap = 64;
    w->vbuf = calloc((size_t)w->buf_cap, sizeof *w->vbuf);
  }
  if (!w->paths || !w->labels || (!w->rawbuf && !w->vbuf)) {
    shardw_free(w);
    return rn_err_set(e, RN_ENOMEM, "split %s: out of memory", split);
  }
  *wp = w;
  return RN_OK;
}

rn_status rn_shardw_add(rn_shardw *w, const uint8_t *data, size_t nbytes, int32_t label, rn_err *e) {
  if (w->written >= w->total)
    return rn_err_set(e, RN_EINVAL, "split %s: more than the announced %lld samples", w->split, (long long)w->total);
  if (label < 0 || label >= w->meta.classes)
    return rn_err_set(e, RN_EFORMAT, "split %s: sample %lld: label %d outside [0, %d)", w->split,
                      (long long)w->written, label, w->meta.classes);
  size_t img = (size_t)w->meta.height * w->meta.width * w->meta.channels;
  if (w->meta.encoding == RN_ENC_RAW && nbytes != img)
    return rn_err_set(e, RN_EINVAL, "split %s: sample %lld: %zu bytes, expected %zu", w->split, (long long)w->written,
                      nbytes, img);
  if (w->meta.encoding == RN_ENC_JPEG && nbytes == 0)
    return rn_err_set(e, RN_EINVAL, "split %s: sample %lld: empty JPEG", w->split, (long long)w->written);
  rn_status st = RN_OK;
  rn_h5_lock();
  H5E_BEGIN_TRY {
    if (w->file <= 0) {
      st = shardw_new(w, e);
      if (!st && w->meta.encoding == RN_ENC_JPEG) w->vltype = H5Tvlen_create(H5T_NATIVE_UINT8);
    }
    if (!st) {
      if (w->meta.encoding == RN_ENC_RAW) {
        memcpy(w->rawbuf + (size_t)w->buf_n * img, data, img);
      } else {
        w->vbuf[w->buf_n].p = malloc(nbytes);
        memcpy(w->vbuf[w->buf_n].p, data, nbytes);
        w->vbuf[w->buf_n].len = nbytes;
      }
      w->buf_n++;
      w->labels[w->cur_pos++] = label;
      w->written++;
      if (w->buf_n == w->buf_cap) st = shardw_flush(w, e);
      if (!st && w->cur_pos == w->cur_n) st = shardw_close_cur(w, e);
    }
  }
  H5E_END_TRY;
  rn_h5_unlock();
  return st;
}

void rn_shardw_abort(rn_shardw *w) {
  if (!w) return;
  rn_h5_lock();
  H5E_BEGIN_TRY {
    if (w->images > 0) H5Dclose(w->images);
    if (w->file > 0) H5Fclose(w->file);
    if (w->vltype > 0) H5Tclose(w->vltype);
  }
  H5E_END_TRY;
  rn_h5_unlock();
  for (int i = 0; i < w->nshards; i++) unlink(w->paths[i]);
  shardw_free(w);
}

rn_status rn_shardw_finish(rn_shardw *w, const float *mean, const float *std, int max_h, int max_w,
                           int64_t max_bytes, rn_err *e) {
  if (w->written != w->total) {
    rn_status st = rn_err_set(e, RN_EINVAL, "split %s: %lld samples written, %lld announced", w->split,
                              (long long)w->written, (long long)w->total);
    rn_shardw_abort(w);
    return st;
  }
  rn_status st = RN_OK;
  float mn[RN_DATA_MAX_CHANNELS], sd[RN_DATA_MAX_CHANNELS];
  for (int c = 0; c < w->meta.channels; c++) {
    mn[c] = mean ? mean[c] : w->meta.mean[c];
    sd[c] = std ? std[c] : w->meta.std[c];
    if (!(sd[c] > 0)) sd[c] = 1;
  }
  rn_h5_lock();
  H5E_BEGIN_TRY {
    if (w->vltype > 0) H5Tclose(w->vltype);
    w->vltype = 0;
    for (int i = 0; i < w->nshards && !st; i++) {
      hid_t f = H5Fopen(w->paths[i], H5F_ACC_RDWR, H5P_DEFAULT);
      if (f < 0) {
        st = rn_err_set(e, RN_EIO, "%s: cannot reopen shard to store statistics", w->paths[i]);
        break;
      }
      if (write_attr_floats(f, "mean", mn, w->meta.channels, 1) || write_attr_floats(f, "std", sd, w->meta.channels, 1))
        st = rn_err_set(e, RN_EIO, "%s: writing attributes 'mean'/'std' failed", w->paths[i]);
      if (!st && w->meta.encoding == RN_ENC_JPEG) {
        H5Adelete(f, "max_height");
        H5Adelete(f, "max_width");
        H5Adelete(f, "max_bytes");
        if (write_attr_int(f, "max_height", max_h < 1 ? 1 : max_h) || write_attr_int(f, "max_width", max_w < 1 ? 1 : max_w) ||
            write_attr_int(f, "max_bytes", max_bytes < 1 ? 1 : max_bytes))
          st = rn_err_set(e, RN_EIO, "%s: writing attributes 'max_*' failed", w->paths[i]);
      }
      if (H5Fclose(f) < 0 && !st) st = rn_err_set(e, RN_EIO, "%s: closing failed", w->paths[i]);
    }
  }
  H5E_END_TRY;
  rn_h5_unlock();
  char man[1200], tmp[1300];
  snprintf(man, sizeof man, "%s/%s.manifest", w->dir, w->split);
  snprintf(tmp, sizeof tmp, "%s.tmp", man);
  if (!st) {
    FILE *f = fopen(tmp, "w");
    if (!f) {
      st = rn_err_set(e, RN_EIO, "%s: cannot write manifest: %s", tmp, strerror(errno));
    } else {
      fprintf(f, "# resnet-mpi shard manifest: split %s, %lld samples, one shard file per line\n", w->split,
              (long long)w->total);
      for (int i = 0; i < w->nshards; i++) {
        const char *b = strrchr(w->paths[i], '/');
        fprintf(f, "%s\n", b ? b + 1 : w->paths[i]);
      }
      if (fclose(f) != 0) st = rn_err_set(e, RN_EIO, "%s: writing manifest failed (disk full?)", tmp);
      if (!st && access(man, F_OK) == 0) st = rn_err_set(e, RN_EIO, "%s: manifest already exists, not overwriting", man);
      if (!st && rename(tmp, man) != 0) st = rn_err_set(e, RN_EIO, "%s: rename failed: %s", man, strerror(errno));
      if (st) unlink(tmp);
    }
  }
  if (st) {
    rn_shardw_abort(w);
    return st;
  }
  shardw_free(w);
  return RN_OK;
}
