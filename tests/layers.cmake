# Layers: GEMM convolution against the naive reference (2 threads, and 1 thread), every layer's
# backward against double-precision central differences of double reference forwards.
rn_test(test_conv_ref LABELS unit ref TIMEOUT 120)
rn_test(test_conv_ref LABELS unit ref TIMEOUT 120 TESTNAME test_conv_ref_1thread ARGS 1)
rn_test(test_conv_ref LABELS unit ref TIMEOUT 120 TESTNAME test_conv_ref_seqchunks ARGS 2 0)
rn_test(test_layers_fd LABELS unit ref TIMEOUT 120)
# Direct AVX-512 convolution (stride 1, channels multiples of 16) against the naive reference.
rn_test(test_conv_direct LABELS unit ref TIMEOUT 120)
# Winograd F(2x2,3x3) convolution against the naive reference, and its dispatch.
rn_test(test_conv_wino LABELS unit ref TIMEOUT 120)
