#!/usr/bin/python3
"""Convert resnet-mpi checkpoints (HDF5, docs/CHECKPOINTS.md) to and from PyTorch state_dicts.

Run with Debian's /usr/bin/python3 (h5py, torch, torchvision).

  ckpt_torch.py to-torch CKPT.h5 OUT.pt [--check]
      Writes torch.save(state_dict). Keys are torchvision's; conv weights OIHW; BN
      num_batches_tracked int64. --check loads it into torchvision.models.<arch>(num_classes=N)
      with strict=True (ImageNet archs resnet18..152); CIFAR archs have no torchvision model,
      --check then only verifies the state_dict against the checkpoint.
  ckpt_torch.py from-torch IN.pt TEMPLATE.h5 OUT.h5 [--momentum zero|template]
      Writes a checkpoint with the weights of IN.pt in the layout of TEMPLATE.h5 (a checkpoint of
      the same model: same keys and shapes, or the conversion fails naming the key). Model
      description, state, config and metrics are taken from the template; momentum buffers are
      zero (default) or copied from the template. Checksums are recomputed; OUT.h5 is written to
      a temporary file, fsync'ed and renamed. rn_ckpt_load accepts the result.
  ckpt_torch.py check-forward OUT.pt ARCH CLASSES INPUT.f32 N H W C LOGITS.f32 [--tol T]
      Runs torchvision ARCH in eval mode on an NHWC float32 input and compares its logits with
      LOGITS.f32 (used by the tests to check the layout end to end).
Exit status 0 on success, 1 on a failed check, 2 on errors.
"""
import os
import sys
import tempfile
import zlib

import h5py
import numpy as np

FORMAT = "resnet-mpi-checkpoint"
VERSION = 1


class Fail(Exception):
    pass


def crc(arr):
    return zlib.crc32(np.ascontiguousarray(arr).tobytes()) & 0xFFFFFFFF


def sval(v):
    return v.decode() if isinstance(v, (bytes, np.bytes_)) else str(v)


def open_ckpt(path):
    try:
        f = h5py.File(path, "r")
    except OSError as ex:
        raise Fail(f"cannot open checkpoint {path}: {ex}")
    if sval(f.attrs.get("format", b"")) != FORMAT:
        raise Fail(f"{path} is not a resnet-mpi checkpoint (attribute /format)")
    ver = int(f.attrs.get("format_version", 0))
    if ver > VERSION:
        raise Fail(f"checkpoint {path} has format version {ver}, newer than this script supports ({VERSION})")
    return f


def read_checked(path, ds):
    """Dataset contents as a numpy array (stored dtype), after checking its crc32."""
    if ds.shape == ():
        arr = np.array(ds[()])
    else:
        arr = ds[...]
    if ds.dtype.kind == "S":
        raw = np.array(ds[()]).tobytes()
        raw = raw + b"\0" * (ds.dtype.itemsize - len(raw))
        got = zlib.crc32(raw) & 0xFFFFFFFF
    else:
        got = crc(arr)
    want = ds.attrs.get("crc32")
    if want is None:
        raise Fail(f"checkpoint {path}: dataset {ds.name} has no crc32 attribute")
    if int(want) != got:
        raise Fail(f"checkpoint {path}: checksum mismatch in dataset {ds.name} (stored {int(want):08x}, data {got:08x})")
    return arr


def model_items(f):
    return list(f["model"].items())


def to_torch(args):
    import torch
    if len(args) < 2:
        raise Fail("usage: to-torch CKPT.h5 OUT.pt [--check]")
    src, out, check = args[0], args[1], "--check" in args[2:]
    with open_ckpt(src) as f:
        sd = {}
        for k, ds in model_items(f):
            arr = read_checked(src, ds)
            if k.endswith(".num_batches_tracked"):
                sd[k] = torch.tensor(int(arr), dtype=torch.int64)
            else:
                sd[k] = torch.from_numpy(np.array(arr, dtype=np.float32))
        for ds in f["optim/momentum"].values():
            read_checked(src, ds)
        arch = sval(f["model"].attrs["arch"])
        ncls = int(f["model"].attrs["num_classes"])
        desc = {k: f["model"].attrs[k] for k in f["model"].attrs}
    # keep torchvision's order: module registration order = the checkpoint's creation order
    torch.save(sd, out)
    print(f"to-torch: {src} -> {out}: {len(sd)} tensors ({arch}, {ncls} classes)")
    if check:
        back = torch.load(out, map_location="cpu")
        for k, v in sd.items():
            if not torch.equal(back[k], v):
                raise Fail(f"to-torch --check: {k} differs after torch.save/torch.load")
        tv = torchvision_model(arch, ncls, desc)
        if tv is None:
            print(f"to-torch --check: {arch} has no torchvision counterpart; state_dict round trip checked only")
        else:
            tv.load_state_dict(back, strict=True)
            print(f"to-torch --check: torchvision.models.{arch}(num_classes={ncls}).load_state_dict(strict=True) OK")


def torchvision_model(arch, ncls, desc):
    import torchvision
    if not arch.startswith("resnet") or not hasattr(torchvision.models, arch):
        return None
    if int(desc.get("preact", 0)) or int(desc.get("width", 64)) not in (0, 64):
        return None
    if int(desc.get("stride_in_1x1", 0)) and int(desc.get("bottleneck", 0)):
        print(f"warning: {arch} with stride_in_1x1=1 has torchvision's keys but not its computation (v1 vs v1.5)")
    return getattr(torchvision.models, arch)(num_classes=ncls)


