/* rn-bench: forward/backward timings per layer and for the whole training step (forward, loss,
 * backward, SGD), GFLOP/s, images/s, peak RSS, for a chosen model, batch and thread count, on
 * synthetic data. Under mpirun with P > 1 ranks it also measures the bucketed gradient allreduce
 * at the model's bucket size (bandwidth) and a full data-parallel step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "rn/dist.h"
#include "rn/kernels.h"
#include "rn/model.h"
#include "rn/optim.h"
#include "rn/wino.h"

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Multiply-adds of one node's forward for a batch of n. */
static double node_macs(const rn_model *m, const rn_node *d, int n) {
  if (d->op == RN_OP_CONV) {
    const rn_conv_desc *c = &d->u.conv;
    return (double)n * c->oh * c->ow * c->cout * (double)c->kh * c->kw * c->cin;
  }
  if (d->op == RN_OP_LINEAR) return (double)n * d->u.lin.in * d->u.lin.out;
  (void)m;
  return 0;
}

/* --ab stream's on setting: RN_CONV_STREAM_MB or the default 16 MB */
static int ab_stream_mb(void) {
  const char *v = getenv("RN_CONV_STREAM_MB");
  return v && *v ? atoi(v) : 16;
}

/* --ab add-stream's on setting: RN_ADD_STREAM_MB or the default 16 MB */
static int ab_add_stream_mb(void) {
  const char *v = getenv("RN_ADD_STREAM_MB");
  return v && *v && atoi(v) > 0 ? atoi(v) : 16;
}

/* --ab: one setting (0 = off, 1 = on) of a run-time switch; narrow/ksplit keep the other's value */
static void set_switch(const char *sw, int on, int narrow, int ksplit) {
  if (!strcmp(sw, "narrow")) rn_blas_set_tuning(on, ksplit);
  else if (!strcmp(sw, "ksplit")) rn_blas_set_tuning(narrow, on);
  else if (!strcmp(sw, "gemm-par")) rn_blas_set_own_threading(on);
  else if (!strcmp(sw, "wino")) rn_conv_set_wino(on);
  else if (!strcmp(sw, "wino-small")) rn_conv_set_wino_small(on);
  else if (!strcmp(sw, "wino-bn")) rn_conv_set_wino_bn(on);
  else if (!strcmp(sw, "dw-il")) rn_conv_set_dw_interleave(on ? 512 : 0);
  else if (!strcmp(sw, "stream")) rn_conv_set_stream_mb(on ? ab_stream_mb() : 0);
  else if (!strcmp(sw, "dw-ip")) rn_conv_set_dw1x1_inplace(on);
  else if (!strcmp(sw, "ukr")) rn_blas_set_ukr(on);
  else if (!strcmp(sw, "wino-dyn")) rn_conv_set_wino_dynamic(on);
  else if (!strcmp(sw, "wino-pfx")) rn_conv_set_wino_pfx(on);
  else if (!strcmp(sw, "wino-carry")) rn_conv_set_wino_carry(on);
  else if (!strcmp(sw, "direct-dyn")) rn_conv_set_direct_dynamic(on);
  else if (!strcmp(sw, "add-stream")) rn_bn_set_add_stream_mb(on ? ab_add_stream_mb() : 0);
  else if (!strcmp(sw, "tile74")) rn_conv_set_tile74(on);
  else if (!strcmp(sw, "sweep1")) rn_conv_set_sweep1(on);
}

