/* model: the ResNet builder and the graph driver.
 *
 * A model is a list of nodes (in forward order) over tensors held in one activation arena
 * planned for a batch size. Parameters live in one arena: trainable parameters first
 * ([0, ntrain) floats, in forward order, so backward finishes them from the end of the arena to the
 * start), then the BN running buffers ([ntrain, ntotal)). Gradients and momentum cover [0, ntrain)
 * with the same offsets. */
#ifndef RN_MODEL_H
#define RN_MODEL_H
#include <stdint.h>
#include "rn/core.h"
#include "rn/layers.h"

typedef enum { RN_SHORTCUT_A = 0, RN_SHORTCUT_B = 1, RN_SHORTCUT_C = 2 } rn_shortcut;

typedef struct {
  char arch[32];          /* "resnet18|34|50|101|152", "cifar-resnet<6n+2>" e.g. cifar-resnet20;
                             plain twins: "plain18".."plain152", "cifar-plain<6n+2>" */
  int depth;              /* derived from arch */
  int bottleneck;         /* derived: 1 for 50/101/152 */
  int cifar;              /* derived: 1 for the CIFAR family */
  int plain;              /* derived: 1 = no shortcuts */
  rn_shortcut shortcut;   /* default: A for CIFAR, B for ImageNet */
  int preact;             /* pre-activation blocks (He et al. 2016) */
  int stride_in_1x1;      /* bottleneck stride on the first 1x1 (paper) instead of the 3x3 (torchvision) */
  float sd_pl;            /* stochastic depth: survival probability of the last block (1 = off) */
  int zero_init_residual; /* last BN gamma of each residual branch starts at 0 (Goyal et al.) */
  int in_channels, in_h, in_w, num_classes; /* 0 = family default (3, 224/32, 1000/10) */
  int width;              /* stem / first-stage width; 0 = standard (64 ImageNet, 16 CIFAR);
                             stages use width*{1,2,4,8} (ImageNet) or width*{1,2,4} (CIFAR) */
  float bn_momentum, bn_eps;   /* 0.1, 1e-5 */
} rn_model_config;

typedef enum {
  RN_OP_CONV, RN_OP_BN, RN_OP_RELU, RN_OP_MAXPOOL, RN_OP_AVGPOOL, RN_OP_LINEAR, RN_OP_ADD,
  RN_OP_SHORTCUT_A
} rn_op;

typedef struct {
  int h, w, c; /* per sample; flat vectors use h = w = 1 */
  size_t off;  /* offset (floats) of the tensor in the activation arena, room for the planned
                  batch (in-place outputs share their input's buffer, see plan() in build.c);
                  (size_t)-1 for a tensor left unused by the fusion pass */
  size_t goff; /* offset (floats) of its gradient in the arena (dact == act; liveness-planned:
                  buffers are reused once dead, so a gradient is valid only during backward) */
  size_t boff; /* offset of the tensor during backward: off, or for a recomputed tensor (rn_node.rp_at)
                  the buffer its replay writes (the activation arena is liveness-planned too, so a
                  tensor is valid only between its producer and its last reader, see plan()) */
} rn_tensor;

typedef struct {
  char name[96];  /* torchvision state_dict key, e.g. "layer1.0.conv1.weight" */
  int ndim;
  int dims[4];    /* torchvision shape (OIHW for conv weights) */
  size_t count;
  size_t off;     /* offset (floats) in param[] and, if trainable, grad[] and mom[] */
  int trainable;  /* 1 = weight/bias, 0 = BN running buffer */
  int no_decay;   /* BN gamma/beta and biases (exempted from weight decay when asked) */
  int ohwi;       /* stored internally OHWI (conv weight); dims give the OIHW shape */
} rn_param;

