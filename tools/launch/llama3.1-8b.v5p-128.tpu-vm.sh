#!/usr/bin/env bash
# cpt-jax launch: tpu-v5p:4x4x4, 1 slice(s) of 16 host(s) x 4 chips
# Create the slice(s) first, e.g.:
#   gcloud compute tpus queued-resources create llama8b-cpt --zone=us-east5-a --accelerator-type=v5p-128 \
#     --runtime-version=<tpu-vm image> --node-id=llama8b-cpt
# then run this script from a machine with gcloud. Every worker runs the same command; rerunning
# it resumes the run from its last checkpoint.
set -euo pipefail
ZONE=${ZONE:-us-east5-a}
CMD='cpt-jax train configs/estimate/llama3.1-8b.yaml distributed.mode=auto'
gcloud compute tpus tpu-vm ssh llama8b-cpt --zone="$ZONE" --worker=all --command="$CMD" &
wait