static double min_of(const double *v, long n) {
  double m = v[0];
  for (long i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
  return m;
}
static double max_of(const double *v, long n) {
  double m = v[0];
  for (long i = 1; i < n; i++) m = v[i] > m ? v[i] : m;
  return m;
}

static void usage(void) {
  printf("usage: rn-bench [--model NAME] [--batch N] [--threads T] [--size S] [--channels C] [--classes K]\n"
         "                [--steps N] [--warmup N] [--layers 0|1] [--blis-arch SET] [--narrow 0|1] [--ksplit 0|1]\n"
         "                [--bucket-mb MB] [--overlap 0|1|2] [--recompute-mb MB]\n"
         "                [--ab narrow|ksplit|gemm-par|wino|wino-small|wino-bn|dw-il|dx-over-x|stream|dw-ip|ukr|wino-dyn|recompute-mb|\n"
         "                      direct-dyn|add-stream|wino-pre|tile74|sweep1|wino-pfx|wino-carry]\n"
         "Times the training step of a model on synthetic data: per layer (with --layers 1) forward and\n"
         "backward ms, GFLOP/s and %% of the FMA peak (measured in the same run after the steps, 1 rank; with\n"
         "--layers 1 before and after a 2048^3 BLIS sgemm, the larger counts), that GEMM's GF/s (what a\n"
         "tuned GEMM reaches on the host now) and the convolutions' share of it, and the\n"
         "whole step (median of --steps after --warmup): images/s, GFLOP/s (training FLOPs = 3 x\n"
         "forward), peak RSS, the FMA peak. --narrow/--ksplit turn the per-shape BLIS\n"
         "kernel choice and the K split of weight-gradient GEMMs off for comparison. Under mpirun with\n"
         "several ranks it adds the bucketed allreduce time and bandwidth; --overlap 0 = allreduce after\n"
         "backward, 1 = overlapped and driven by MPI_Test between layers, 2 = by a communication thread.\n"
         "Defaults: --model resnet50 --batch 32 --threads <cores> --size 224 (32 for cifar-*).\n"
         "Environment: RN_RECOMPUTE=0 keeps every activation the backward needs instead of recomputing\n"
         "the cheap elementwise ones (BN, BN+add, ReLU) in the backward where that lowers the peak\n"
         "memory (the default; --layers 1 prints their time); RN_FUSE, RN_CONV_* switches: docs/PERF.md.\n"
         "--recompute-mb MB: the activation arena may grow by up to MB above its smallest plan to keep the\n"
         "costliest of those outputs instead (rn-train's --recompute-mb; default RN_RECOMPUTE_MB or 0);\n"
         "--layers 1 prints the budget in use and the one that keeps them all.\n"
         "--ab SWITCH: A/B of a run-time switch in one process: its off and on settings alternate step by\n"
         "step (off on on off ...; each warmed up --warmup times first), so that the host's slow drifts\n"
         "fall on both; prints each setting's median step and the median of the on/off ratios of\n"
         "neighbouring steps (--steps per setting); with --layers 1 also both settings' per-layer\n"
         "medians: totals and the 12 layers that moved most\n"
         "(for wino-bn, dx-over-x, wino-pre and recompute-mb, whose off setting is a second model, where\n"
         "its layers are the same; such two-model A/Bs carry a bias of their own: an A/A of two identical\n"
         "ResNet-50 plans gave the on model's non-conv layers 0.91-0.99 of the off model's time, so\n"
         "confirm their figures with alternating processes: scripts/bench_pairs.sh).\n"
         "Switches: narrow, ksplit (as above), gemm-par (our threading of GEMMs; off = BLIS's), wino\n"
         "(Winograd 3x3 convolutions; off = the direct kernel on the same plan, which applies the same\n"
         "lazy BNs), wino-small (Winograd's small-channel path for layers of at most 64 channels; off =\n"
         "what takes them without it: the direct kernel on the same plan, or the chunked BLIS path\n"
         "where its own rule applies), wino-bn (Winograd's lazy BN, statistics and BN sums; off = a\n"
         "second model planned without them, run in the same process: twice the memory, 1 rank). The\n"
         "per-layer table and the step figures are then the on setting's. dw-il: the 1x1 backward's\n"
         "bands of dW then dx (512 KB of dy per band; off = dW over all images first, then dx).\n"
         "dx-over-x: a fused BN+add's dx pass writes the branch BN's input gradient over that input (off =\n"
         "a second model planned with a separate gradient buffer, as wino-bn). stream: streaming stores\n"
         "for 1x1 forward outputs above 16 MB (RN_CONV_STREAM_MB sets the size; off = plain stores).\n"
         "dw-ip: the 1x1 dW of small stride-1 shapes (cin + cout <= 640) reads x and dy in place and\n"
         "prefetches the next chunk (off = packs every chunk; RN_CONV_DW1X1_IP=0). ukr: Winograd's\n"
         "products on BLIS's micro-kernel with the transformed kernels packed once per call (off = BLIS's\n"
         "driver, which packs them again for every chunk; RN_UKR=0). wino-dyn: Winograd's product\n"
         "positions (chunked path) claimed one at a time by the threads, and the small path's tile\n"
         "groups (forward, dx) stolen from the other threads' shares once a thread's own are done\n"
         "(off = static shares; RN_WINO_DYN=0).\n"
         "direct-dyn: the direct forward's images claimed one unit at a time by the threads (off =\n"
         "static shares; RN_DIRECT_DYN=0). add-stream: streaming stores for fused BN+add outputs above\n"
         "16 MB (RN_ADD_STREAM_MB sets the size; off = plain stores).\n"
         "recompute-mb: the --recompute-mb budget (given, > 0; off = a second model planned with 0, as\n"
         "wino-bn; the peak RSS printed is then both models').\n"
         "wino-pre: a Winograd layer reads its BN's output lazily also where the direct kernel's width\n"
         "rules would put its dW on the GEMM (ResNet-50's 256@14 and 512@7: no BN+ReLU pass, no replay;\n"
         "off = a second model planned with RN_WINO_PRE_ANY=0, where those BN outputs are stored, as wino-bn).\n"
         "tile74: 7 x 4 tiles for the 1x1 stride-1 passes over 1024k input channels on 14k-wide lines\n"
         "(off = 14 x 2 tiles, whose 14 input lines, 4 KB apart, evict each other in L1; RN_CONV_T74=0);\n"
         "with sweep1 on, only where sweep1 does not apply (none of ResNet-50's: layer3's conv1 forward\n"
         "and conv3 dx, layer4.0.conv1 forward with sweep1 off).\n"
         "sweep1: the 1x1 stride-1 passes over >= 512 input channels whose input plane is <= 2 MB (ResNet-50's\n"
         "shrinking conv1s forward and its conv3s' dx in layers 2-4) sweep one group of four channel blocks at\n"
         "a time over the whole plane in 7-pixel tiles (off = line by line over all blocks; RN_CONV_SWEEP1=0).\n"
         "wino-pfx: Winograd's transforms prefetch what the tile two further along its row reads and\n"
         "writes (inputs, outputs, dx's BN-sum inputs; off = no prefetch; RN_WINO_PFX=0).\n"
         "wino-carry: Winograd F(4,3)'s input transforms over <= 64 channels take the two columns a\n"
         "tile shares with the previous tile of its row from that tile's first stage (off = transformed\n"
         "again; RN_WINO_CARRY=0).\n"
         "With --layers 1, tile74 and sweep1 also print the time of the convolutions they apply to against\n"
         "the others'.\n");
}

/* The GEMM ceiling beside the FMA peak: the best of 8 BLIS sgemm calls of CEIL_N^3 after one
 * warm-up (best of 3 was moved by the host's sub-second slow spells: 157 against 224-242 GF/s),
 * square and large enough that packing and edges are a few percent: what a tuned GEMM reaches on
 * this host right now (docs/PERF.md, "What limits"). */
#define CEIL_N 2048
static double gemm_ceiling(void) {
  const size_t nn = (size_t)CEIL_N * CEIL_N;
  float *a = rn_alloc(nn * sizeof(float)), *b = rn_alloc(nn * sizeof(float)), *c = rn_alloc(nn * sizeof(float));
  for (size_t i = 0; i < nn; i++) a[i] = (float)(i % 7) * 0.125f, b[i] = (float)(i % 5) * 0.25f, c[i] = 0;
  double best = 0;
  for (int r = 0; r < 9; r++) {
    const double t0 = rn_now();
    rn_sgemm(0, 0, CEIL_N, CEIL_N, CEIL_N, 1.0f, a, CEIL_N, b, CEIL_N, 0.0f, c, CEIL_N);
    const double g = 2.0 * CEIL_N * CEIL_N * (double)CEIL_N / (rn_now() - t0) * 1e-9;
    if (r > 0 && g > best) best = g;
  }
  free(a), free(b), free(c);
  return best;
}

int main(int argc, char **argv) {
  rn_dist d;
  rn_err e = {0};
  if (rn_dist_init(&argc, &argv, &d, &e)) {
    fprintf(stderr, "rn-bench: %s\n", e.msg);
    return 1;
  }
  const char *model = "resnet50", *arch = NULL, *ab = NULL;
  long batch = 32, threads = 0, size = 0, channels = 3, classes = 0, steps = 10, warmup = 3, layers = 1;
  long narrow = 1, ksplit = 1, overlap = 1;
  double bucket_mb = 25, recompute_mb = -1; /* -1: RN_RECOMPUTE_MB or 0 */
  rn_status st = RN_OK;
  for (int i = 1; i < argc && !st; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      if (d.rank == 0) usage();
      rn_dist_finalize();
      return 0;
    }
    if (!v) {
      st = rn_err_set(&e, RN_EINVAL, "option %s needs a value", a);
      break;
    }
    i++;
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--blis-arch")) arch = v;
    else if (!strcmp(a, "--batch")) st = rn_parse_int("option batch", v, 1, 100000, &batch, &e);
    else if (!strcmp(a, "--threads")) st = rn_parse_int("option threads", v, 0, 1024, &threads, &e);
    else if (!strcmp(a, "--size")) st = rn_parse_int("option size", v, 0, 10000, &size, &e);
    else if (!strcmp(a, "--channels")) st = rn_parse_int("option channels", v, 1, 64, &channels, &e);
    else if (!strcmp(a, "--classes")) st = rn_parse_int("option classes", v, 0, 100000, &classes, &e);
    else if (!strcmp(a, "--steps")) st = rn_parse_int("option steps", v, 1, 100000, &steps, &e);
    else if (!strcmp(a, "--warmup")) st = rn_parse_int("option warmup", v, 0, 100000, &warmup, &e);
    else if (!strcmp(a, "--layers")) st = rn_parse_int("option layers", v, 0, 1, &layers, &e);
    else if (!strcmp(a, "--narrow")) st = rn_parse_int("option narrow", v, 0, 1, &narrow, &e);
    else if (!strcmp(a, "--ksplit")) st = rn_parse_int("option ksplit", v, 0, 1, &ksplit, &e);
    else if (!strcmp(a, "--overlap")) st = rn_parse_int("option overlap", v, 0, 2, &overlap, &e);
    else if (!strcmp(a, "--ab")) {
      ab = v;
      if (strcmp(v, "narrow") && strcmp(v, "ksplit") && strcmp(v, "gemm-par") && strcmp(v, "wino") && strcmp(v, "wino-small") && strcmp(v, "wino-bn") &&
          strcmp(v, "dw-il") && strcmp(v, "dx-over-x") && strcmp(v, "stream") &&
          strcmp(v, "dw-ip") && strcmp(v, "ukr") && strcmp(v, "wino-dyn") && strcmp(v, "recompute-mb") &&
          strcmp(v, "direct-dyn") && strcmp(v, "add-stream") && strcmp(v, "wino-pre") &&
          strcmp(v, "tile74") && strcmp(v, "sweep1") && strcmp(v, "wino-pfx") && strcmp(v, "wino-carry"))
        st = rn_err_set(&e, RN_EINVAL,
                        "option ab: unknown switch '%s' (valid: narrow, ksplit, gemm-par, wino, wino-small, wino-bn, dw-il, "
                        "dx-over-x, stream, dw-ip, ukr, wino-dyn, recompute-mb, direct-dyn, add-stream, wino-pre, "
                        "tile74, sweep1, wino-pfx, wino-carry)",
                        v);
    } else if (!strcmp(a, "--bucket-mb")) st = rn_parse_double("option bucket-mb", v, &bucket_mb, &e);
    else if (!strcmp(a, "--recompute-mb")) {
      st = rn_parse_double("option recompute-mb", v, &recompute_mb, &e);
      if (!st && !(recompute_mb >= 0 && recompute_mb <= 1e9))
        st = rn_err_set(&e, RN_EINVAL, "option recompute-mb: '%s' is not a size in MB (0 to 1e9)", v);
    }
    else st = rn_err_set(&e, RN_EINVAL, "unknown option '%s' (see --help)", a);
  }
  if (threads == 0) {
    const char *s = getenv("OMP_NUM_THREADS");
    threads = s && atoi(s) > 0 ? atoi(s) : 2;
  }
  if (!st) st = rn_blas_init(arch, (int)threads, d.rank == 0 ? stdout : NULL, &e);
  if (!st) rn_blas_set_tuning((int)narrow, (int)ksplit);
  rn_model_config mc;
  rn_model_config_default(&mc);
  if (!st) st = rn_model_config_arch(&mc, model, &e);
  rn_model m, m0; /* m0: --ab wino-bn's, dx-over-x's, wino-pre's or recompute-mb's off setting, a second
                   * model planned with it off */
  memset(&m, 0, sizeof m), memset(&m0, 0, sizeof m0);
  const int two = ab && (!strcmp(ab, "wino-bn") || !strcmp(ab, "dx-over-x") || !strcmp(ab, "recompute-mb") ||
                         !strcmp(ab, "wino-pre"));
  if (!st && recompute_mb >= 0) rn_model_set_recompute_mb(recompute_mb);
  if (!st && two && !strcmp(ab, "recompute-mb") && !(recompute_mb > 0))
    st = rn_err_set(&e, RN_EINVAL, "option ab: recompute-mb compares --recompute-mb 0 with a budget: give --recompute-mb MB > 0");
  if (!st) {
    mc.in_channels = (int)channels;
    mc.in_h = mc.in_w = (int)(size ? size : mc.cifar ? 32 : 224);
    mc.num_classes = (int)(classes ? classes : mc.cifar ? 10 : 1000);
    if (two && !strcmp(ab, "wino-bn")) {
      rn_conv_set_wino_bn(0);
      st = rn_model_build(&m0, &mc, (int)batch, &e);
      rn_conv_set_wino_bn(1);
    } else if (two && !strcmp(ab, "wino-pre")) {
      rn_conv_set_wino_pre_any(0);
      st = rn_model_build(&m0, &mc, (int)batch, &e);
      rn_conv_set_wino_pre_any(1);
    } else if (two && !strcmp(ab, "recompute-mb")) {
      rn_model_set_recompute_mb(0);
      st = rn_model_build(&m0, &mc, (int)batch, &e);
      rn_model_set_recompute_mb(recompute_mb);
    } else if (two) {
      const int prev = rn_model_set_dx_over_input(0);
      st = rn_model_build(&m0, &mc, (int)batch, &e);
      rn_model_set_dx_over_input(prev);
    }
    if (!st) st = rn_model_build(&m, &mc, (int)batch, &e);
  }
  if (st) {
    if (d.rank == 0) fprintf(stderr, "rn-bench: error: %s\n", e.msg);
    rn_dist_finalize();
    return 2;
  }
  rn_model_init(&m, 1);
  int n = (int)batch;
  rn_rng r = rn_rng_make(7);
  float *x = rn_model_input(&m);
  for (size_t i = 0; i < (size_t)n * mc.in_h * mc.in_w * mc.in_channels; i++) x[i] = rn_rng_normal(&r);
  if (two) {
    rn_model_init(&m0, 1);
    memcpy(rn_model_input(&m0), x, sizeof(float) * (size_t)n * mc.in_h * mc.in_w * mc.in_channels);
  }
  int32_t *labels = rn_alloc(sizeof(int32_t) * (size_t)n);
  for (int i = 0; i < n; i++) labels[i] = (int32_t)rn_rng_below(&r, (uint64_t)mc.num_classes);
  double *fw = rn_alloc(sizeof(double) * (size_t)m.nnodes), *bw = rn_alloc(sizeof(double) * (size_t)m.nnodes);
  /* --ab with --layers 1: both settings' per-layer times of every timed step (medians below: a step
   * slowed by the host would move a sum); with a second model, where its nodes are the first's */
  int same_nodes = !two || m0.nnodes == m.nnodes;
  for (int k = 0; two && same_nodes && k < m.nnodes; k++)
    same_nodes = m0.nodes[k].op == m.nodes[k].op && !strcmp(m0.nodes[k].name, m.nodes[k].name);
  const int ab_layers = ab && layers && same_nodes;
  const size_t nn = (size_t)m.nnodes;
  double *fws = ab_layers ? rn_alloc(sizeof(double) * nn) : NULL, *bws = ab_layers ? rn_alloc(sizeof(double) * nn) : NULL;
  double *lay[2] = {NULL, NULL}; /* [arm][step][node]: forward + backward ms */
  if (ab_layers)
    lay[0] = rn_alloc(sizeof(double) * nn * (size_t)steps), lay[1] = rn_alloc(sizeof(double) * nn * (size_t)steps);
  double *tstep = rn_alloc(sizeof(double) * (size_t)steps), *tf = rn_alloc(sizeof(double) * (size_t)steps),
         *tb = rn_alloc(sizeof(double) * (size_t)steps), *to = rn_alloc(sizeof(double) * (size_t)steps),
         *tc = rn_alloc(sizeof(double) * (size_t)steps);
  rn_allreducer *ar = rn_ar_create(&d, m.grad, m.ntrain, (size_t)(bucket_mb * 1048576.0), (int)overlap);
  double macs = 0;
  for (int k = 0; k < m.nnodes; k++) macs += node_macs(&m, &m.nodes[k], n);
  /* --ab: steps alternate off, on, on, off, ... (each setting `steps` times after the warm-up) */
  const long nsteps = ab ? 2 * steps : steps;
  double *tab[2] = {NULL, NULL};
  long nab[2] = {0, 0};
  if (ab) tab[0] = rn_alloc(sizeof(double) * (size_t)steps), tab[1] = rn_alloc(sizeof(double) * (size_t)steps);
  long flt_f = 0, flt_b = 0; /* minor page faults in the timed steps: forward+loss, rest of the step */
  /* --ab: each setting warms up --warmup times (off, on, off, on, ...), so that no first touch of a
   * second model's memory falls in a timed step. (That was not the cause of the two-model bias
   * noted in --help: an A/A of two identical plans gave the on model's non-conv layers 0.911-0.940
   * of the off model's time with one warm-up step or with both warmed, 0.990 once.) */
  const long wu = ab ? 2 * warmup : warmup;
  for (long it = 0; it < wu + nsteps; it++) {
    const long j = it - wu; /* timed steps: off, on, on, off, off, on, ... (each arm `steps` times) */
    int timed = it >= wu, arm = timed ? (int)((j / 2 + j % 2) % 2) : (int)(it % 2);
    if (ab) set_switch(ab, arm, (int)narrow, (int)ksplit);
    rn_model *mm = two && arm == 0 ? &m0 : &m; /* m0: no allreduce (1 rank) */
    m.prof_fwd = timed && (!ab || arm == 1) ? fw : NULL;
    m.prof_bwd = timed && (!ab || arm == 1) ? bw : NULL;
    const double replay0 = m.prof_replay; /* the recompute figure is the on setting's */
    if (timed && ab_layers) {
      memset(fws, 0, sizeof(double) * nn), memset(bws, 0, sizeof(double) * nn);
      m.prof_fwd = fws, m.prof_bwd = bws;
    }
    if (two) m0.prof_fwd = timed && ab_layers ? fws : NULL, m0.prof_bwd = timed && ab_layers ? bws : NULL;
    struct rusage r0, r1, r2;
    getrusage(RUSAGE_SELF, &r0);
    double t0 = rn_now();
    rn_model_set_step(mm, 1, it);
    rn_model_forward(mm, n, 1);
    rn_model_loss(mm, n, labels, 0, NULL, NULL);
    double t1 = rn_now();
    getrusage(RUSAGE_SELF, &r1);
    rn_model_zero_grad(mm);
    if (mm == &m) rn_ar_begin(ar);
    rn_model_backward(mm, n, mm == &m ? rn_ar_ready : NULL, mm == &m ? ar : NULL);
    double t2 = rn_now();
    if (mm == &m) rn_ar_finish(ar);
    double t3 = rn_now();
    rn_sgd_step(mm, 1e-4f, 0.9f, 1e-4f, 0);
    double t4 = rn_now();
    getrusage(RUSAGE_SELF, &r2);
    if (timed) flt_f += r1.ru_minflt - r0.ru_minflt, flt_b += r2.ru_minflt - r1.ru_minflt;
    if (ab && arm == 0) m.prof_replay = replay0;
    if (timed && ab_layers)
      for (size_t k = 0; k < nn; k++) {
        lay[arm][(size_t)nab[arm] * nn + k] = fws[k] + bws[k];
        if (arm == 1) fw[k] += fws[k], bw[k] += bws[k];
      }
    if (timed && ab) tab[arm][nab[arm]++] = t4 - t0;
    if (timed && (!ab || arm == 1)) {
      const long q = ab ? nab[1] - 1 : j;
      tstep[q] = t4 - t0, tf[q] = t1 - t0, tb[q] = t2 - t1, tc[q] = t3 - t2, to[q] = t4 - t3;
    }
  }
  if (ab) set_switch(ab, 1, (int)narrow, (int)ksplit);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  if (d.rank == 0) {
    double S = (double)steps;
    /* the FMA peak now, for the "% of peak" figures (the host's clock and load move it); one rank
     * only: with several, the others poll MPI on the same cores meanwhile */
    const double peak0 = d.size == 1 ? rn_fma_peak_gflops((int)threads) : 0;
    /* with --layers 1, a large GEMM (the practical ceiling), then the peak again: the larger of the
     * two peaks counts, so that a slow spell during one cannot inflate the percentages */
    const double gp = layers && peak0 > 0 ? gemm_ceiling() : 0;
    double peak = peak0;
    if (gp > 0) {
      const double p1 = rn_fma_peak_gflops((int)threads);
      if (p1 > peak) peak = p1;
    }
    if (layers) {
      printf("\n%-34s %-9s %-16s %9s %9s %8s %8s %6s %6s\n", "layer", "op", "out (HxWxC)", "fwd ms", "bwd ms",
             "fwd GF/s", "bwd GF/s", "fwd %", "bwd %");
      double cf_t = 0, cb_t = 0, cf_fl = 0, cb_fl = 0; /* convolutions: time and FLOPs */
      int nconv = 0, f70 = 0, b70 = 0;
      double conv_t = 0, other_t = 0;
      const char *kinds[16];
      double kind_t[16];
      int nkinds = 0;
      for (int k = 0; k < m.nnodes; k++) {
        const rn_node *nd = &m.nodes[k];
        const rn_tensor *t = &m.tensors[nd->out];
        double f = fw[k] / S, b = bw[k] / S, mc2 = node_macs(&m, nd, n);
        /* Backward of a conv: dx and dw products (2x forward), the first conv only dw. */
        double bmacs = mc2 * ((nd->op == RN_OP_CONV && nd->in == m.input) ? 1 : 2);
        char shape[32];
        snprintf(shape, sizeof shape, "%dx%dx%d", t->h, t->w, t->c);
        char fg[16] = "", bg[16] = "", fp[16] = "", bp[16] = "";
        if (mc2 > 0) {
          snprintf(fg, sizeof fg, "%.1f", 2 * mc2 / f * 1e-9);
          snprintf(bg, sizeof bg, "%.1f", 2 * bmacs / b * 1e-9);
          if (peak > 0) {
            snprintf(fp, sizeof fp, "%.0f%%", 100 * 2 * mc2 / f * 1e-9 / peak);
            snprintf(bp, sizeof bp, "%.0f%%", 100 * 2 * bmacs / b * 1e-9 / peak);
          }
        }
        if (nd->op == RN_OP_CONV) {
          nconv++, cf_t += f, cb_t += b, cf_fl += 2 * mc2, cb_fl += 2 * bmacs;
          f70 += peak > 0 && 2 * mc2 / f * 1e-9 >= 0.7 * peak;
          b70 += peak > 0 && 2 * bmacs / b * 1e-9 >= 0.7 * peak;
        }
        const char *kind = rn_node_kind(nd);
        printf("%-34s %-9s %-16s %9.3f %9.3f %8s %8s %6s %6s\n", nd->name[0] ? nd->name : "-", kind, shape, f * 1e3,
               b * 1e3, fg, bg, fp, bp);
        if (nd->op == RN_OP_CONV || nd->op == RN_OP_LINEAR) conv_t += f + b;
        else other_t += f + b;
        int q = 0;
        while (q < nkinds && strcmp(kinds[q], kind)) q++;
        if (q == nkinds && nkinds < 16) kinds[nkinds] = kind, kind_t[nkinds++] = 0;
        if (q < nkinds) kind_t[q] += f + b;
      }
      printf("\nconv+fc %.1f ms, other layers (bn, relu, add, pool, shortcut) %.1f ms = %.1f%% of the layer time\n",
             conv_t * 1e3, other_t * 1e3, 100 * other_t / (conv_t + other_t));
      printf("recomputed in the backward (in their layers' bwd ms above): %d outputs, %.1f ms = %.1f%% of the layer "
             "time (RN_RECOMPUTE=0: none; --recompute-mb budget: +%.0f MB; all kept with +%.1f MB)\n", m.nreplay, m.prof_replay / S * 1e3, 100 * m.prof_replay / S / (conv_t + other_t),
             (double)m.recompute_floats * sizeof(float) / 1e6, m.nreplay ? rn_model_recompute_all_mb(&m) : 0.0);
      printf("time by kind (forward + backward):");
      for (int q = 0; q < nkinds; q++)
        printf("%s %s %.1f ms (%.1f%%)", q ? "," : "", kinds[q], kind_t[q] * 1e3, 100 * kind_t[q] / (conv_t + other_t));
      printf("\n");
      if (nconv && peak > 0)
        printf("convolutions (%d): forward %.1f GF/s = %.0f%%, backward %.1f GF/s = %.0f%% of the FMA peak measured now "
               "(%.0f GF/s, %ld threads); at >= 70%%: %d forward, %d backward\n",
               nconv, cf_fl / cf_t * 1e-9, 100 * cf_fl / cf_t * 1e-9 / peak, cb_fl / cb_t * 1e-9,
               100 * cb_fl / cb_t * 1e-9 / peak, peak, threads, f70, b70);
      if (nconv && gp > 0)
        printf("a large GEMM measured now (BLIS sgemm %dx%dx%d, the same threads): %.0f GF/s = %.0f%% of the FMA "
               "peak; the convolutions ran at %.0f%% forward, %.0f%% backward of it\n",
               CEIL_N, CEIL_N, CEIL_N, gp, 100 * gp / peak, 100 * cf_fl / cf_t * 1e-9 / gp, 100 * cb_fl / cb_t * 1e-9 / gp);
    }
    double ms = median(tstep, (int)steps), mf = median(tf, (int)steps), mb = median(tb, (int)steps),
           mcm = median(tc, (int)steps), mo = median(to, (int)steps);
    double gflop = 3 * 2 * macs * 1e-9; /* training FLOPs = 3 x forward */
    printf("\nmodel %s, input %dx%dx%d, batch %d per rank, %d rank(s), %ld thread(s), BLIS %s (narrow: %s%s%s)\n",
           model, mc.in_h, mc.in_w, mc.in_channels, n, d.size, threads, rn_blas_arch(),
           narrow ? rn_blas_narrow_arch() : "off", ksplit ? "" : ", K split off", "");
    printf("parameters %zu, forward %.3f GMAC/image\n", rn_model_param_count(&m), macs / n * 1e-9);
    printf("step median %.2f ms: forward+loss %.2f, backward %.2f, allreduce wait %.2f, sgd %.2f\n", ms * 1e3,
           mf * 1e3, mb * 1e3, mcm * 1e3, mo * 1e3);
    printf("page faults per timed step (minor, rank 0): forward+loss %.1f, backward+allreduce+sgd %.1f\n",
           (double)flt_f / (double)nsteps, (double)flt_b / (double)nsteps);
    printf("ours %s batch %d threads %ld: median_step_s %.4f img_s %.1f gflops %.1f peak_rss_mb %.0f fma_peak_gflops %.0f\n",
           model, n, threads, ms, n * d.size / ms, gflop / ms, ru.ru_maxrss / 1024.0, peak);
    if (ab) {
      /* neighbouring steps pair up: (0,1), (2,3), ... each holds one step of each setting */
      double *ratio = rn_alloc(sizeof(double) * (size_t)steps);
      for (long j = 0; j < steps; j++) ratio[j] = tab[1][j] / tab[0][j];
      double r_med = median(ratio, (int)steps);
      printf("ab %s: off median_step_s %.4f, on median_step_s %.4f, on/off %.4f (median of %ld paired ratios, "
             "from %.4f to %.4f)\n", ab, median(tab[0], (int)steps), median(tab[1], (int)steps), r_med, steps,
             min_of(ratio, steps), max_of(ratio, steps));
      rn_free(ratio);
      if (ab_layers) {
        /* per layer: the median over each setting's steps; totals: medians of the per-step sums */
        double *col = rn_alloc(sizeof(double) * (size_t)steps), *med[2], tot[2][2]; /* [off/on][conv+fc/other] */
        int *idx = rn_alloc(sizeof(int) * nn);
        for (int a = 0; a < 2; a++) {
          med[a] = rn_alloc(sizeof(double) * nn);
          for (size_t k = 0; k < nn; k++) {
            for (long j = 0; j < steps; j++) col[j] = lay[a][(size_t)j * nn + k];
            med[a][k] = median(col, (int)steps);
          }
          for (int other = 0; other < 2; other++) {
            for (long j = 0; j < steps; j++) {
              col[j] = 0;
              for (size_t k = 0; k < nn; k++)
                if ((m.nodes[k].op != RN_OP_CONV && m.nodes[k].op != RN_OP_LINEAR) == other)
                  col[j] += lay[a][(size_t)j * nn + k];
            }
            tot[a][other] = median(col, (int)steps);
          }
        }
        for (size_t k = 0; k < nn; k++) idx[k] = (int)k;
        for (size_t a = 0; a < nn; a++) /* by |change|, largest first (a few hundred nodes) */
          for (size_t b = a + 1; b < nn; b++)
            if (fabs(med[1][idx[b]] - med[0][idx[b]]) > fabs(med[1][idx[a]] - med[0][idx[a]])) {
              const int t = idx[a];
              idx[a] = idx[b], idx[b] = t;
            }
        printf("ab %s per layer (medians over each setting's steps, ms): conv+fc %.1f -> %.1f (%.3f), other layers "
               "%.1f -> %.1f (%.3f)\n", ab, tot[0][0] * 1e3, tot[1][0] * 1e3, tot[1][0] / tot[0][0], tot[0][1] * 1e3,
               tot[1][1] * 1e3, tot[1][1] / tot[0][1]);
        if (two) { /* the nodes the two plans treat differently: lazy or stored BN, its reader */
          double sd[2] = {0, 0};
          int nd = 0;
          for (size_t k = 0; k < nn; k++)
            if (m0.nodes[k].lazy != m.nodes[k].lazy || m0.nodes[k].pre_bn != m.nodes[k].pre_bn)
              nd++, sd[0] += med[0][k], sd[1] += med[1][k];
          if (nd)
            printf("ab %s nodes planned differently (lazy BN or its reader): %d, %.1f -> %.1f ms (%.3f)\n", ab, nd,
                   sd[0] * 1e3, sd[1] * 1e3, sd[1] / sd[0]);
        }
        if (!strcmp(ab, "tile74") || !strcmp(ab, "sweep1")) { /* the convolutions it applies to, against the others */
          double sd[2][2] = {{0, 0}, {0, 0}}; /* [other/applies][off/on] */
          int nd = 0;
          set_switch(ab, 1, 0, 0);
          for (size_t k = 0; k < nn; k++) {
            if (m.nodes[k].op != RN_OP_CONV) continue;
            const rn_conv_desc *cd = &m.nodes[k].u.conv;
            const int in = (!strcmp(ab, "tile74") ? rn_conv_tile74_passes(cd) : rn_conv_sweep1_passes(cd)) != 0;
            nd += in, sd[in][0] += med[0][k], sd[in][1] += med[1][k];
          }
          printf("ab %s convolutions it applies to: %d, %.1f -> %.1f ms (%.3f); the other convolutions %.1f -> "
                 "%.1f ms (%.3f)\n", ab, nd, sd[1][0] * 1e3, sd[1][1] * 1e3, nd ? sd[1][1] / sd[1][0] : 1.0,
                 sd[0][0] * 1e3, sd[0][1] * 1e3, sd[0][0] > 0 ? sd[0][1] / sd[0][0] : 1.0);
        }
        printf("%-34s %-11s %12s %12s %7s\n", "largest changes", "op", "off fwd+bwd", "on fwd+bwd", "on/off");
        for (size_t q = 0; q < nn && q < 12; q++) {
          const int k = idx[q];
          const rn_node *nd = &m.nodes[k];
          printf("%-34s %-11s %12.3f %12.3f %7.3f\n", nd->name[0] ? nd->name : "-", rn_node_kind(nd), med[0][k] * 1e3,
                 med[1][k] * 1e3, med[1][k] / med[0][k]);
        }
        rn_free(med[0]), rn_free(med[1]), rn_free(col);
        rn_free(idx);
      }
    }
    if (d.size > 1)
      printf("allreduce: %d bucket(s) of %.1f MB, %.1f MB of gradients, exposed wait %.2f ms\n", rn_ar_nbuckets(ar),
             bucket_mb, m.ntrain * 4.0 / 1048576.0, mcm * 1e3);
    fflush(stdout);
  }
  /* Bandwidth of the gradient allreduce alone (no compute to hide behind). */
  if (d.size > 1) {
    double *ta = rn_alloc(sizeof(double) * 5);
    for (int it = 0; it < 5; it++) {
      rn_dist_barrier(&d);
      double t0 = rn_now();
      rn_ar_begin(ar);
      rn_ar_ready(ar, 0, m.ntrain);
      rn_ar_finish(ar);
      ta[it] = rn_now() - t0;
    }
    double t = median(ta, 5);
    double exposed = median(tc, (int)steps);
    double hidden = t > 0 ? 1.0 - exposed / t : 0;
    if (hidden < 0) hidden = 0;
    if (d.rank == 0) {
      printf("allreduce alone: %.1f MB in %.2f ms = %.2f GB/s algorithm bandwidth (%d ranks)\n",
             m.ntrain * 4.0 / 1048576.0, t * 1e3, m.ntrain * 4.0 / t * 1e-9, d.size);
      printf("communication hidden behind backward: %.0f%% (exposed %.2f ms of %.2f ms)\n", 100 * hidden,
             exposed * 1e3, t * 1e3);
    }
    rn_free(ta);
  }
  rn_ar_free(ar);
  rn_model_free(&m);
  if (two) rn_model_free(&m0);
  rn_free(tab[0]), rn_free(tab[1]);
  rn_free(fws), rn_free(bws), rn_free(lay[0]), rn_free(lay[1]);
  rn_free(labels), rn_free(fw), rn_free(bw), rn_free(tstep), rn_free(tf), rn_free(tb), rn_free(to), rn_free(tc);
  rn_dist_finalize();
  return 0;
}
