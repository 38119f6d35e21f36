/* BN statistics from the convolution epilogue, and the BN backward channel sums from the dx
 * epilogue of the convolution that reads the BN's output (rn_model.bn_epilogue, RN_BN_EPILOGUE), against the
 * same model computing them in the BN's own pass: two training steps (SGD update between, so the
 * running statistics and weights move), a partial batch, for basic and bottleneck blocks, post- and
 * pre-activation, stochastic depth; widths that are multiples of 16, so the convolutions run on the
 * direct kernel and the epilogue path is taken (checked). The statistics are double sums of the
 * same float outputs in another order, so the results agree to rounding (in practice bitwise). */
#include <math.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/model.h"
#include "rn/optim.h"
#include "testutil.h"

typedef struct {
  const char *tag, *arch;
  int preact, width, hw, batch;
  float sd_pl;
} ecase;

static const ecase cases[] = {
    {"cifar-resnet8 w16 32x32", "cifar-resnet8", 0, 16, 32, 6, 1.0f},
    {"cifar-resnet14 w16 preact, stochastic depth", "cifar-resnet14", 1, 16, 16, 4, 0.5f},
    {"cifar-resnet14 w16 stochastic depth", "cifar-resnet14", 0, 16, 16, 4, 0.3f}, /* BN+add, scaled branches */
    {"resnet18 w16 56x56", "resnet18", 0, 16, 56, 2, 1.0f},
    {"resnet50 w16 64x64", "resnet50", 0, 16, 64, 2, 1.0f},
};

static double relmax(const float *a, const float *b, size_t n) {
  double md = 0, mb = 1e-30;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!(d <= md)) md = d; /* NaN counts */
    if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
  }
  return md / mb;
}

typedef struct {
  rn_model m;
  double loss[3];
  float *logits, *grad, *state;
  int used;  /* BN nodes that took the epilogue's statistics in the last training forward */
  int bused; /* BN nodes whose backward sums came from a dx epilogue */
} out_t;

static int run(const ecase *ec, int epilogue, out_t *o) {
  rn_model_config c;
  rn_err e = {0};
  rn_model_config_default(&c);
  if (rn_model_config_arch(&c, ec->arch, &e)) {
    CHECK(0, "%s: %s", ec->tag, e.msg);
    return 1;
  }
  c.preact = ec->preact;
  c.width = ec->width;
  c.in_h = c.in_w = ec->hw;
  c.num_classes = 7;
  c.sd_pl = ec->sd_pl;
  if (rn_model_build(&o->m, &c, ec->batch, &e)) {
    CHECK(0, "%s: %s", ec->tag, e.msg);
    return 1;
  }
  rn_model *m = &o->m;
  m->bn_epilogue = epilogue;
  rn_model_init(m, 21);
  rn_rng r = rn_rng_make(rn_key(9, 8, 7, 6));
  int n = ec->batch;
  int32_t labels[16];
  for (int i = 0; i < n; i++) labels[i] = (int32_t)rn_rng_below(&r, 7);
  size_t nin = (size_t)n * ec->hw * ec->hw * 3;
  float *x = rn_model_input(m);
  for (size_t i = 0; i < nin; i++) x[i] = rn_rng_normal(&r);
  rn_model_set_step(m, 3, 1);
  o->logits = malloc((size_t)n * 7 * sizeof(float));
  o->grad = malloc(m->ntrain * sizeof(float));
  o->state = malloc(m->ntotal * sizeof(float));
  rn_model_zero_grad(m);
  for (int s = 0; s < 2; s++) {
    rn_model_forward(m, n, 1);
    o->loss[s] = rn_model_loss(m, n, labels, 0.1f, NULL, NULL);
    rn_model_backward(m, n, NULL, NULL);
    if (s == 0) rn_sgd_step(m, 0.05f, 0.9f, 1e-4f, 0);
  }
  memcpy(o->logits, rn_model_logits(m), (size_t)n * 7 * sizeof(float));
  memcpy(o->grad, m->grad, m->ntrain * sizeof(float));
  /* count the BN nodes fed by the epilogue: replay the forward node by node is not exposed, so
   * count the convolutions that qualify (stats_next and the direct kernel) */
  o->used = 0;
  for (int k = 0; k < m->nnodes; k++)
    if (m->nodes[k].op == RN_OP_CONV && m->nodes[k].stats_next && rn_conv_direct_ok(&m->nodes[k].u.conv)) o->used++;
  o->bused = 0;
  for (int k = 0; k < m->nnodes; k++)
    o->bused += m->nodes[k].op == RN_OP_CONV && m->nodes[k].bn_prev >= 0 && rn_conv_direct_dx_ok(&m->nodes[k].u.conv);
  rn_model_forward(m, n - 1, 1); /* a partial batch */
  o->loss[2] = rn_model_loss(m, n - 1, labels, 0.0f, NULL, NULL);
  memcpy(o->state, m->param, m->ntotal * sizeof(float));
  return 0;
}

static void free_out(out_t *o) {
  free(o->logits), free(o->grad), free(o->state);
  rn_model_free(&o->m);
}

int main(void) {
  rn_err e;
  if (rn_blas_init(NULL, 2, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  if (!rn_conv_direct_enabled()) {
    printf("test_model_epilogue: no direct convolution (no AVX-512): the epilogue is never used\n");
    return tu_done("test_model_epilogue");
  }
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const ecase *ec = &cases[i];
    out_t a = {0}, b = {0};
    if (run(ec, 2, &a) || run(ec, 0, &b)) continue;
    CHECK(a.used > 0 && a.bused > 0, "%s: no convolution took the epilogue path (forward %d, backward %d)", ec->tag,
          a.used, a.bused);
    double el = 0;
    for (int s = 0; s < 3; s++) el = fmax(el, fabs(a.loss[s] - b.loss[s]) / fabs(b.loss[s]));
    double eo = relmax(a.logits, b.logits, (size_t)ec->batch * 7);
    double eg = relmax(a.grad, b.grad, a.m.ntrain);
    double es = relmax(a.state, b.state, a.m.ntotal);
    int bitwise = !memcmp(a.grad, b.grad, a.m.ntrain * sizeof(float)) &&
                  !memcmp(a.state, b.state, a.m.ntotal * sizeof(float));
    printf("  %-46s %2d convs with epilogue statistics, %2d with BN backward sums: loss %.1e logits %.1e grads %.1e "
           "state %.1e%s\n", ec->tag, a.used, a.bused, el, eo, eg, es, bitwise ? " (bitwise)" : "");
    CHECK(el < 1e-6 && eo < 1e-5 && eg < 1e-5 && es < 1e-6, "%s: epilogue statistics differ: loss %.3g logits %.3g "
          "grads %.3g state %.3g", ec->tag, el, eo, eg, es);
    free_out(&a), free_out(&b);
  }
  return tu_done("test_model_epilogue");
}
