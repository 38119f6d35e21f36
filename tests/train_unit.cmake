rn_test(test_optim_config LABELS unit)
