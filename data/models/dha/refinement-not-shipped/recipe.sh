#!/usr/bin/env bash
# The commands that made this model (written by data/models/make_model.sh).
set -euo pipefail
export OMP_NUM_THREADS=1
.venv/bin/so3krates label data/molecules/dha.xyz --out data/datasets/dha.extxyz --frames 1200 --torsions 30 --conformer-relax-steps 100 --seed 3 --quiet
.venv/bin/so3krates label data/molecules/dha.xyz --out build/models/dha-independent.extxyz --frames 100 --torsions 0 --interval 20 --md-steps 600 --seed 103 --quiet
.venv/bin/so3krates train --data data/datasets/dha.extxyz --n-train 1000 --n-valid 100 --features 64 --layers 2 --degrees 1,2 --seed 0 --batch-size 1 --lr 1e-3 --lr-decay-rate 0.1 --lr-decay-steps 35000 --valid-every 2500 --max-steps 45000 --out build/models/dha --overwrite --quiet
rm -rf data/models/dha.new
cp -r build/models/dha/best data/models/dha.new
cp build/models/dha/log.jsonl build/models/dha/train_config.json data/models/dha.new/
cp data/datasets/dha.relaxed.xyz data/models/dha.new/structure.xyz
rm -rf data/models/dha
mv data/models/dha.new data/models/dha
.venv/bin/so3krates evaluate data/models/dha data/datasets/dha.extxyz --split test --json data/models/dha/evaluation-test.json --plots data/models/dha/plots
.venv/bin/so3krates evaluate data/models/dha build/models/dha-independent.extxyz --json data/models/dha/evaluation-independent.json
.venv/bin/so3krates stability data/models/dha data/models/dha/structure.xyz --temperatures 300,500 --time 100ps --timestep 0.5 --json data/models/dha/stability.json
.venv/bin/python data/models/collect_metrics.py data/models/dha

# Refined where the explorer goes (written by data/models/refine_model.sh).
.venv/bin/so3krates refine data/models/dha data/models/dha/structure.xyz --out build/refine/dha --rounds 2 --walkers 2 --hops 12 --scheduler threads --displaced 4 --label-weight 3 --steps 4000 --lr 2e-4 --lr-decay 0.1 --energy-weight 100 --batch-size 4
rm -rf build/refine/dha.candidate
cp -r build/refine/dha/model build/refine/dha.candidate
cp data/models/dha/structure.xyz build/refine/dha.candidate/structure.xyz
.venv/bin/so3krates evaluate build/refine/dha.candidate data/datasets/dha.extxyz --split test --json build/refine/dha.candidate/evaluation-test.json --plots build/refine/dha.candidate/plots
.venv/bin/so3krates evaluate build/refine/dha.candidate build/models/dha-independent.extxyz --json build/refine/dha.candidate/evaluation-independent.json
.venv/bin/so3krates stability build/refine/dha.candidate build/refine/dha.candidate/structure.xyz --temperatures 300,500 --time 100ps --timestep 0.5 --json build/refine/dha.candidate/stability.json
.venv/bin/python data/models/collect_metrics.py build/refine/dha.candidate --refinement build/refine/dha.candidate/refinement --previous data/models/dha # exit 0: it replaces data/models/dha; 1: it ships beside, as data/models/dha/refined; 2: data/models/dha/refinement-not-shipped keeps its reports
