#!/usr/bin/env bash
# Make one shipped model from its molecule, end to end, and record the exact commands.
#   data/models/make_model.sh NAME LABEL_SEED "LABEL OPTIONS" "TRAIN OPTIONS" [STABILITY_TIMESTEP_FS]
# Steps: label the dataset with GFN2-xTB (resumes; a finished dataset is kept), label a small
# independent test trajectory (a different seed), train, copy the best model here, evaluate it
# on the held-out test split and on the independent set, run the 100 ps stability check at
# 300 K and 500 K, and collect everything into data/models/NAME/metrics.json.
# Run from the repository root (`make models` does). Training runs in build/models/NAME.
set -euo pipefail
name=$1 seed=$2 label_options=$3 train_options=$4 md_timestep=${5:-0.5}
bin=${BIN:-.venv/bin}
model=data/models/$name
work=build/models/$name
recipe=build/models/$name.recipe.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # labels reproduce bit for bit on one thread

mkdir -p "$model" build/models
printf '#!/usr/bin/env bash\n# The commands that made this model (written by data/models/make_model.sh).\nset -euo pipefail\nexport OMP_NUM_THREADS=1\n' > "$recipe.tmp"
step() {  # print, record, run
  echo "+ $*" >&2
  echo "$*" >> "$recipe.tmp"
  "$@"
}
step "$bin/so3krates" label "data/molecules/$name.xyz" --out "data/datasets/$name.extxyz" $label_options --seed "$seed" --quiet
step "$bin/so3krates" label "data/molecules/$name.xyz" --out "build/models/$name-independent.extxyz" \
  --frames 100 --torsions 0 --interval 20 --md-steps 600 --seed $((seed + 100)) --quiet
step "$bin/so3krates" train --data "data/datasets/$name.extxyz" $train_options --out "$work" --overwrite --quiet
step rm -rf "$model.new"
step cp -r "$work/best" "$model.new"
step cp "$work/log.jsonl" "$work/train_config.json" "$model.new/"
step cp "data/datasets/$name.relaxed.xyz" "$model.new/structure.xyz"
step rm -rf "$model"
step mv "$model.new" "$model"
step "$bin/so3krates" evaluate "$model" "data/datasets/$name.extxyz" --split test --json "$model/evaluation-test.json" --plots "$model/plots"
step "$bin/so3krates" evaluate "$model" "build/models/$name-independent.extxyz" --json "$model/evaluation-independent.json"
step "$bin/so3krates" stability "$model" "$model/structure.xyz" --temperatures 300,500 --time 100ps \
  --timestep "$md_timestep" --json "$model/stability.json" || true  # a failed check is recorded, not fatal
step "$bin/python" data/models/collect_metrics.py "$model"
mv "$recipe.tmp" "$model/recipe.sh"
