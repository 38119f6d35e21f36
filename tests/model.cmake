# Model: builder (counts, names, planning) and graph driver (finite differences, PyTorch parity).
rn_test(test_model_params LABELS unit)
rn_test(test_model_fd LABELS unit)
