# Data module tests (shards, converters, sampler, augmentation, loader, bad input).
rn_test(test_data_sampler LABELS data unit TIMEOUT 60)
rn_test(test_data_convert LABELS data TIMEOUT 60)
rn_test(test_data_loader LABELS data TIMEOUT 120)
