/* train: the training and evaluation drivers behind rn-train and rn-eval (library code, so tests
 * can reach every piece; the programs only call these). */
#ifndef RN_TRAIN_H
#define RN_TRAIN_H

/* Exit codes of rn-train. */
enum {
  RN_EXIT_DONE = 0,        /* training finished */
  RN_EXIT_ERROR = 1,       /* runtime error (bad data, I/O, diverged replicas, ...) */
  RN_EXIT_USAGE = 2,       /* bad command line / configuration */
  RN_EXIT_REQUEUE = 75     /* stopped by SIGUSR1/SIGTERM after writing a checkpoint: requeue me */
};

/* Full programs: they initialise MPI themselves and return the process exit code. */
int rn_train_main(int argc, char **argv);
int rn_eval_main(int argc, char **argv);

#endif
