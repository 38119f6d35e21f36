/* rn-eval: top-1/top-5 error of a checkpoint on a split, single crop and 10-crop (see --help). */
#include "rn/train.h"
int main(int argc, char **argv) { return rn_eval_main(argc, argv); }
