/* ckpt: checkpoint writer and reader (format and guarantees: docs/CHECKPOINTS.md).
 *
 * Layout of a checkpoint file (format version 1):
 *   /                      attrs format="resnet-mpi-checkpoint", format_version=1
 *   /model                 group; attrs = model description (arch, depth, ...)
 *   /model/<key>           float32 LE, torchvision shape (conv weights OIHW); attr crc32
 *   /model/<bn>.num_batches_tracked   int64 scalar = step; attr crc32
 *   /optim/momentum/<key>  float32 LE, same shape as /model/<key> (trainable only); attr crc32
 *   /state                 group; attrs = rn_ckpt_state fields
 *   /config, /metrics      scalar fixed-length NUL-terminated strings; attr crc32
 * crc32 = zlib crc32 of the dataset's bytes as stored (little-endian). */
#include "rn/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define FORMAT_NAME "resnet-mpi-checkpoint"

/* ------------------------------------------------------------------------------------------ */
/* HDF5 guard, error detail, checksum                                                           */
/* ------------------------------------------------------------------------------------------ */

/* Lock + silence HDF5's automatic error printing (we report errors ourselves); restored on end. */
typedef struct {
  H5E_auto2_t func;
  void *data;
} h5guard;

static void h5_begin(h5guard *g) {
  rn_h5_lock();
  H5Eget_auto2(H5E_DEFAULT, &g->func, &g->data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void h5_end(h5guard *g) {
  H5Eset_auto2(H5E_DEFAULT, g->func, g->data);
  rn_h5_unlock();
}

typedef struct {
  char *buf;
  size_t len;
} detail_ctx;

static herr_t walk_cb(unsigned n, const H5E_error2_t *err, void *data) {
  detail_ctx *c = data;
  if (n == 0 && err->desc) snprintf(c->buf, c->len, "%s", err->desc);
  return 0;
}

/* The most specific message on the HDF5 error stack, e.g. "file write failed: ... errno = 28,
 * error message = 'No space left on device'" or "truncated file: eof = ...". Clears the stack. */
static const char *h5_detail(char *buf, size_t len) {
  buf[0] = 0;
  detail_ctx c = {buf, len};
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, &c);
  if (!buf[0]) snprintf(buf, len, "HDF5 call failed");
  char *p = strstr(buf, ", buf = "); /* sec2 messages go on with pointers and sizes */
  if (p) *p = 0;
  p = strstr(buf, "time = ");
  if (p) { /* drop the time stamp: "file write failed: time = Mon ..., filename = ..." */
    char *q = strstr(p, ", ");
    if (q) memmove(p, q + 2, strlen(q + 2) + 1);
  }
  H5Eclear2(H5E_DEFAULT);
  return buf;
}

static uint32_t crc_bytes(const void *p, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  const unsigned char *b = p;
  while (n) {
    size_t k = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
    c = crc32(c, b, (uInt)k);
    b += k, n -= k;
  }
  return (uint32_t)c;
}

/* sec2 (no MPI-IO) and strong close: objects left open on an error path close with the file. */
static hid_t make_fapl(void) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0) return fapl;
  if (H5Pset_fapl_sec2(fapl) < 0 || H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
    H5Pclose(fapl);
    return -1;
  }
  return fapl;
}

static void path_join(char *out, size_t len, const char *dir, const char *name) {
  size_t dl = strlen(dir);
  while (dl > 1 && dir[dl - 1] == '/') dl--;
  snprintf(out, len, "%.*s/%s", (int)dl, dir, name);
}

void rn_ckpt_filename(int64_t step, char *buf, size_t len) { snprintf(buf, len, "ckpt-%08lld.h5", (long long)step); }

/* "ckpt-<digits>.h5" -> step; -1 if the name is not a checkpoint name. */
static int64_t parse_ckpt_name(const char *name) {
  if (strncmp(name, "ckpt-", 5) != 0) return -1;
  const char *p = name + 5;
  int64_t v = 0;
  int nd = 0;
  while (*p >= '0' && *p <= '9') {
    if (v > (INT64_MAX - 9) / 10) return -1;
    v = v * 10 + (*p++ - '0'), nd++;
  }
  if (nd == 0 || strcmp(p, ".h5") != 0) return -1;
  return v;
}

/* ------------------------------------------------------------------------------------------ */
/* Model description fields                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef enum { FI, FF } fkind_t;
typedef struct {
  const char *name;
  fkind_t kind;
  size_t off;
  int must_match; /* load refuses a model that differs in this field */
} cfg_field;

#define CF(n, k, mm) {#n, k, offsetof(rn_model_config, n), mm}
static const cfg_field cfg_fields[] = {
    CF(depth, FI, 1),        CF(bottleneck, FI, 1),         CF(cifar, FI, 1),
    CF(plain, FI, 1),        CF(preact, FI, 1),             CF(stride_in_1x1, FI, 1),
    CF(zero_init_residual, FI, 0), /* init only: irrelevant once weights are loaded */
    CF(in_channels, FI, 1),  CF(in_h, FI, 1),               CF(in_w, FI, 1),
    CF(num_classes, FI, 1),  CF(width, FI, 1),              CF(sd_pl, FF, 1),              CF(bn_momentum, FF, 1),
    CF(bn_eps, FF, 1),
};
#define NCFG ((int)(sizeof cfg_fields / sizeof cfg_fields[0]))

static const char *shortcut_name(int s) { return s == 0 ? "A" : s == 1 ? "B" : s == 2 ? "C" : "?"; }

/* ------------------------------------------------------------------------------------------ */
/* Attribute helpers (caller holds the guard)                                                  */
/* ------------------------------------------------------------------------------------------ */

static int w_attr(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v) {
  hid_t sp = H5Screate(H5S_SCALAR);
  if (sp < 0) return -1;
  hid_t a = H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
  int rc = -1;
  if (a >= 0) {
    rc = H5Awrite(a, mtype, v) < 0 ? -1 : 0;
    H5Aclose(a);
  }
  H5Sclose(sp);
  return rc;
}
static int w_attr_i64(hid_t loc, const char *n, int64_t v) { return w_attr(loc, n, H5T_STD_I64LE, H5T_NATIVE_INT64, &v); }
static int w_attr_u64(hid_t loc, const char *n, uint64_t v) { return w_attr(loc, n, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v); }
static int w_attr_i32(hid_t loc, const char *n, int v) { return w_attr(loc, n, H5T_STD_I32LE, H5T_NATIVE_INT, &v); }
static int w_attr_f32(hid_t loc, const char *n, float v) { return w_attr(loc, n, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, &v); }
static int w_attr_f64(hid_t loc, const char *n, double v) { return w_attr(loc, n, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v); }
static int w_attr_str(hid_t loc, const char *n, const char *s) {
  hid_t t = H5Tcopy(H5T_C_S1);
  if (t < 0) return -1;
  int rc = -1;
  if (H5Tset_size(t, strlen(s) + 1) >= 0 && H5Tset_strpad(t, H5T_STR_NULLTERM) >= 0) rc = w_attr(loc, n, t, t, s);
  H5Tclose(t);
  return rc;
}

/* Reading: 0 ok, -1 missing, -2 wrong type/unreadable. */
static int r_attr(hid_t loc, const char *obj, const char *name, H5T_class_t cls, hid_t mtype, void *v) {
  htri_t ex = H5Aexists_by_name(loc, obj, name, H5P_DEFAULT);
  if (ex <= 0) return -1;
  hid_t a = H5Aopen_by_name(loc, obj, name, H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0) return -2;
  int rc = -2;
  hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
  if (t >= 0 && sp >= 0 && H5Tget_class(t) == cls && H5Sget_simple_extent_npoints(sp) == 1 &&
      H5Aread(a, mtype, v) >= 0)
    rc = 0;
  if (t >= 0) H5Tclose(t);
  if (sp >= 0) H5Sclose(sp);
  H5Aclose(a);
  return rc;
}
static int r_attr_str(hid_t loc, const char *obj, const char *name, char *buf, size_t len) {
  htri_t ex = H5Aexists_by_name(loc, obj, name, H5P_DEFAULT);
  if (ex <= 0) return -1;
  hid_t a = H5Aopen_by_name(loc, obj, name, H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0) return -2;
  int rc = -2;
  hid_t t = H5Aget_type(a);
  if (t >= 0 && H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t)) {
    size_t sz = H5Tget_size(t);
    char *tmp = calloc(1, sz + 1);
    hid_t mt = H5Tcopy(t);
    if (tmp && mt >= 0 && H5Tset_strpad(mt, H5T_STR_NULLTERM) >= 0 && H5Tset_size(mt, sz + 1) >= 0 &&
        H5Aread(a, mt, tmp) >= 0) {
      snprintf(buf, len, "%s", tmp);
      rc = 0;
    }
    if (mt >= 0) H5Tclose(mt);
    free(tmp);
  }
  if (t >= 0) H5Tclose(t);
  H5Aclose(a);
  return rc;
}

