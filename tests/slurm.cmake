# Real-Slurm tests (label slurm): a private single-machine cluster (scripts/slurm-local.sh) runs
# jobs/fashion-mnist.sbatch, preempts it with SIGUSR1, and checks requeue + bitwise resume
# against an uninterrupted mpirun run. Needs root and Debian's munge, slurmctld, slurmd,
# slurm-client (scripts/install-deps.sh); rn-train and rn-ckpt-diff must be built.
#   ctest -L slurm --output-on-failure
add_test(NAME slurm_requeue
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_slurm_requeue.sh ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
set_tests_properties(slurm_requeue PROPERTIES
  LABELS "slurm"
  TIMEOUT 600
  RUN_SERIAL TRUE
  ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1")