def load_state_dict(path):
    import torch
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as ex:  # noqa: BLE001 - report any unpickling problem
        raise Fail(f"cannot load {path} with torch.load: {ex}")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if hasattr(obj, "state_dict") and not isinstance(obj, dict):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise Fail(f"{path} does not hold a state_dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def from_torch(args):
    import shutil
    if len(args) < 3:
        raise Fail("usage: from-torch IN.pt TEMPLATE.h5 OUT.h5 [--momentum zero|template]")
    src, tpl, out = args[0], args[1], args[2]
    mom = "zero"
    rest = args[3:]
    if rest:
        if len(rest) != 2 or rest[0] != "--momentum" or rest[1] not in ("zero", "template"):
            raise Fail(f"from-torch: bad options {rest} (expected --momentum zero|template)")
        mom = rest[1]
    sd = load_state_dict(src)
    with open_ckpt(tpl) as f:
        keys = [k for k, _ in model_items(f)]
        shapes = {}
        for k, ds in model_items(f):
            read_checked(tpl, ds)
            shapes[k] = ds.shape
        for ds in f["optim/momentum"].values():
            read_checked(tpl, ds)
    missing = [k for k in keys if k not in sd and not k.endswith(".num_batches_tracked")]
    extra = [k for k in sd if k not in shapes]
    if missing:
        raise Fail(f"from-torch: {src} lacks {len(missing)} parameter(s) of the template {tpl}, first: {missing[0]}")
    if extra:
        raise Fail(f"from-torch: {src} has {len(extra)} key(s) the template {tpl} does not, first: {extra[0]}")
    arrays = {}
    for k in keys:
        if k not in sd:
            continue
        v = sd[k].detach().cpu()
        if k.endswith(".num_batches_tracked"):
            if v.numel() != 1:
                raise Fail(f"from-torch: {src}: {k} is not a scalar")
            arrays[k] = np.array(int(v.item()), dtype="<i8")
            continue
        a = v.numpy()
        if tuple(a.shape) != tuple(shapes[k]):
            raise Fail(f"from-torch: {src}: {k} has shape {list(a.shape)} but the template expects {list(shapes[k])}")
        if not np.all(np.isfinite(a)):
            raise Fail(f"from-torch: {src}: {k} holds NaN or Inf")
        arrays[k] = np.ascontiguousarray(a, dtype="<f4")
    d = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".from-torch-", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(tpl, tmp)
        with h5py.File(tmp, "r+") as f:
            for k, a in arrays.items():
                ds = f["model"][k]
                ds[()] = a
                ds.attrs.modify("crc32", np.uint32(crc(a)))
            if mom == "zero":
                for ds in f["optim/momentum"].values():
                    z = np.zeros(ds.shape, dtype="<f4")
                    ds[...] = z
                    ds.attrs.modify("crc32", np.uint32(crc(z)))
            f.flush()
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, out)
        fsync_dir(d)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # self-check: every checksum of the result
    with open_ckpt(out) as f:
        for _, ds in model_items(f):
            read_checked(out, ds)
        for ds in f["optim/momentum"].values():
            read_checked(out, ds)
    print(f"from-torch: {src} + template {tpl} -> {out} ({len(arrays)} tensors, momentum {mom})")


def check_forward(args):
    import torch
    if len(args) < 9:
        raise Fail("usage: check-forward OUT.pt ARCH CLASSES INPUT.f32 N H W C LOGITS.f32 [--tol T]")
    pt, arch, ncls, inp = args[0], args[1], int(args[2]), args[3]
    n, h, w, c = (int(x) for x in args[4:8])
    lg = args[8]
    tol = float(args[10]) if len(args) > 10 and args[9] == "--tol" else 1e-4
    torch.set_num_threads(2)
    m = torchvision_model(arch, ncls, {})
    if m is None:
        raise Fail(f"check-forward: no torchvision model for {arch}")
    m.load_state_dict(torch.load(pt, map_location="cpu"), strict=True)
    m.eval()
    x = np.fromfile(inp, dtype="<f4").reshape(n, h, w, c).transpose(0, 3, 1, 2).copy()
    want = np.fromfile(lg, dtype="<f4").reshape(n, ncls)
    with torch.no_grad():
        got = m(torch.from_numpy(x)).numpy()
    err = float(np.max(np.abs(got - want)) / max(1e-3, float(np.max(np.abs(want)))))
    print(f"check-forward: {arch} eval logits vs resnet-mpi: max rel err {err:.3g} (tol {tol:g})")
    if not err <= tol:
        print("check-forward: FAILED", file=sys.stderr)
        return 1
    return 0


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) >= 2 else 2
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "to-torch":
            to_torch(args)
        elif cmd == "from-torch":
            from_torch(args)
        elif cmd == "check-forward":
            return check_forward(args)
        else:
            raise Fail(f"unknown command '{cmd}' (to-torch, from-torch, check-forward)")
    except Fail as ex:
        print(f"ckpt_torch: {ex}", file=sys.stderr)
        return 2
    except RuntimeError as ex:  # torch's load_state_dict(strict=True) mismatch
        print(f"ckpt_torch: {ex}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