static rn_status attr_err(rn_err *e, int rc, const char *path, const char *obj, const char *name, const char *want) {
  if (rc == -1)
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: required attribute %s%s%s is missing", path, obj,
                      strcmp(obj, "/") ? "/" : "", name);
  return rn_err_set(e, RN_EFORMAT, "checkpoint %s: attribute %s%s%s is not a scalar %s", path, obj,
                    strcmp(obj, "/") ? "/" : "", name, want);
}

#define RA_I64(loc, obj, n, dst)                                                                   \
  do {                                                                                             \
    int rc_ = r_attr(loc, obj, n, H5T_INTEGER, H5T_NATIVE_INT64, dst);                             \
    if (rc_) return attr_err(e, rc_, path, obj, n, "integer");                                     \
  } while (0)

/* ------------------------------------------------------------------------------------------ */
/* State and model description (caller holds the guard; file open)                             */
/* ------------------------------------------------------------------------------------------ */

static int write_state(hid_t f, const rn_ckpt_state *st) {
  hid_t g = H5Gcreate2(f, "state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (g < 0) return -1;
  int bad = 0;
  bad |= w_attr_i64(g, "epoch", st->epoch);
  bad |= w_attr_i64(g, "step", st->step);
  bad |= w_attr_i64(g, "epoch_offset", st->epoch_offset);
  bad |= w_attr_i64(g, "samples", st->samples);
  bad |= w_attr_i32(g, "nranks", st->nranks);
  bad |= w_attr_i32(g, "global_batch", st->global_batch);
  bad |= w_attr_u64(g, "seed", st->seed);
  bad |= w_attr_f64(g, "lr", st->lr);
  bad |= w_attr_f64(g, "val_err", st->val_err);
  bad |= w_attr_f64(g, "best_val_err", st->best_val_err);
  bad |= w_attr_i32(g, "flags", st->flags);
  H5Gclose(g);
  return bad ? -1 : 0;
}

static rn_status read_state_h(hid_t f, const char *path, rn_ckpt_state *st, rn_err *e) {
  rn_ckpt_state s;
  memset(&s, 0, sizeof s);
  int64_t v;
  const char *o = "/state";
  if (H5Lexists(f, "state", H5P_DEFAULT) <= 0)
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: required group /state is missing", path);
  RA_I64(f, o, "epoch", &s.epoch);
  RA_I64(f, o, "step", &s.step);
  RA_I64(f, o, "epoch_offset", &s.epoch_offset);
  RA_I64(f, o, "samples", &s.samples);
  RA_I64(f, o, "nranks", &v);
  s.nranks = (int)v;
  RA_I64(f, o, "global_batch", &v);
  s.global_batch = (int)v;
  int rc = r_attr(f, o, "seed", H5T_INTEGER, H5T_NATIVE_UINT64, &s.seed);
  if (rc) return attr_err(e, rc, path, o, "seed", "integer");
  const char *dn[3] = {"lr", "val_err", "best_val_err"};
  double *dv[3] = {&s.lr, &s.val_err, &s.best_val_err};
  for (int i = 0; i < 3; i++) {
    rc = r_attr(f, o, dn[i], H5T_FLOAT, H5T_NATIVE_DOUBLE, dv[i]);
    if (rc) return attr_err(e, rc, path, o, dn[i], "float");
  }
  RA_I64(f, o, "flags", &v);
  s.flags = (int)v;
  if (s.step < 0 || s.epoch < 0 || s.samples < 0 || s.epoch_offset < 0)
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: /state has a negative counter (epoch %lld, step %lld)", path,
                      (long long)s.epoch, (long long)s.step);
  *st = s;
  return RN_OK;
}

static int write_model_desc(hid_t g, const rn_model_config *c) {
  int bad = w_attr_str(g, "arch", c->arch);
  bad |= w_attr_str(g, "shortcut", shortcut_name((int)c->shortcut));
  for (int i = 0; i < NCFG; i++) {
    const char *p = (const char *)c + cfg_fields[i].off;
    if (cfg_fields[i].kind == FI)
      bad |= w_attr_i32(g, cfg_fields[i].name, *(const int *)p);
    else
      bad |= w_attr_f32(g, cfg_fields[i].name, *(const float *)p);
  }
  return bad ? -1 : 0;
}

static rn_status read_model_desc_h(hid_t f, const char *path, rn_model_config *c, rn_err *e) {
  rn_model_config r;
  memset(&r, 0, sizeof r);
  const char *o = "/model";
  if (H5Lexists(f, "model", H5P_DEFAULT) <= 0)
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: required group /model is missing", path);
  int rc = r_attr_str(f, o, "arch", r.arch, sizeof r.arch);
  if (rc) return attr_err(e, rc, path, o, "arch", "string");
  char sc[8];
  rc = r_attr_str(f, o, "shortcut", sc, sizeof sc);
  if (rc) return attr_err(e, rc, path, o, "shortcut", "string");
  if (!strcmp(sc, "A")) r.shortcut = RN_SHORTCUT_A;
  else if (!strcmp(sc, "B")) r.shortcut = RN_SHORTCUT_B;
  else if (!strcmp(sc, "C")) r.shortcut = RN_SHORTCUT_C;
  else return rn_err_set(e, RN_EFORMAT, "checkpoint %s: attribute /model/shortcut is '%s' (expected A, B or C)", path, sc);
  for (int i = 0; i < NCFG; i++) {
    char *p = (char *)&r + cfg_fields[i].off;
    if (cfg_fields[i].kind == FI) {
      int64_t v;
      rc = r_attr(f, o, cfg_fields[i].name, H5T_INTEGER, H5T_NATIVE_INT64, &v);
      if (rc) return attr_err(e, rc, path, o, cfg_fields[i].name, "integer");
      *(int *)p = (int)v;
    } else {
      rc = r_attr(f, o, cfg_fields[i].name, H5T_FLOAT, H5T_NATIVE_FLOAT, p);
      if (rc) return attr_err(e, rc, path, o, cfg_fields[i].name, "float");
    }
  }
  *c = r;
  return RN_OK;
}

static rn_status compare_desc(const char *path, const rn_model_config *f, const rn_model_config *m, rn_err *e) {
  if (strcmp(f->arch, m->arch))
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: model description differs from this model: arch is '%s' in "
                      "the checkpoint but '%s' in the model", path, f->arch, m->arch);
  if (f->shortcut != m->shortcut)
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: model description differs from this model: shortcut is %s in "
                      "the checkpoint but %s in the model", path, shortcut_name((int)f->shortcut),
                      shortcut_name((int)m->shortcut));
  for (int i = 0; i < NCFG; i++) {
    if (!cfg_fields[i].must_match) continue;
    const char *a = (const char *)f + cfg_fields[i].off, *b = (const char *)m + cfg_fields[i].off;
    if (cfg_fields[i].kind == FI) {
      if (*(const int *)a != *(const int *)b)
        return rn_err_set(e, RN_EFORMAT, "checkpoint %s: model description differs from this model: %s is %d in "
                          "the checkpoint but %d in the model", path, cfg_fields[i].name, *(const int *)a,
                          *(const int *)b);
    } else if (memcmp(a, b, sizeof(float)) != 0) {
      return rn_err_set(e, RN_EFORMAT, "checkpoint %s: model description differs from this model: %s is %.9g in "
                        "the checkpoint but %.9g in the model", path, cfg_fields[i].name,
                        (double)*(const float *)a, (double)*(const float *)b);
    }
  }
  return RN_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Layout conversion                                                                           */
/* ------------------------------------------------------------------------------------------ */

/* internal (OHWI when p->ohwi) -> stored (OIHW) */
static void to_stored(const rn_param *p, const float *src, float *dst) {
  if (!p->ohwi || p->ndim != 4) {
    memcpy(dst, src, p->count * sizeof(float));
    return;
  }
  int O = p->dims[0], I = p->dims[1], H = p->dims[2], W = p->dims[3];
  for (int o = 0; o < O; o++)
    for (int h = 0; h < H; h++)
      for (int w = 0; w < W; w++)
        for (int i = 0; i < I; i++)
          dst[(((size_t)o * I + i) * H + h) * W + w] = src[(((size_t)o * H + h) * W + w) * I + i];
}

