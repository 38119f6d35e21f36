#!/bin/sh
# Installs everything resnet-mpi needs on Debian 12, non-interactively. Idempotent:
# packages already present are not downloaded again. Must run as root.
set -eu
PKGS="cmake build-essential pkg-config git \
  libopenmpi-dev openmpi-bin libblis-dev libhdf5-openmpi-dev hdf5-tools \
  libturbojpeg0-dev zlib1g-dev \
  dataset-fashion-mnist \
  python3 python3-numpy python3-torch python3-torchvision python3-h5py python3-matplotlib \
  libtcmalloc-minimal4 \
  munge slurmctld slurmd slurm-client"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install-deps: installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq $missing
else
  echo "install-deps: all packages present"
fi