typedef struct {
  rn_op op;
  char name[80];    /* torchvision module name, e.g. "layer1.0.conv1", "fc"; "" for param-free */
  int in, in2, out; /* tensor ids; in2 only for ADD (in = shortcut path, in2 = residual branch) */
  int param[4];     /* conv: w; bn: gamma, beta, running_mean, running_var; linear: w, b; -1 unused */
  int block;        /* residual block index (stochastic depth), -1 if none */
  float survival;   /* ADD: survival probability of the branch (1 = always) */
  float scale;      /* ADD: branch scale used by the last forward (0, 1 or 1/p) */
  size_t save_off;  /* per-node saved state (BN mean/invstd, maxpool argmax) in the save arena */
  int acc_in, acc_in2; /* backward: 1 = add into d(in)/d(in2) (an earlier backward node wrote it) */
  int relu;         /* BN, ADD: a following ReLU is fused into this node (out = the ReLU's output;
                       backward masks with out > 0); set by the fusion pass at build time */
  int bn_add;       /* ADD: the BN of the residual branch is fused into this node (set by the fusion
                       pass): in2 is the BN's input, param[] and u.bn are the BN's, name the BN's;
                       out = [relu](in + scale*bn(in2)) (rn_bn_add_forward_*) */
  int stats_next;   /* CONV: its output is read only by a BN (or the BN of a bn_add node) with no other
                       conv in between (1), or by a bn_add node across a projection shortcut whose
                       convs are all 1 (2): a training forward on the direct kernel hands that BN the
                       channel sums (rn_conv_forward_stats) in m->stats (1) or m->stats2 (2) */
  int lazy;         /* BN (fusion level 3): a training or eval forward does not store the output; the
                       reader applies it (its pre_bn) with the coefficients at m->pre_coef + pre_off
                       (only bn_eval_in_train training stores it, in the arena's untouched tail):
                       1 a conv, 2 a max pool (BN+ReLU of the stem), 3 a fused BN+add node, as its
                       shortcut input (a projection shortcut's BN, no ReLU; that add's backward
                       also computes this BN's backward sums) */
  size_t pre_off;
  int rp_at;        /* BN, ADD, ReLU, option-A shortcut whose output is recomputed (plan(): not kept from
                       the forward to the backward): the backward replays this node just before node
                       rp_at's backward, from the same inputs and, for a training BN, the float affine
                       coefficients the forward used (m->rc_coef + rc_off), so the same bits; -1: kept */
  size_t rc_off;
  int pre_bn;       /* CONV, MAXPOOL: index of the lazy BN node whose output is its input; ADD (bn_add):
                       whose output is its shortcut input, in (-1: none) */
  int bn_prev;      /* CONV: index of the training BN node whose output is this conv's only input and
                       read by nothing else (-1: none): the dx epilogue computes that BN's backward
                       channel sums (rn_conv_backward_bn) */
  union {
    rn_conv_desc conv;
    rn_bn_desc bn;
    rn_pool_desc pool;
    rn_shortcut_a_desc sa;
    struct { int in, out; } lin;
  } u;
} rn_node;

/* Called during backward when gradients of trainable params [off, off+count) are final. */
typedef void (*rn_grad_ready_fn)(void *ctx, size_t off, size_t count);

