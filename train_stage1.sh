#!/usr/bin/env bash
# Stage 1 of M2UGen training (configs/stage1.yaml), on one GPU or many, or on the CPU.
#   NPROC  processes on this machine (default 1)
#   MODEL  model to start from (default tiny)
#   DATA   dataset spec (default data/synth/dataset.yaml, synthesised on first use)
#   TORCHRUN_ARGS  torchrun's launch flags (default --standalone; for many nodes e.g.
#          "--nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint host0:29500")
#   OUT    output model directory (default runs/stage1)
# Extra arguments are key=value overrides, e.g.  ./train_stage1.sh max_steps=1000 --resume
set -euo pipefail
cd "$(dirname "$0")"
BIN=$( [ -x .venv/bin/m2ugen ] && echo .venv/bin/ || true )
DATA=${DATA:-data/synth/dataset.yaml}
if [ "$DATA" = data/synth/dataset.yaml ] && [ ! -f "$DATA" ]; then "${BIN}m2ugen" synth-data data/synth; fi
# a mistake in the config or the overrides: one line here, not a torchrun traceback
"${BIN}m2ugen" train --check --config configs/stage1.yaml model="${MODEL:-tiny}" data="$DATA" out="${OUT:-runs/stage1}" "$@"
# shellcheck disable=SC2086  # TORCHRUN_ARGS holds several flags
exec "${BIN}torchrun" ${TORCHRUN_ARGS:---standalone} --nproc_per_node "${NPROC:-1}" -m m2ugen.cli train --config configs/stage1.yaml model="${MODEL:-tiny}" data="$DATA" out="${OUT:-runs/stage1}" "$@"
