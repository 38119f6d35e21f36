# Checkpoint module tests (label ckpt).
rn_test(test_ckpt LABELS ckpt)