typedef struct {
  rn_model_config cfg;
  int batch;                 /* planned (maximum) batch */
  int nnodes, ntensors, nparams, nblocks;
  rn_node *nodes;
  rn_tensor *tensors;
  rn_param *params;
  int input, logits;         /* tensor ids */
  size_t ntrain, ntotal;     /* floats */
  float *param;              /* [ntotal] */
  float *grad;               /* [ntrain] */
  float *mom;                /* [ntrain] momentum buffer (owned here, used by optim) */
  float *act, *dact;         /* the arena of activations and their gradients (dact == act: one
                                liveness-planned arena, see plan() in build.c) */
  float *save;               /* saved per-node state */
  float *ws;                 /* shared workspace */
  float *dlogits;            /* [batch][classes] */
  size_t act_floats, save_floats, ws_floats;
  size_t act_touch_floats;   /* the part of act before the lazy BN outputs (touched at build) */
  uint64_t sd_key;           /* key of this step's stochastic-depth draws (see rn_model_set_step) */
  uint64_t sd_seed;          /* stochastic depth: block b keeps its branch for this step iff */
  int64_t sd_step;           /*   uniform(rn_key(sd_seed, sd_step, b, 0)) < survival */
  double *prof_fwd, *prof_bwd; /* [nnodes] seconds per node, accumulated when non-NULL (rn-bench) */
  double prof_replay;        /* seconds of replays (rn_node.rp_at), accumulated when prof_bwd is set;
                                also counted in the replayed nodes' prof_bwd */
  int bn_eval_in_train;      /* 1: BN uses running statistics even in training (equivalence tests) */
  int input_grad;            /* 1: backward also computes d loss / d input (rn_model_input_grad) */
  int last_train;            /* mode of the last forward (selects the BN backward) */
  size_t dact_floats;        /* the gradients' own peak (a statistic: they are placed in act) */
  int fused;                 /* fusion level used at build (rn_model_set_fusion): 0 none, 1 BN+ReLU and
                                add+ReLU, 2 also the branch BN into the residual add, 3 also BN outputs
                                applied by the convolution that reads them (rn_node.lazy) */
  int bn_epilogue;           /* 2 (default): convolutions on the direct kernel compute the BN statistics
                                of their output (stats_next) and the BN backward sums of their input
                                (bn_prev); 1: only the statistics; 0: neither (RN_BN_EPILOGUE at build) */
  double *stats;             /* [batch][2][max cout] per-image channel sums of the last such conv */
  int stats_tensor;          /* tensor (a conv output) the sums in stats are for (-1: none) */
  double *stats2;            /* the same for a conv with stats_next = 2 (part of the stats allocation) */
  int stats_tensor2;
  double *bsums;             /* [batch][2][max cin] BN backward sums from a conv's dx epilogue */
  int bsum_tensor;           /* tensor (a BN output) the sums in bsums are for (-1: none) */
  int bsum_n;                /*   and how many [2][c] blocks bsums holds (images; 1: the whole batch's) */
  float *pre_coef;           /* lazy BN nodes' float affine coefficients (sc[c], sh[c] at pre_off) */
  float *rc_coef;            /* replayed BN nodes' float affine coefficients (sc[c], sh[c] at rc_off) */
  int *replay, nreplay;      /* the replayed nodes, by rp_at descending, then node index ascending */
  int recompute;             /* 1 (default): tensors whose recompute lowers the arena's peak are replayed
                                in the backward instead of kept (RN_RECOMPUTE=0 at build: none) */
  size_t recompute_floats;   /* with recompute: how far the arena may grow above its smallest planned
                                peak to keep the costliest replays (rn_model_set_recompute_mb; 0 = none) */
  size_t recompute_all_floats; /* the budget (in floats) with which every output is kept (0: nothing is
                                replayed, or over 256 candidates, where budgets do not apply) */
  unsigned char *param_done; /* [nparams] backward: the param's gradient is final (grad-ready order) */
  int report_next;           /* backward: highest param not yet reported ready */
  size_t report_end;         /*   and the end of its range */
} rn_model;

void rn_model_config_default(rn_model_config *c);
/* Parses an architecture name into c (arch, depth, bottleneck, cifar, plain, default shortcut).
 * Unknown names are errors listing the valid ones. */
rn_status rn_model_config_arch(rn_model_config *c, const char *arch, rn_err *e);
/* Fusion for the models built from now on. Level 1: a ReLU is merged into the BN or add node that
 * feeds it (when nothing else reads the pre-ReLU tensor). Level 2: also the last BN of a
 * post-activation residual branch is merged into the residual add (rn_bn_add_forward_*), so its
 * output is never stored. Level 3 (default): also a BN(+ReLU) read only by a convolution on the
 * direct kernel is applied by that convolution as it copies its input (rn_conv_pre; training only:
 * the BN skips its output pass). 0 = off, -1 = the default, which is the environment variable
 * RN_FUSE (read once; "0" = off, "1" = level 1, "2" = level 2, anything else or unset = 3).
 * Results are bitwise identical at every level; only speed and the node list differ. Returns the
 * previous setting. */
