#!/usr/bin/env bash
# Refine a shipped model where the explorer goes (`so3krates refine`), measure the result as the
# model was measured, and replace the shipped model only when it is better on every measure.
#   data/models/refine_model.sh NAME "REFINE OPTIONS" [START]
# START (default data/models/NAME) is the model the refinement starts from, for example a larger
# model trained on NAME's data; its recipe.sh (the commands that made it) heads the refined model's.
# Either way the refined model is measured against, and may replace, the shipped data/models/NAME.
# Steps: refine data/models/NAME on its xTB-relaxed structure in build/refine/NAME (resumes), put
# the refined model with its structure in build/refine/NAME.candidate, evaluate it on the held-out
# test split and the independent trajectory (relabelled by the model's recipe if build/ lacks it),
# run the 100 ps stability check at 300 K and 500 K, collect everything and the refinement's
# targets into its metrics.json, compare with the shipped model's, and replace that only if
# nothing got worse; if it is at least better for exploring (more minima confirmed, lower force
# error on displaced minima) it ships beside it, in data/models/NAME/refined/; otherwise only its
# reports and metrics are kept, in data/models/NAME/refinement-not-shipped/. A shipped refined
# model carries the round reports in refinement/ and its recipe.sh ends with these commands. Run from the repository root (`make refined-models` does).
set -euo pipefail
name=$1 refine_options=$2
bin=${BIN:-.venv/bin}
model=data/models/$name
start=${3:-$model}
work=${WORK:-build/refine}/$name
candidate=$work.candidate
independent=build/models/$name-independent.extxyz
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # labels reproduce bit for bit on one thread

mkdir -p "$(dirname "$work")"
steps=$work.steps.sh
printf '\n# Refined where the explorer goes (written by data/models/refine_model.sh).\n' > "$steps"
step() {  # print, record, run
  echo "+ $*" >&2
  echo "$*" >> "$steps"
  "$@"
}
if [ ! -f "$independent" ]; then  # the independent trajectory, as the model's recipe made it
  grep -e "-independent.extxyz" "$model/recipe.sh" | head -n 1 > "$work.independent.sh"
  bash "$work.independent.sh"
fi
# shellcheck disable=SC2086
step "$bin/so3krates" refine "$start" "$model/structure.xyz" --out "$work" $refine_options
step rm -rf "$candidate"
if [ -d "$work/model" ]; then
  step cp -r "$work/model" "$candidate"
else  # the first round already met the targets: nothing was fine-tuned, the start model is the result
  step cp -r "$start" "$candidate"
  step rm -f "$candidate/metrics.json" "$candidate/stability.json" "$candidate/evaluation-test.json" \
    "$candidate/evaluation-independent.json" "$candidate/recipe.sh"
fi
step cp "$model/structure.xyz" "$candidate/structure.xyz"
step "$bin/so3krates" evaluate "$candidate" "data/datasets/$name.extxyz" --split test --json "$candidate/evaluation-test.json" --plots "$candidate/plots"
step "$bin/so3krates" evaluate "$candidate" "$independent" --json "$candidate/evaluation-independent.json"
step "$bin/so3krates" stability "$candidate" "$candidate/structure.xyz" --temperatures 300,500 --time 100ps \
  --timestep 0.5 --json "$candidate/stability.json" || true  # a failed check is recorded, not fatal
mkdir -p "$candidate/refinement"
cp "$work/report.json" "$work/rounds.csv" "$work/rounds.png" "$work/refine.json" "$candidate/refinement/"
for round in "$work"/round*/; do
  kept="$candidate/refinement/$(basename "$round")"
  mkdir -p "$kept"
  cp "$round/report.json" "$round/validation.json" "$kept/"
  if [ -f "$round/train/log.jsonl" ]; then cp "$round/train/log.jsonl" "$kept/train_log.jsonl"; fi
done
if ls "$work"/round*/train/log.jsonl > /dev/null 2>&1; then  # the last fine-tuning's log and configuration
  last_run=$(dirname "$(ls "$work"/round*/train/log.jsonl | sort -V | tail -n 1)")
  cp "$last_run/log.jsonl" "$last_run/train_config.json" "$candidate/"
fi
echo "$bin/python data/models/collect_metrics.py $candidate --refinement $candidate/refinement --previous $model --start $start" \
  "# exit 0: it replaces $model; 1: it ships beside, as $model/refined; 2: $model/refinement-not-shipped keeps its reports" >> "$steps"
cat "$start/recipe.sh" "$steps" > "$candidate/recipe.sh"
verdict=0
"$bin/python" data/models/collect_metrics.py "$candidate" --refinement "$candidate/refinement" --previous "$model" \
  --start "$start" || verdict=$?
case $verdict in
  0)
    rm -rf "$model.old" "$candidate/refined" "$candidate/refinement-not-shipped"
    mv "$model" "$model.old"
    mv "$candidate" "$model"
    rm -rf "$model.old"
    echo "$model: replaced by the refined model (no worse on any measure)" >&2 ;;
  1)  # better for exploring, worse elsewhere: a checkpoint of its own; its metrics.json says what is worse
    rm -rf "$model/refined"
    mv "$candidate" "$model/refined"
    echo "$model: kept; the refined model, better for exploring only, ships beside it in $model/refined" >&2 ;;
  2)  # not better even where the explorer goes: the evidence is kept, not the parameters
    rm -rf "$model/refinement-not-shipped"
    mkdir -p "$model/refinement-not-shipped"
    cp -r "$candidate/refinement" "$candidate/metrics.json" "$candidate/evaluation-test.json" \
      "$candidate/evaluation-independent.json" "$candidate/recipe.sh" "$model/refinement-not-shipped/"
    echo "$model: kept; the refined model is not better even for exploring (reports in $model/refinement-not-shipped)" >&2 ;;
  *) exit "$verdict" ;;
esac
