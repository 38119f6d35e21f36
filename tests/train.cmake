# End-to-end tests of distributed training and checkpoint/resume (labels mpi, ckpt).
# Scripts get: build dir, source dir, then the mpirun command line (RN_MPIRUN).
set(RN_TRAIN_TEST_ENV "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;RN_SOURCE_DIR=${CMAKE_SOURCE_DIR};RN_BUILD_DIR=${CMAKE_BINARY_DIR};OMP_NUM_THREADS=1;RN_PYTHON=${RN_PYTHON}")

# 3. sampler coverage through the real loader for 1..4 ranks (writes its own shards).
foreach(np 1 2 3 4)
  rn_test(test_mpi_sampler LABELS mpi RANKS ${np} TESTNAME mpi_sampler_np${np} TIMEOUT 60)
endforeach()

# Script tests: bash tests/<name>.sh BUILD SRC ${RN_MPIRUN}
function(rn_train_test name script)
  cmake_parse_arguments(T "" "TIMEOUT" "LABELS;ENV" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  add_test(NAME ${name} COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/${script} ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR} ${RN_MPIRUN})
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "${RN_TRAIN_TEST_ENV};${T_ENV}")
endfunction()

# 1. P ranks x B == 1 rank x P*B (bn-eval, aug none) within 1e-5, overlap on/off, many buckets.
rn_train_test(train_mpi_equiv train_mpi_equiv.sh LABELS mpi TIMEOUT 120)
# 2. replicas bitwise identical (--check-replicas-every 1), and injected divergence is caught.
rn_train_test(train_mpi_replicas train_mpi_replicas.sh LABELS mpi TIMEOUT 120 ENV RN_REPLICA_MODE=bn-eval)
rn_train_test(train_mpi_replicas_default train_mpi_replicas.sh LABELS mpi TIMEOUT 120 ENV RN_REPLICA_MODE=default)
# 4. kill -9 of one rank, and a corrupt JPEG read by one rank: the job stops (no hang), clear message.
rn_train_test(train_mpi_failure train_mpi_failure.sh LABELS mpi TIMEOUT 200)
# 5. bitwise resume (--steps N/2 + resume; SIGUSR1 -> exit 75 + resume), 1 rank and 2 ranks.
rn_train_test(train_ckpt_resume_np1 train_ckpt_resume.sh LABELS ckpt TIMEOUT 120 ENV RN_RESUME_NP=1)
rn_train_test(train_ckpt_resume_np2 train_ckpt_resume.sh LABELS ckpt mpi TIMEOUT 120 ENV RN_RESUME_NP=2)
# 6. elastic resume 2->1, 1->2, 1->4 ranks (same result within 1e-5) and LR rescaling for another global batch.
rn_train_test(train_ckpt_elastic train_ckpt_elastic.sh LABELS ckpt mpi TIMEOUT 120)
# 7. resume edge cases (fresh start, fallback past a corrupt newest checkpoint, garbage --resume) and bad options, 2 ranks.
rn_train_test(train_ckpt_bad train_ckpt_bad.sh LABELS ckpt mpi TIMEOUT 180)
# rn-eval reproduces the trainer's validation; periodic checkpoints and keep-K through the trainer.
rn_train_test(train_eval train_eval.sh LABELS ckpt mpi TIMEOUT 120)