int rn_model_set_fusion(int on);
/* Recompute in the backward (applies to models built afterwards): 1 = the cheap elementwise outputs
 * (BN, BN+add(+ReLU), ReLU, option-A shortcut) whose recompute lowers the activation arena's peak
 * are not kept from the forward to the backward; the backward replays their nodes (the same bits;
 * rn_node.rp_at). 0 = every output needed by the backward is kept. -1 = the default, which is the
 * environment variable RN_RECOMPUTE (read once; "0" = off, anything else or unset = on). Returns
 * the previous setting. */
int rn_model_set_recompute(int on);
/* Recompute budget (applies to models built afterwards, with recompute on): the activation arena may
 * grow by up to mb megabytes (1e6 bytes) above the smallest peak the planner finds, to keep outputs
 * instead of replaying them: the costliest replays first (traffic per element, then size). 0 = the
 * smallest peak; a budget at least the difference to no recompute keeps them all. Models with
 * more than 256 candidate outputs (cifar-resnet1202) replay all of them, as with 0. -1 = the
 * default, which is the environment variable RN_RECOMPUTE_MB (read once; unset: 0). The same
 * results at every budget. Returns the previous setting. */
double rn_model_set_recompute_mb(double mb);
/* The smallest budget (MB, rounded up to 0.1) that keeps every output m replays (0: none replayed, or
 * too many candidates for budgets). */
double rn_model_recompute_all_mb(const rn_model *m);
/* The gradient of a fused BN+add's branch-BN input written over that input (applies to models built
 * afterwards): 1 = where the fused node is the input's last reader in the backward, its dx pass
 * writes the gradient in place over the (dead) convolution output, so the gradient needs no cold
 * buffer of its own (no read for ownership) and the arena no extra space. The same bits either way.
 * 0 = a separate buffer. -1 = the environment variable RN_DX_OVER_X (read once; "0" = off, anything
 * else or unset = on). Returns the previous setting. */
int rn_model_set_dx_over_input(int on);
/* Builds the graph for c, plans all arenas for `batch`, allocates them once. */
rn_status rn_model_build(rn_model *m, const rn_model_config *c, int batch, rn_err *e);
void rn_model_free(rn_model *m);
/* He (kaiming normal, fan_out, as torchvision) init of conv weights, BN gamma=1 beta=0 (gamma=0 for
 * zero_init_residual), running mean 0 var 1, linear like torchvision (uniform +-1/sqrt(in)),
 * all from `seed` (deterministic). Zeroes grad and momentum. */
void rn_model_init(rn_model *m, uint64_t seed);
/* Trainable parameter count (floats). */
size_t rn_model_param_count(const rn_model *m);
int rn_model_find_param(const rn_model *m, const char *name); /* index or -1 */
/* Prints the layer table and parameter counts. */
void rn_model_summary(const rn_model *m, FILE *f);

/* Input buffer [batch][in_h][in_w][in_channels] to fill before forward. */
float *rn_model_input(rn_model *m);
/* Logits [n][classes] after forward. */
const float *rn_model_logits(const rn_model *m);
/* Stochastic-depth draws for this step come from rn_key(seed, step, block). */
void rn_model_set_step(rn_model *m, uint64_t seed, int64_t step);
void rn_model_forward(rn_model *m, int n, int train);
/* Loss of the last forward; fills m->dlogits. */
double rn_model_loss(rn_model *m, int n, const int32_t *labels, float smoothing, int *top1, int *top5);
/* Backward from m->dlogits; parameter gradients ACCUMULATE into m->grad; cb (may be NULL) is
 * called as gradient ranges become final (from the end of the arena towards the start). */
void rn_model_backward(rn_model *m, int n, rn_grad_ready_fn cb, void *ctx);
void rn_model_zero_grad(rn_model *m);
/* d loss / d input [n][in_h][in_w][in_channels] after a backward with m->input_grad = 1. */
const float *rn_model_input_grad(const rn_model *m);
/* Human-readable name of an op ("conv", "bn", ...). */
const char *rn_op_name(rn_op op);
/* Name of a node's kind: rn_op_name, or "bn+relu" / "add+relu" / "bn+add" / "bn+add+relu" for
 * fused nodes. */
const char *rn_node_kind(const rn_node *n);

#endif
