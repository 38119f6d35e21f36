# Checkpoint module tests (label ckpt).
rn_test(test_ckpt LABELS ckpt)
# scripts/ckpt_torch.py round trip through torchvision (needs /usr/bin/python3 with h5py, torch,
# torchvision) and the rn-ckpt-diff / rn-ckpt-info programs.
rn_test(test_ckpt_torch LABELS ckpt TIMEOUT 600)
add_dependencies(test_ckpt_torch rn-ckpt-diff rn-ckpt-info)
