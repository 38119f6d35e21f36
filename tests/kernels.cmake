rn_test(test_blas LABELS unit ref)
# GEMM-shape benchmark (timings only, label perf): skx vs zen3 per ResNet shape, own vs BLIS threading.
rn_test(test_perf_gemm LABELS perf TIMEOUT 600)
