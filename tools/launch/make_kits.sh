#!/usr/bin/env bash
# Regenerates the example launch kits beside this script from the shipped 8B plan (tests/test_launch.py
# checks that the committed kits equal what these commands write today).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-tools/launch}
plan=configs/estimate/llama3.1-8b.yaml
cpt-jax launch $plan mesh.dcn_data=2 --target v5p-256 --slices 2 --format gke \
  --image us-docker.pkg.dev/PROJECT/cpt-jax/cpt-jax-tpu:latest --name llama8b-cpt --out "$out/llama3.1-8b.v5p-256x2.jobset.yaml"
cpt-jax launch $plan --target v5p-128 --format tpu-vm --name llama8b-cpt --zone us-east5-a \
  --out "$out/llama3.1-8b.v5p-128.tpu-vm.sh"
cpt-jax launch $plan --target h100x64 --format slurm --name llama8b-cpt --time 48:00:00 \
  --out "$out/llama3.1-8b.h100x64.sbatch"
