# End-to-end tests of distributed training and checkpoint/resume (labels mpi, ckpt).
# Scripts get: build dir, source dir, then the mpirun command line (RN_MPIRUN).
set(RN_TRAIN_TEST_ENV "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;RN_SOURCE_DIR=${CMAKE_SOURCE_DIR};RN_BUILD_DIR=${CMAKE_BINARY_DIR};OMP_NUM_THREADS=1;RN_PYTHON=${RN_PYTHON}")

# 3. sampler coverage through the real loader for 1..4 ranks (writes its own shards).
foreach(np 1 2 3 4)
  rn_test(test_mpi_sampler LABELS mpi RANKS ${np} TESTNAME mpi_sampler_np${np} TIMEOUT 60)
endforeach()
