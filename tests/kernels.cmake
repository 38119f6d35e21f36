rn_test(test_blas LABELS unit ref)