static void from_stored(const rn_param *p, const float *src, float *dst) {
  if (!p->ohwi || p->ndim != 4) {
    memcpy(dst, src, p->count * sizeof(float));
    return;
  }
  int O = p->dims[0], I = p->dims[1], H = p->dims[2], W = p->dims[3];
  for (int o = 0; o < O; o++)
    for (int h = 0; h < H; h++)
      for (int w = 0; w < W; w++)
        for (int i = 0; i < I; i++)
          dst[(((size_t)o * H + h) * W + w) * I + i] = src[(((size_t)o * I + i) * H + h) * W + w];
}

/* "<prefix>.running_mean" -> "<prefix>.num_batches_tracked"; 0 if p is not a BN running mean. */
static int nbt_name(const char *name, char *out, size_t len) {
  size_t n = strlen(name), k = strlen(".running_mean");
  if (n <= k || strcmp(name + n - k, ".running_mean")) return 0;
  snprintf(out, len, "%.*s.num_batches_tracked", (int)(n - k), name);
  return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Fault injection (test only): RN_CKPT_FAULT=kill@<stage> | enospc@dataset:<k>                */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
  int kind; /* 0 none, 1 kill, 2 enospc */
  char stage[32];
  int k;
} fault_t;

static rn_status fault_parse(fault_t *ft, rn_err *e) {
  memset(ft, 0, sizeof *ft);
  ft->k = -1;
  const char *s = getenv("RN_CKPT_FAULT");
  if (!s || !*s) return RN_OK;
  const char *at = strchr(s, '@');
  if (at && !strncmp(s, "kill", (size_t)(at - s)) && at - s == 4) ft->kind = 1;
  else if (at && !strncmp(s, "enospc", (size_t)(at - s)) && at - s == 6) ft->kind = 2;
  else goto bad;
  const char *st = at + 1;
  if (!strncmp(st, "dataset:", 8)) {
    char *end;
    long k = strtol(st + 8, &end, 10);
    if (end == st + 8 || *end || k < 0) goto bad;
    snprintf(ft->stage, sizeof ft->stage, "dataset");
    ft->k = (int)k;
    return RN_OK;
  }
  if (ft->kind == 2) goto bad;
  static const char *stages[] = {"create", "flush", "fsync", "rename", "latest", "best", "prune"};
  for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++)
    if (!strcmp(st, stages[i])) {
      snprintf(ft->stage, sizeof ft->stage, "%s", st);
      return RN_OK;
    }
bad:
  return rn_err_set(e, RN_EINVAL, "RN_CKPT_FAULT='%s' is not understood (test-only: kill@create|dataset:<k>|flush|"
                    "fsync|rename|latest|best|prune or enospc@dataset:<k>)", s);
}

static void fault_kill(const fault_t *ft, const char *stage, int k) {
  if (ft->kind == 1 && !strcmp(ft->stage, stage) && (k < 0 || k == ft->k)) raise(SIGKILL);
}

/* ------------------------------------------------------------------------------------------ */
/* Writer                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
  const char *tmp, *fname;
  hid_t f;
  int ndata;
  fault_t ft;
} wctx;

static rn_status werr(wctx *w, rn_err *e, rn_status code, const char *what, const char *detail) {
  return rn_err_set(e, code, "cannot write checkpoint %s (temporary file %s): %s: %s", w->fname, w->tmp, what, detail);
}

/* Writes one dataset (whole, contiguous) with its crc32 attribute. data: bytes as stored. */
static rn_status w_dataset(wctx *w, const char *grp, const char *name, hid_t ftype, hid_t mtype, int ndim,
                           const hsize_t *dims, const void *data, size_t nbytes, rn_err *e) {
  char full[256], det[512];
  snprintf(full, sizeof full, "%s/%s", grp, name);
  fault_kill(&w->ft, "dataset", w->ndata);
  if (w->ft.kind == 2 && w->ft.k == w->ndata) {
    char what[320];
    snprintf(what, sizeof what, "dataset %s", full);
    return werr(w, e, RN_EIO, what, "H5Dwrite: No space left on device (ENOSPC simulated by RN_CKPT_FAULT)");
  }
  h5guard g;
  h5_begin(&g);
  rn_status s = RN_OK;
  const char *op = "H5Screate";
  hid_t sp = ndim ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR), d = -1;
  if (sp >= 0) {
    op = "H5Dcreate";
    d = H5Dcreate2(w->f, full, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  }
  if (d >= 0) {
    op = "H5Dwrite";
    if (H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0) {
      op = "crc32 attribute";
      uint32_t crc = crc_bytes(data, nbytes);
      if (w_attr(d, "crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, &crc) >= 0) op = NULL;
    }
  }
  if (op) {
    char what[400];
    snprintf(what, sizeof what, "dataset %s: %s failed", full, op);
    s = werr(w, e, RN_EIO, what, h5_detail(det, sizeof det));
  }
  if (d >= 0) H5Dclose(d);
  if (sp >= 0) H5Sclose(sp);
  h5_end(&g);
  if (!s) w->ndata++;
  return s;
}

static rn_status w_text(wctx *w, const char *name, const char *text, rn_err *e) {
  if (!text) text = "";
  size_t n = strlen(text) + 1;
  h5guard g;
  h5_begin(&g);
  hid_t t = H5Tcopy(H5T_C_S1);
  int ok = t >= 0 && H5Tset_size(t, n) >= 0 && H5Tset_strpad(t, H5T_STR_NULLTERM) >= 0;
  h5_end(&g);
  rn_status s = ok ? w_dataset(w, "", name, t, t, 0, NULL, text, n, e)
                   : werr(w, e, RN_EIO, name, "cannot make string type");
  h5_begin(&g);
  if (t >= 0) H5Tclose(t);
  h5_end(&g);
  return s;
}

static rn_status fsync_path(const char *path, int dir, rn_err *e) {
  int fd = open(path, dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return rn_err_set(e, RN_EIO, "cannot open %s for fsync: %s", path, strerror(errno));
  if (fsync(fd) != 0) {
    int er = errno;
    close(fd);
    return rn_err_set(e, RN_EIO, "fsync of %s failed: %s", path, strerror(er));
  }
  close(fd);
  return RN_OK;
}

static rn_status mkdir_p(const char *dir, rn_err *e) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", dir);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == 0) {
      char c = *p;
      *p = 0;
      if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return rn_err_set(e, RN_EIO, "cannot create checkpoint directory %s: %s", buf, strerror(errno));
      *p = c;
      if (!c) break;
    }
  }
  struct stat sb;
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
    return rn_err_set(e, RN_EIO, "checkpoint directory %s is not a directory", dir);
  return RN_OK;
}

/* Atomically makes dir/<which> contain "<target>\n". */
static rn_status write_pointer(const char *dir, const char *which, const char *target, const fault_t *ft, rn_err *e) {
  char tmp[4096], dst[4096], tpl[64];
  snprintf(tpl, sizeof tpl, ".%s-XXXXXX.tmp", which);
  path_join(tmp, sizeof tmp, dir, tpl);
  path_join(dst, sizeof dst, dir, which);
  int fd = mkstemps(tmp, 4);
  if (fd < 0) return rn_err_set(e, RN_EIO, "cannot create %s (for pointer %s): %s", tmp, dst, strerror(errno));
  char line[300];
  int n = snprintf(line, sizeof line, "%s\n", target);
  ssize_t wr = write(fd, line, (size_t)n);
  int er = errno;
  if (wr != n || fsync(fd) != 0) {
    if (wr == n) er = errno;
    close(fd);
    unlink(tmp);
    return rn_err_set(e, RN_EIO, "cannot write pointer %s (temporary file %s): %s", dst, tmp,
                      wr >= 0 && wr < n ? "short write (disk full?)" : strerror(er));
  }
  if (close(fd) != 0) {
    er = errno;
    unlink(tmp);
    return rn_err_set(e, RN_EIO, "cannot write pointer %s (temporary file %s): %s", dst, tmp, strerror(er));
  }
  fault_kill(ft, which, -1);
  if (rename(tmp, dst) != 0) {
    er = errno;
    unlink(tmp);
    return rn_err_set(e, RN_EIO, "cannot rename %s to %s: %s", tmp, dst, strerror(er));
  }
  return fsync_path(dir, 1, e);
}

