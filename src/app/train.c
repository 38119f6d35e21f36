/* rn-train: data-parallel ResNet training (see --help). */
#include "rn/train.h"
int main(int argc, char **argv) { return rn_train_main(argc, argv); }
