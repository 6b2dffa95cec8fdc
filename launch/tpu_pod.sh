#!/usr/bin/env bash
# Create a Cloud TPU VM slice, run one ftjax process per worker (JAX's multi-controller runtime finds
# its peers from the TPU metadata), then delete the slice, also on failure or Ctrl-C.
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR -- --config=configs/simclr_imagenet.py --workdir=/mnt/shared/runs/simclr
# e.g. ACCELERATOR=v5litepod-32. The workdir must be a filesystem every worker shares (Filestore / NFS,
# or a gcsfuse mount): checkpoints are written by all workers, metrics and reports by worker 0.
# The code shipped is this checkout's HEAD (git archive); TFDS data via $TFDS_DATA_DIR on the workers.
set -euo pipefail
if [[ $# -lt 4 || "$4" != "--" ]]; then
  echo "usage: launch/tpu_pod.sh NAME ZONE ACCELERATOR -- <ftjax.main args>" >&2; exit 2
fi
NAME=$1 ZONE=$2 ACCELERATOR=$3; shift 4
VERSION=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
ARGS=$(printf ' %q' "$@")
cd "$(dirname "$0")/.."

gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$VERSION"
trap 'gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet' EXIT

git archive --format=tar.gz -o /tmp/ftjax-$NAME.tar.gz HEAD
gcloud compute tpus tpu-vm scp /tmp/ftjax-$NAME.tar.gz "$NAME":ftjax.tar.gz --zone="$ZONE" --worker=all
# torch comes from the CPU index: the one on PyPI for Linux is a multi-GB CUDA build.
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="set -e
  mkdir -p ftjax && tar xzf ftjax.tar.gz -C ftjax && cd ftjax
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q --extra-index-url https://download.pytorch.org/whl/cpu -e . 'jax[tpu]'
  python -m ftjax.main$ARGS --config.distributed.auto=True"