/* Reads dir/<which>; 1 and the file name if it holds a plausible checkpoint name, else 0. */
static int read_pointer(const char *dir, const char *which, char *name, size_t len, char *why, size_t wlen) {
  char p[4096];
  path_join(p, sizeof p, dir, which);
  FILE *f = fopen(p, "r");
  if (!f) {
    snprintf(why, wlen, "%s", strerror(errno));
    return 0;
  }
  char line[512] = {0};
  int ok = fgets(line, sizeof line, f) != NULL;
  fclose(f);
  line[strcspn(line, "\r\n")] = 0;
  if (!ok || parse_ckpt_name(line) < 0) {
    snprintf(why, wlen, "contents '%.100s' are not a checkpoint file name", line);
    return 0;
  }
  snprintf(name, len, "%s", line);
  return 1;
}

typedef struct {
  int64_t step;
  char name[256];
} centry;

static int cmp_desc(const void *a, const void *b) {
  int64_t x = ((const centry *)a)->step, y = ((const centry *)b)->step;
  return x < y ? 1 : x > y ? -1 : strcmp(((const centry *)a)->name, ((const centry *)b)->name);
}

/* Lists ckpt-*.h5 in dir, newest first. *n = count; returns malloc'd array (NULL if none). -1 on error. */
static int list_ckpts(const char *dir, centry **out, int *n) {
  *out = NULL, *n = 0;
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT ? 0 : -1;
  int cap = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    int64_t s = parse_ckpt_name(de->d_name);
    if (s < 0 || strlen(de->d_name) >= sizeof((centry *)0)->name) continue;
    if (*n == cap) {
      cap = cap ? cap * 2 : 16;
      centry *nw = realloc(*out, (size_t)cap * sizeof **out);
      if (!nw) {
        closedir(d);
        return -1;
      }
      *out = nw;
    }
    (*out)[*n].step = s;
    snprintf((*out)[*n].name, sizeof(*out)[*n].name, "%s", de->d_name);
    (*n)++;
  }
  closedir(d);
  if (*n) qsort(*out, (size_t)*n, sizeof **out, cmp_desc);
  return 0;
}

/* Removes temp files of a crashed writer: .ckpt-*.tmp, .latest-*.tmp, .best-*.tmp. */
static void remove_stale(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    const char *n = de->d_name;
    size_t l = strlen(n);
    if (l < 5 || strcmp(n + l - 4, ".tmp")) continue;
    if (strncmp(n, ".ckpt-", 6) && strncmp(n, ".latest-", 8) && strncmp(n, ".best-", 6)) continue;
    char p[4096];
    path_join(p, sizeof p, dir, n);
    unlink(p);
  }
  closedir(d);
}

/* Optional per-rank BN running statistics for the next save (see ckpt.h). */
static const float *g_rank_buf;
static int g_rank_buf_ranks;
static size_t g_rank_buf_n;

void rn_ckpt_set_rank_buffers(const float *data, int nranks, size_t nbuf) {
  g_rank_buf = data;
  g_rank_buf_ranks = nranks;
  g_rank_buf_n = nbuf;
}

static rn_status write_file(wctx *w, const rn_model *m, const rn_ckpt_state *st, const char *config_text,
                            const char *metrics_text, rn_err *e) {
  char det[512];
  h5guard g;
  h5_begin(&g);
  hid_t fapl = make_fapl();
  w->f = fapl >= 0 ? H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl) : -1;
  if (w->f < 0) {
    rn_status s = werr(w, e, RN_EIO, "H5Fcreate failed", h5_detail(det, sizeof det));
    if (fapl >= 0) H5Pclose(fapl);
    h5_end(&g);
    return s;
  }
  H5Pclose(fapl);
  hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
  /* keep datasets in creation (= state_dict) order for h5py / h5dump readers */
  if (gcpl >= 0) H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
  int bad = w_attr_str(w->f, "format", FORMAT_NAME) | w_attr_i32(w->f, "format_version", RN_CKPT_FORMAT_VERSION);
  hid_t gm = H5Gcreate2(w->f, "model", H5P_DEFAULT, gcpl, H5P_DEFAULT);
  hid_t go = H5Gcreate2(w->f, "optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t gmo = go >= 0 ? H5Gcreate2(go, "momentum", H5P_DEFAULT, gcpl, H5P_DEFAULT) : -1;
  bad |= gm < 0 || go < 0 || gmo < 0;
  if (gm >= 0) bad |= write_model_desc(gm, &m->cfg);
  bad |= write_state(w->f, st);
  if (gm >= 0) H5Gclose(gm);
  if (gmo >= 0) H5Gclose(gmo);
  if (go >= 0) H5Gclose(go);
  if (gcpl >= 0) H5Pclose(gcpl);
  if (bad) {
    rn_status s = werr(w, e, RN_EIO, "writing groups and attributes (/model, /state) failed", h5_detail(det, sizeof det));
    h5_end(&g);
    return s;
  }
  h5_end(&g);
  fault_kill(&w->ft, "create", -1);

  rn_status s = w_text(w, "config", config_text, e);
  if (!s) s = w_text(w, "metrics", metrics_text, e);
  size_t maxc = 1;
  for (int i = 0; i < m->nparams; i++)
    if (m->params[i].count > maxc) maxc = m->params[i].count;
  float *buf = malloc(maxc * sizeof(float));
  if (!buf) return rn_err_set(e, RN_ENOMEM, "cannot write checkpoint %s: out of memory", w->fname);
  for (int pass = 0; pass < 2 && !s; pass++) {
    for (int i = 0; i < m->nparams && !s; i++) {
      const rn_param *p = &m->params[i];
      if (pass == 1 && !p->trainable) continue;
      hsize_t dims[4];
      for (int k = 0; k < p->ndim; k++) dims[k] = (hsize_t)p->dims[k];
      to_stored(p, (pass ? m->mom : m->param) + p->off, buf);
      s = w_dataset(w, pass ? "/optim/momentum" : "/model", p->name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, p->ndim,
                    dims, buf, p->count * sizeof(float), e);
      char nb[128];
      if (!s && pass == 0 && nbt_name(p->name, nb, sizeof nb)) {
        int64_t v = st->step;
        s = w_dataset(w, "/model", nb, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, NULL, &v, sizeof v, e);
      }
    }
  }
  free(buf);
  if (!s && g_rank_buf && g_rank_buf_n > 0) {
    hsize_t dims[2] = {(hsize_t)g_rank_buf_ranks, (hsize_t)g_rank_buf_n};
    s = w_dataset(w, "", "rank_buffers", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dims, g_rank_buf,
                  (size_t)g_rank_buf_ranks * g_rank_buf_n * sizeof(float), e);
  }
  if (s) return s;
  fault_kill(&w->ft, "dataset", w->ndata);

  h5_begin(&g);
  if (H5Fflush(w->f, H5F_SCOPE_GLOBAL) < 0) {
    s = werr(w, e, RN_EIO, "H5Fflush failed", h5_detail(det, sizeof det));
    h5_end(&g);
    return s;
  }
  h5_end(&g);
  fault_kill(&w->ft, "flush", -1);
  h5_begin(&g);
  herr_t rc = H5Fclose(w->f);
  if (rc < 0) {
    s = werr(w, e, RN_EIO, "H5Fclose failed", h5_detail(det, sizeof det));
    if (H5Iis_valid(w->f) <= 0) w->f = -1; /* else the error path retries after freeing space */
  } else {
    w->f = -1;
  }
  h5_end(&g);
  return s;
}

