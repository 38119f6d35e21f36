/* rn-ckpt-diff A B [--params-only]: exit 0 iff all parameters (and, unless --params-only, momentum
 * buffers) are bitwise identical; 1 with the first differing dataset and its max abs diff; 2 on
 * errors (unreadable file, failed checksum, bad usage). */
#include <stdio.h>
#include <string.h>

#include "rn/ckpt.h"

int main(int argc, char **argv) {
  const char *f[2] = {NULL, NULL};
  int nf = 0, params_only = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--params-only")) params_only = 1;
    else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: rn-ckpt-diff A.h5 B.h5 [--params-only]\n"
             "exit 0: identical parameters (and momentum unless --params-only); 1: different; 2: error\n");
      return 0;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "rn-ckpt-diff: unknown option '%s'\n", argv[i]);
      return 2;
    } else if (nf < 2) f[nf++] = argv[i];
    else {
      fprintf(stderr, "rn-ckpt-diff: too many arguments ('%s')\n", argv[i]);
      return 2;
    }
  }
  if (nf != 2) {
    fprintf(stderr, "usage: rn-ckpt-diff A.h5 B.h5 [--params-only]\n");
    return 2;
  }
  rn_err e;
  int same = 0;
  if (rn_ckpt_diff(f[0], f[1], params_only, stdout, &same, &e)) {
    fprintf(stderr, "rn-ckpt-diff: %s\n", e.msg);
    return 2;
  }
  if (same) printf("identical %s\n", params_only ? "parameters" : "parameters and momentum buffers");
  return same ? 0 : 1;
}
