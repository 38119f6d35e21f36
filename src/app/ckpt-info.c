/* rn-ckpt-info FILE...: prints state, model description and datasets of each checkpoint and
 * verifies every checksum. Exit 0 if all files verify, 1 otherwise. */
#include <stdio.h>
#include <string.h>

#include "rn/ckpt.h"

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    fprintf(argc < 2 ? stderr : stdout, "usage: rn-ckpt-info FILE.h5 [FILE.h5 ...]\n");
    return argc < 2 ? 2 : 0;
  }
  int bad = 0;
  for (int i = 1; i < argc; i++) {
    rn_err e;
    if (rn_ckpt_info(argv[i], stdout, &e)) {
      fprintf(stderr, "rn-ckpt-info: %s\n", e.msg);
      bad = 1;
    }
  }
  return bad;
}