rn_status rn_ckpt_save(const char *dir, const rn_model *m, const rn_ckpt_state *st, const char *config_text,
                       const char *metrics_text, int keep, rn_err *e) {
  RN_ASSERT(dir && m && st && m->params && m->param);
  RN_ASSERT(m->ntrain == 0 || m->mom);
  wctx w;
  memset(&w, 0, sizeof w);
  w.f = -1;
  rn_status s = fault_parse(&w.ft, e);
  if (s) return s;
  if (st->step < 0) return rn_err_set(e, RN_EINVAL, "rn_ckpt_save: step %lld is negative", (long long)st->step);
  s = mkdir_p(dir, e);
  if (s) return s;
  remove_stale(dir);

  char fname[64], tmp[4096], dst[4096];
  rn_ckpt_filename(st->step, fname, sizeof fname);
  path_join(tmp, sizeof tmp, dir, ".ckpt-XXXXXX.tmp");
  path_join(dst, sizeof dst, dir, fname);
  w.tmp = tmp, w.fname = dst;
  int fd = mkstemps(tmp, 4);
  if (fd < 0) return rn_err_set(e, RN_EIO, "cannot write checkpoint %s: cannot create temporary file %s: %s", dst, tmp,
                                strerror(errno));
  close(fd);

  s = write_file(&w, m, st, config_text, metrics_text, e);
  if (!s) {
    s = fsync_path(tmp, 0, e);
    if (s) rn_err_prefix(e, "cannot write checkpoint %s", dst);
  }
  if (!s) {
    fault_kill(&w.ft, "fsync", -1);
    if (rename(tmp, dst) != 0)
      s = rn_err_set(e, RN_EIO, "cannot write checkpoint %s: rename of %s failed: %s", dst, tmp, strerror(errno));
  }
  if (s) {
    if (w.f >= 0) {
      h5guard g;
      h5_begin(&g);
      /* On a full disk H5Fclose fails flushing metadata and leaves a half-closed file id behind
       * (HDF5 then crashes at exit). The file is garbage anyway: free its space first so the
       * close can flush, and retry once. */
      if (truncate(tmp, 0) != 0) { /* nothing else to do: unlink below */
      }
      for (int k = 0; k < 2 && H5Iis_valid(w.f) > 0; k++) H5Fclose(w.f);
      H5Eclear2(H5E_DEFAULT);
      h5_end(&g);
    }
    unlink(tmp);
    return s;
  }
  fault_kill(&w.ft, "rename", -1);
  s = fsync_path(dir, 1, e);
  if (s) return rn_err_prefix(e, "checkpoint %s written but not made durable", dst);

  /* the new checkpoint is complete: point `latest` at it */
  s = write_pointer(dir, "latest", fname, &w.ft, e);
  if (s) return s;

  /* best by validation error */
  char bname[256], why[256];
  int have_best = read_pointer(dir, "best", bname, sizeof bname, why, sizeof why);
  if (st->val_err >= 0) {
    int better = 1;
    if (have_best && strcmp(bname, fname)) {
      char bp[4096];
      rn_ckpt_state bs;
      rn_err be;
      path_join(bp, sizeof bp, dir, bname);
      if (rn_ckpt_read_state(bp, &bs, &be) == RN_OK && bs.val_err >= 0 && bs.val_err <= st->val_err) better = 0;
    }
    if (better) {
      s = write_pointer(dir, "best", fname, &w.ft, e);
      if (s) return s;
      snprintf(bname, sizeof bname, "%s", fname);
      have_best = 1;
    }
  }
  fault_kill(&w.ft, "prune", -1);

  /* prune: of the checkpoints older than this one keep the newest keep-1 and the best */
  if (keep > 0) {
    centry *list;
    int n;
    if (list_ckpts(dir, &list, &n) == 0) {
      int kept = 1, removed = 0;
      for (int i = 0; i < n; i++) {
        if (list[i].step >= st->step) continue;
        if (kept < keep) {
          kept++;
          continue;
        }
        if (have_best && !strcmp(list[i].name, bname)) continue;
        char p[4096];
        path_join(p, sizeof p, dir, list[i].name);
        if (unlink(p) == 0) removed++;
        else fprintf(stderr, "rn_ckpt_save: warning: cannot delete old checkpoint %s: %s\n", p, strerror(errno));
      }
      free(list);
      if (removed) {
        rn_err de;
        if (fsync_path(dir, 1, &de)) fprintf(stderr, "rn_ckpt_save: warning: %s\n", de.msg);
      }
    }
  }
  return RN_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Reader                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Opens a checkpoint read-only and checks format name and version. Caller holds the guard. */
static rn_status r_open(const char *path, hid_t *out, rn_err *e) {
  char det[512];
  struct stat sb;
  if (stat(path, &sb) != 0) return rn_err_set(e, RN_EIO, "cannot open checkpoint %s: %s", path, strerror(errno));
  if (!S_ISREG(sb.st_mode)) return rn_err_set(e, RN_EIO, "checkpoint %s is not a regular file", path);
  if (sb.st_size == 0) return rn_err_set(e, RN_EFORMAT, "checkpoint %s is empty (0 bytes; not an HDF5 file)", path);
  htri_t is = H5Fis_hdf5(path);
  if (is <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s is not an HDF5 file (no HDF5 signature; %lld bytes)", path,
                      (long long)sb.st_size);
  }
  hid_t fapl = make_fapl();
  hid_t f = fapl >= 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
  if (f < 0) {
    rn_err_set(e, RN_EFORMAT, "cannot open checkpoint %s as HDF5 (truncated or corrupted?): %s", path,
               h5_detail(det, sizeof det));
    if (fapl >= 0) H5Pclose(fapl);
    return RN_EFORMAT;
  }
  H5Pclose(fapl);
  char fmt[64];
  int rc = r_attr_str(f, "/", "format", fmt, sizeof fmt);
  if (rc || strcmp(fmt, FORMAT_NAME)) {
    H5Fclose(f);
    H5Eclear2(H5E_DEFAULT);
    return rn_err_set(e, RN_EFORMAT, "%s is not a resnet-mpi checkpoint (attribute /format %s)", path,
                      rc ? "missing" : "has another value");
  }
  int64_t ver;
  rc = r_attr(f, "/", "format_version", H5T_INTEGER, H5T_NATIVE_INT64, &ver);
  if (rc) {
    H5Fclose(f);
    return attr_err(e, rc, path, "/", "format_version", "integer");
  }
  if (ver > RN_CKPT_FORMAT_VERSION || ver < 1) {
    H5Fclose(f);
    if (ver > RN_CKPT_FORMAT_VERSION)
      return rn_err_set(e, RN_EFORMAT, "checkpoint %s has format version %lld, newer than this build supports (%d): "
                        "use a newer resnet-mpi", path, (long long)ver, RN_CKPT_FORMAT_VERSION);
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: attribute /format_version is %lld (invalid)", path, (long long)ver);
  }
  *out = f;
  return RN_OK;
}

/* Reads a whole dataset's stored bytes (memory type = file type, no conversion), checks crc32.
 * If ftype_want >= 0 the file type must equal it; ndim_want >= 0: rank and dims must match.
 * *buf: malloc'd if *buf == NULL on entry, else must have room (cap bytes). Caller holds guard. */
static rn_status r_raw(hid_t f, const char *path, const char *full, hid_t ftype_want, int ndim_want,
                       const hsize_t *dims_want, void **buf, size_t cap, size_t *nbytes, int *ndim_out,
                       hsize_t *dims_out, hid_t *type_out, rn_err *e) {
  char det[512];
  if (H5Lexists(f, full, H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: required dataset %s is missing", path, full);
  }
  hid_t d = H5Dopen2(f, full, H5P_DEFAULT);
  if (d < 0) return rn_err_set(e, RN_EFORMAT, "checkpoint %s: %s is not a readable dataset: %s", path, full, h5_detail(det, sizeof det));
  hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
  rn_status s = RN_OK;
  void *mine = NULL;
  if (t < 0 || sp < 0) {
    s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset %s: cannot read type/shape: %s", path, full, h5_detail(det, sizeof det));
    goto out;
  }
  if (H5Tis_variable_str(t) > 0 || H5Tget_class(t) == H5T_VLEN || H5Tget_class(t) == H5T_REFERENCE) {
    s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset %s has a variable-length type (not supported)", path, full);
    goto out;
  }
  if (ftype_want >= 0 && H5Tequal(t, ftype_want) <= 0) {
    s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset %s has the wrong data type (class %d, %zu bytes)", path, full,
                   (int)H5Tget_class(t), H5Tget_size(t));
    goto out;
  }
  int nd = H5Sget_simple_extent_ndims(sp);
  hsize_t dims[H5S_MAX_RANK];
  if (nd < 0 || nd > 4 || H5Sget_simple_extent_dims(sp, dims, NULL) < 0) {
    s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset %s has an unsupported shape (rank %d)", path, full, nd);
    goto out;
  }
  if (ndim_want >= 0) {
    int same = nd == ndim_want;
    for (int k = 0; same && k < nd; k++) same = dims[k] == dims_want[k];
    if (!same) {
      char a[96] = "", b[96] = "";
      for (int k = 0; k < nd; k++) snprintf(a + strlen(a), sizeof a - strlen(a), "%s%llu", k ? "," : "", (unsigned long long)dims[k]);
      for (int k = 0; k < ndim_want; k++)
        snprintf(b + strlen(b), sizeof b - strlen(b), "%s%llu", k ? "," : "", (unsigned long long)dims_want[k]);
      s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset %s has shape [%s] but this model expects [%s]", path, full, a, b);
      goto out;
    }
  }
  hssize_t np = H5Sget_simple_extent_npoints(sp);
  size_t nb = (size_t)np * H5Tget_size(t);
  if (*buf && nb > cap) {
    s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset %s is larger than expected (%zu bytes)", path, full, nb);
    goto out;
  }
  if (!*buf) {
    mine = malloc(nb ? nb : 1);
    if (!mine) {
      s = rn_err_set(e, RN_ENOMEM, "checkpoint %s: dataset %s: out of memory (%zu bytes)", path, full, nb);
      goto out;
    }
  }
  void *dst = *buf ? *buf : mine;
  if (nb && H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0) {
    s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset %s: read failed: %s", path, full, h5_detail(det, sizeof det));
    goto out;
  }
  uint32_t stored;
  int rc = r_attr(d, ".", "crc32", H5T_INTEGER, H5T_NATIVE_UINT32, &stored);
  if (rc) {
    s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset %s has %s crc32 attribute", path, full, rc == -1 ? "no" : "an invalid");
    goto out;
  }
  uint32_t crc = crc_bytes(dst, nb);
  if (crc != stored) {
    s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: checksum mismatch in dataset %s (stored crc32 %08x, data %08x): the file is "
                   "corrupted", path, full, stored, crc);
    goto out;
  }
  if (nbytes) *nbytes = nb;
  if (ndim_out) *ndim_out = nd;
  if (dims_out) memcpy(dims_out, dims, sizeof(hsize_t) * (size_t)nd);
  if (type_out) *type_out = H5Tcopy(t);
  if (mine) *buf = mine, mine = NULL;
out:
  free(mine);
  if (t >= 0) H5Tclose(t);
  if (sp >= 0) H5Sclose(sp);
  H5Dclose(d);
  H5Eclear2(H5E_DEFAULT);
  return s;
}

static rn_status r_text(hid_t f, const char *path, const char *name, char **out, rn_err *e) {
  void *buf = NULL;
  size_t nb = 0;
  hid_t t = -1;
  char full[64];
  snprintf(full, sizeof full, "/%s", name);
  rn_status s = r_raw(f, path, full, -1, 0, NULL, &buf, 0, &nb, NULL, NULL, &t, e);
  if (s) return s;
  int ok = H5Tget_class(t) == H5T_STRING;
  H5Tclose(t);
  if (!ok) {
    free(buf);
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset %s is not a string", path, full);
  }
  char *r = malloc(nb + 1);
  if (!r) {
    free(buf);
    return rn_err_set(e, RN_ENOMEM, "checkpoint %s: out of memory", path);
  }
  memcpy(r, buf, nb);
  r[nb] = 0;
  free(buf);
  *out = r;
  return RN_OK;
}

/* Names of the links in group `grp` (malloc'd array of malloc'd strings). */
static int list_links(hid_t f, const char *grp, char ***names, int *n) {
  *names = NULL, *n = 0;
  hid_t g = H5Gopen2(f, grp, H5P_DEFAULT);
  if (g < 0) return -1;
  H5G_info_t info;
  if (H5Gget_info(g, &info) < 0) {
    H5Gclose(g);
    return -1;
  }
  char **r = calloc(info.nlinks ? info.nlinks : 1, sizeof *r);
  int k = 0;
  for (hsize_t i = 0; r && i < info.nlinks; i++) {
    ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, NULL, 0, H5P_DEFAULT);
    if (len < 0) break;
    r[k] = malloc((size_t)len + 1);
    if (!r[k]) break;
    H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, r[k], (size_t)len + 1, H5P_DEFAULT);
    k++;
  }
  H5Gclose(g);
  *names = r, *n = k;
  return (r && (hsize_t)k == info.nlinks) ? 0 : -1;
}

static void free_links(char **names, int n) {
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);
}

static int ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && !strcmp(s + a - b, suf);
}

/* Full check without a model. Caller holds the guard; f open. */
static rn_status verify_h(hid_t f, const char *path, rn_err *e) {
  rn_ckpt_state st;
  rn_model_config c;
  rn_status s = read_state_h(f, path, &st, e);
  if (!s) s = read_model_desc_h(f, path, &c, e);
  if (s) return s;
  static const char *root_ok[] = {"model", "optim", "state", "config", "metrics", "rank_buffers"};
  char **rl;
  int rn;
  if (list_links(f, "/", &rl, &rn)) return rn_err_set(e, RN_EFORMAT, "checkpoint %s: cannot list /", path);
  for (int i = 0; i < rn && !s; i++) {
    int ok = 0;
    for (int k = 0; k < 6; k++) ok |= !strcmp(rl[i], root_ok[k]);
    if (!ok) s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: unexpected object /%s", path, rl[i]);
  }
  free_links(rl, rn);
  if (s) return s;
  if (H5Lexists(f, "/rank_buffers", H5P_DEFAULT) > 0) {
    void *b = NULL;
    s = r_raw(f, path, "/rank_buffers", H5T_IEEE_F32LE, -1, NULL, &b, 0, NULL, NULL, NULL, NULL, e);
    free(b);
    if (s) return s;
  }
  H5Eclear2(H5E_DEFAULT);
  char *txt = NULL;
  s = r_text(f, path, "config", &txt, e);
  free(txt), txt = NULL;
  if (!s) s = r_text(f, path, "metrics", &txt, e);
  free(txt);
  if (s) return s;
  if (H5Lexists(f, "/optim", H5P_DEFAULT) <= 0 || H5Lexists(f, "/optim/momentum", H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: required group /optim/momentum is missing", path);
  }
  char **mn, **on;
  int nm, no;
  if (list_links(f, "/model", &mn, &nm)) return rn_err_set(e, RN_EFORMAT, "checkpoint %s: cannot list /model", path);
  if (list_links(f, "/optim/momentum", &on, &no)) {
    free_links(mn, nm);
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: cannot list /optim/momentum", path);
  }
  if (nm == 0) s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: /model holds no parameters", path);
  char full[512];
  for (int i = 0; i < nm && !s; i++) {
    snprintf(full, sizeof full, "/model/%s", mn[i]);
    int nbt = ends_with(mn[i], ".num_batches_tracked");
    hsize_t none[1] = {0};
    void *b = NULL;
    s = r_raw(f, path, full, nbt ? H5T_STD_I64LE : H5T_IEEE_F32LE, nbt ? 0 : -1, none, &b, 0, NULL, NULL, NULL, NULL, e);
    free(b);
  }
  /* momentum: same shape as its parameter */
  for (int i = 0; i < no && !s; i++) {
    snprintf(full, sizeof full, "/model/%s", on[i]);
    int nd = 0;
    hsize_t dims[4];
    void *b = NULL;
    if (H5Lexists(f, full, H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: momentum buffer /optim/momentum/%s has no parameter %s", path, on[i], full);
      break;
    }
    s = r_raw(f, path, full, H5T_IEEE_F32LE, -1, NULL, &b, 0, NULL, &nd, dims, NULL, e);
    free(b), b = NULL;
    if (s) break;
    snprintf(full, sizeof full, "/optim/momentum/%s", on[i]);
    s = r_raw(f, path, full, H5T_IEEE_F32LE, nd, dims, &b, 0, NULL, NULL, NULL, NULL, e);
    free(b);
  }
  free_links(mn, nm);
  free_links(on, no);
  return s;
}

rn_status rn_ckpt_verify(const char *path, rn_err *e) {
  h5guard g;
  h5_begin(&g);
  hid_t f;
  rn_status s = r_open(path, &f, e);
  if (!s) {
    s = verify_h(f, path, e);
    H5Fclose(f);
  }
  H5Eclear2(H5E_DEFAULT);
  h5_end(&g);
  return s;
}

rn_status rn_ckpt_read_state(const char *path, rn_ckpt_state *st, rn_err *e) {
  h5guard g;
  h5_begin(&g);
  hid_t f;
  rn_status s = r_open(path, &f, e);
  if (!s) {
    s = read_state_h(f, path, st, e);
    H5Fclose(f);
  }
  H5Eclear2(H5E_DEFAULT);
  h5_end(&g);
  return s;
}

rn_status rn_ckpt_read_config(const char *path, rn_model_config *c, rn_err *e) {
  h5guard g;
  h5_begin(&g);
  hid_t f;
  rn_status s = r_open(path, &f, e);
  if (!s) {
    s = read_model_desc_h(f, path, c, e);
    H5Fclose(f);
  }
  H5Eclear2(H5E_DEFAULT);
  h5_end(&g);
  return s;
}

rn_status rn_ckpt_read_text(const char *path, const char *name, char **out, rn_err *e) {
  if (strcmp(name, "config") && strcmp(name, "metrics"))
    return rn_err_set(e, RN_EINVAL, "rn_ckpt_read_text: unknown text '%s' (config or metrics)", name);
  h5guard g;
  h5_begin(&g);
  hid_t f;
  rn_status s = r_open(path, &f, e);
  if (!s) {
    s = r_text(f, path, name, out, e);
    H5Fclose(f);
  }
  H5Eclear2(H5E_DEFAULT);
  h5_end(&g);
  return s;
}

static int find_param(const rn_model *m, const char *name) {
  for (int i = 0; i < m->nparams; i++)
    if (!strcmp(m->params[i].name, name)) return i;
  return -1;
}

static rn_status load_h(hid_t f, const char *path, rn_model *m, rn_ckpt_state *st, char **config_text, rn_err *e) {
  rn_ckpt_state s0;
  rn_model_config c;
  rn_status s = read_state_h(f, path, &s0, e);
  if (!s) s = read_model_desc_h(f, path, &c, e);
  if (!s) s = compare_desc(path, &c, &m->cfg, e);
  if (s) return s;
  /* dataset sets: exactly the model's */
  char **mn, **on;
  int nm, no;
  if (list_links(f, "/model", &mn, &nm)) return rn_err_set(e, RN_EFORMAT, "checkpoint %s: cannot list /model", path);
  if (H5Lexists(f, "/optim", H5P_DEFAULT) <= 0 || H5Lexists(f, "/optim/momentum", H5P_DEFAULT) <= 0 ||
      list_links(f, "/optim/momentum", &on, &no)) {
    H5Eclear2(H5E_DEFAULT);
    free_links(mn, nm);
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: required group /optim/momentum is missing", path);
  }
  for (int i = 0; i < nm && !s; i++) {
    int k = find_param(m, mn[i]);
    if (k < 0 && ends_with(mn[i], ".num_batches_tracked")) {
      char rm[160];
      snprintf(rm, sizeof rm, "%.*s.running_mean", (int)(strlen(mn[i]) - strlen(".num_batches_tracked")), mn[i]);
      if (find_param(m, rm) >= 0) continue;
    }
    if (k < 0) s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset /model/%s is not a parameter of this model (%s)", path, mn[i], m->cfg.arch);
  }
  for (int i = 0; i < no && !s; i++) {
    int k = find_param(m, on[i]);
    if (k < 0 || !m->params[k].trainable)
      s = rn_err_set(e, RN_EFORMAT, "checkpoint %s: dataset /optim/momentum/%s is not a trainable parameter of this model", path, on[i]);
  }
  free_links(mn, nm);
  free_links(on, no);
  if (s) return s;

  /* read everything into staging buffers (stored layout), checking shape and crc */
  size_t tot = 0;
  for (int i = 0; i < m->nparams; i++) tot += m->params[i].count * (m->params[i].trainable ? 2 : 1);
  float *stage = malloc((tot ? tot : 1) * sizeof(float));
  if (!stage) return rn_err_set(e, RN_ENOMEM, "checkpoint %s: out of memory staging %zu floats", path, tot);
  char full[256];
  float *p = stage;
  for (int pass = 0; pass < 2 && !s; pass++)
    for (int i = 0; i < m->nparams && !s; i++) {
      const rn_param *q = &m->params[i];
      if (pass == 1 && !q->trainable) continue;
      hsize_t dims[4];
      for (int k = 0; k < q->ndim; k++) dims[k] = (hsize_t)q->dims[k];
      snprintf(full, sizeof full, "%s/%s", pass ? "/optim/momentum" : "/model", q->name);
      void *b = p;
      s = r_raw(f, path, full, H5T_IEEE_F32LE, q->ndim, dims, &b, q->count * sizeof(float), NULL, NULL, NULL, NULL, e);
      p += q->count;
      char nb[160];
      if (!s && pass == 0 && nbt_name(q->name, nb, sizeof nb)) {
        int64_t v;
        void *vb = &v;
        snprintf(full, sizeof full, "/model/%s", nb);
        s = r_raw(f, path, full, H5T_STD_I64LE, 0, NULL, &vb, sizeof v, NULL, NULL, NULL, NULL, e);
      }
    }
  char *cfg = NULL, *met = NULL;
  if (!s) s = r_text(f, path, "config", &cfg, e);
  if (!s) s = r_text(f, path, "metrics", &met, e);
  free(met);
  if (s) {
    free(cfg);
    free(stage);
    return s;
  }
  /* everything verified: commit */
  p = stage;
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < m->nparams; i++) {
      const rn_param *q = &m->params[i];
      if (pass == 1 && !q->trainable) continue;
      from_stored(q, p, (pass ? m->mom : m->param) + q->off);
      p += q->count;
    }
  free(stage);
  if (st) *st = s0;
  if (config_text) *config_text = cfg;
  else free(cfg);
  return RN_OK;
}

rn_status rn_ckpt_load(const char *path, rn_model *m, rn_ckpt_state *st, char **config_text, rn_err *e) {
  RN_ASSERT(path && m && m->params && m->param);
  RN_ASSERT(m->ntrain == 0 || m->mom);
  h5guard g;
  h5_begin(&g);
  hid_t f;
  rn_status s = r_open(path, &f, e);
  if (!s) {
    s = load_h(f, path, m, st, config_text, e);
    H5Fclose(f);
  }
  H5Eclear2(H5E_DEFAULT);
  h5_end(&g);
  return s;
}

rn_status rn_ckpt_find_resume(const char *dir, char *path, size_t len, int *found, FILE *warn, rn_err *e) {
  *found = 0;
  struct stat sb;
  if (stat(dir, &sb) != 0) {
    if (errno == ENOENT) return RN_OK;
    return rn_err_set(e, RN_EIO, "checkpoint directory %s: %s", dir, strerror(errno));
  }
  if (!S_ISDIR(sb.st_mode)) return rn_err_set(e, RN_EIO, "checkpoint directory %s is not a directory", dir);
  centry *list;
  int n;
  if (list_ckpts(dir, &list, &n)) return rn_err_set(e, RN_EIO, "cannot list checkpoint directory %s: %s", dir, strerror(errno));
  char lname[256], why[300], p[4096];
  rn_err ve;
  int have_latest = read_pointer(dir, "latest", lname, sizeof lname, why, sizeof why);
  if (have_latest) {
    path_join(p, sizeof p, dir, lname);
    if (rn_ckpt_verify(p, &ve) == RN_OK) goto ok;
    if (warn) fprintf(warn, "warning: checkpoint %s (named by %s/latest) is not usable: %s; trying older checkpoints\n", p, dir, ve.msg);
  } else if (n > 0 && warn) {
    fprintf(warn, "warning: %s/latest is not usable (%s); trying checkpoints newest first\n", dir, why);
  }
  for (int i = 0; i < n; i++) {
    if (have_latest && !strcmp(list[i].name, lname)) continue;
    path_join(p, sizeof p, dir, list[i].name);
    if (rn_ckpt_verify(p, &ve) == RN_OK) goto ok;
    if (warn) fprintf(warn, "warning: skipping invalid checkpoint %s: %s\n", p, ve.msg);
  }
  free(list);
  return RN_OK;
ok:
  free(list);
  if (strlen(p) + 1 > len) return rn_err_set(e, RN_EINVAL, "checkpoint path %s is longer than the buffer (%zu)", p, len);
  memcpy(path, p, strlen(p) + 1);
  *found = 1;
  return RN_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Tools: info and diff                                                                        */
/* ------------------------------------------------------------------------------------------ */

static void shape_str(char *b, size_t len, int nd, const hsize_t *dims) {
  b[0] = 0;
  snprintf(b, len, "[");
  for (int k = 0; k < nd; k++) snprintf(b + strlen(b), len - strlen(b), "%s%llu", k ? "," : "", (unsigned long long)dims[k]);
  snprintf(b + strlen(b), len - strlen(b), "]");
}

static const char *type_str(hid_t t) {
  if (H5Tequal(t, H5T_IEEE_F32LE) > 0) return "float32";
  if (H5Tequal(t, H5T_STD_I64LE) > 0) return "int64";
  if (H5Tget_class(t) == H5T_STRING) return "string";
  return "other";
}

rn_status rn_ckpt_info(const char *path, FILE *out, rn_err *e) {
  rn_ckpt_state st;
  rn_model_config c;
  rn_status s = rn_ckpt_read_state(path, &st, e);
  if (!s) s = rn_ckpt_read_config(path, &c, e);
  if (s) return s;
  fprintf(out, "checkpoint %s (format %s version %d)\n", path, FORMAT_NAME, RN_CKPT_FORMAT_VERSION);
  fprintf(out, "state: epoch %lld step %lld epoch_offset %lld samples %lld nranks %d global_batch %d seed %llu\n"
               "       lr %.9g val_err %.6g best_val_err %.6g flags 0x%x\n",
          (long long)st.epoch, (long long)st.step, (long long)st.epoch_offset, (long long)st.samples, st.nranks,
          st.global_batch, (unsigned long long)st.seed, st.lr, st.val_err, st.best_val_err, (unsigned)st.flags);
  fprintf(out, "model: arch %s depth %d bottleneck %d cifar %d plain %d shortcut %s preact %d stride_in_1x1 %d\n"
               "       zero_init_residual %d sd_pl %g input %dx%dx%d classes %d width %d bn_momentum %g bn_eps %g\n",
          c.arch, c.depth, c.bottleneck, c.cifar, c.plain, shortcut_name((int)c.shortcut), c.preact, c.stride_in_1x1,
          c.zero_init_residual, (double)c.sd_pl, c.in_channels, c.in_h, c.in_w, c.num_classes, c.width, (double)c.bn_momentum,
          (double)c.bn_eps);
  h5guard g;
  h5_begin(&g);
  hid_t f;
  s = r_open(path, &f, e);
  if (s) {
    h5_end(&g);
    return s;
  }
  const char *groups[3] = {"/model", "/optim/momentum", "/"};
  size_t total = 0;
  int nds = 0, nbad = 0;
  for (int gi = 0; gi < 3; gi++) {
    char **nm;
    int n;
    if (list_links(f, groups[gi], &nm, &n)) continue;
    for (int i = 0; i < n; i++) {
      char full[512];
      snprintf(full, sizeof full, "%s%s%s", groups[gi], gi == 2 ? "" : "/", nm[i]);
      if (gi == 2 && strcmp(nm[i], "config") && strcmp(nm[i], "metrics")) continue;
      void *b = NULL;
      size_t nb = 0;
      int nd = 0;
      hsize_t dims[4];
      hid_t t = -1;
      rn_err de;
      rn_status ds = r_raw(f, path, full, -1, -1, NULL, &b, 0, &nb, &nd, dims, &t, &de);
      char sh[96] = "?";
      if (!ds) shape_str(sh, sizeof sh, nd, dims);
      fprintf(out, "  %-48s %-8s %-16s %10zu B  %s\n", full, t >= 0 ? type_str(t) : "?", sh, nb,
              ds ? de.msg : "crc ok");
      if (t >= 0) H5Tclose(t);
      free(b);
      total += nb, nds++, nbad += ds != 0;
    }
    free_links(nm, n);
  }
  H5Fclose(f);
  H5Eclear2(H5E_DEFAULT);
  h5_end(&g);
  fprintf(out, "%d datasets, %zu bytes of data, %d with errors\n", nds, total, nbad);
  char *cfg = NULL;
  if (rn_ckpt_read_text(path, "config", &cfg, e) == RN_OK) {
    fprintf(out, "config:\n%s%s", cfg, (*cfg && cfg[strlen(cfg) - 1] != '\n') ? "\n" : "");
    free(cfg);
  }
  s = rn_ckpt_verify(path, e);
  fprintf(out, "verify: %s\n", s ? e->msg : "ok");
  return s;
}

static rn_status diff_group(hid_t fa, hid_t fb, const char *pa, const char *pb, const char *grp, FILE *out, int *ndiff,
                            rn_err *e) {
  char **an, **bn;
  int na, nbn;
  if (list_links(fa, grp, &an, &na)) return rn_err_set(e, RN_EFORMAT, "checkpoint %s: cannot list %s", pa, grp);
  if (list_links(fb, grp, &bn, &nbn)) {
    free_links(an, na);
    return rn_err_set(e, RN_EFORMAT, "checkpoint %s: cannot list %s", pb, grp);
  }
  rn_status s = RN_OK;
  for (int i = 0; i < na && !s; i++) {
    char full[512];
    snprintf(full, sizeof full, "%s/%s", grp, an[i]);
    if (ends_with(an[i], ".num_batches_tracked")) continue; /* = step, not a parameter */
    void *a = NULL, *b = NULL;
    size_t nba = 0, nbb = 0;
    int nda = 0, ndb = 0;
    hsize_t da[4], db[4];
    hid_t ta = -1, tb = -1;
    s = r_raw(fa, pa, full, -1, -1, NULL, &a, 0, &nba, &nda, da, &ta, e);
    if (s) break;
    if (H5Lexists(fb, full, H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      if (!(*ndiff)++) fprintf(out, "%s: present in %s only\n", full, pa);
      free(a), H5Tclose(ta);
      continue;
    }
    s = r_raw(fb, pb, full, -1, -1, NULL, &b, 0, &nbb, &ndb, db, &tb, e);
    if (s) {
      free(a), H5Tclose(ta);
      break;
    }
    char sa[96], sb[96];
    shape_str(sa, sizeof sa, nda, da);
    shape_str(sb, sizeof sb, ndb, db);
    if (H5Tequal(ta, tb) <= 0 || strcmp(sa, sb)) {
      if (!(*ndiff)++) fprintf(out, "%s: %s %s vs %s %s\n", full, type_str(ta), sa, type_str(tb), sb);
    } else if (memcmp(a, b, nba)) {
      if (!(*ndiff)++) {
        if (H5Tequal(ta, H5T_IEEE_F32LE) > 0) {
          const float *x = a, *y = b;
          size_t n = nba / 4, cnt = 0, first = 0;
          double md = 0;
          for (size_t k = 0; k < n; k++)
            if (memcmp(x + k, y + k, 4)) {
              if (!cnt++) first = k;
              double d = fabs((double)x[k] - (double)y[k]);
              if (!(d <= md)) md = d;
            }
          fprintf(out, "%s: %zu of %zu elements differ, max abs diff %.9g (first at flat index %zu: %.9g vs %.9g)\n", full,
                  cnt, n, md, first, (double)x[first], (double)y[first]);
        } else if (H5Tequal(ta, H5T_STD_I64LE) > 0 && nba == 8) {
          int64_t x, y;
          memcpy(&x, a, 8), memcpy(&y, b, 8);
          fprintf(out, "%s: %lld vs %lld\n", full, (long long)x, (long long)y);
        } else {
          fprintf(out, "%s: contents differ\n", full);
        }
      }
    }
    free(a), free(b), H5Tclose(ta), H5Tclose(tb);
  }
  for (int i = 0; i < nbn && !s; i++) {
    char full[512];
    snprintf(full, sizeof full, "%s/%s", grp, bn[i]);
    if (H5Lexists(fa, full, H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      if (!(*ndiff)++) fprintf(out, "%s: present in %s only\n", full, pb);
    }
  }
  free_links(an, na);
  free_links(bn, nbn);
  return s;
}

rn_status rn_ckpt_diff(const char *a, const char *b, int params_only, FILE *out, int *identical, rn_err *e) {
  *identical = 0;
  rn_status s = rn_ckpt_verify(a, e);
  if (!s) s = rn_ckpt_verify(b, e);
  if (s) return s;
  h5guard g;
  h5_begin(&g);
  hid_t fa, fb;
  s = r_open(a, &fa, e);
  if (s) {
    h5_end(&g);
    return s;
  }
  s = r_open(b, &fb, e);
  if (s) {
    H5Fclose(fa);
    h5_end(&g);
    return s;
  }
  int nd = 0;
  s = diff_group(fa, fb, a, b, "/model", out, &nd, e);
  if (!s && !params_only) s = diff_group(fa, fb, a, b, "/optim/momentum", out, &nd, e);
  H5Fclose(fa);
  H5Fclose(fb);
  H5Eclear2(H5E_DEFAULT);
  h5_end(&g);
  if (s) return s;
  if (nd > 1) fprintf(out, "(%d datasets differ in total)\n", nd);
  *identical = nd == 0;
  return RN_OK;
}

rn_status rn_ckpt_read_rank_buffers(const char *path, int rank, int nranks, float *out, size_t nbuf, int *found,
                                    rn_err *e) {
  *found = 0;
  h5guard g;
  h5_begin(&g);
  hid_t f;
  rn_status s = r_open(path, &f, e);
  if (s) {
    h5_end(&g);
    return s;
  }
  if (H5Lexists(f, "/rank_buffers", H5P_DEFAULT) > 0) {
    void *b = NULL;
    int nd = 0;
    hsize_t dims[4];
    s = r_raw(f, path, "/rank_buffers", H5T_IEEE_F32LE, -1, NULL, &b, 0, NULL, &nd, dims, NULL, e);
    if (!s && nd == 2 && dims[0] == (hsize_t)nranks && dims[1] == (hsize_t)nbuf && rank < nranks) {
      memcpy(out, (const float *)b + (size_t)rank * nbuf, nbuf * sizeof(float));
      *found = 1;
    }
    free(b);
  }
  H5Eclear2(H5E_DEFAULT);
  H5Fclose(f);
  h5_end(&g);
  return s;
}
