#!/usr/bin/env bash
# The commands that made this model (written by data/models/make_model.sh).
set -euo pipefail
export OMP_NUM_THREADS=1
.venv/bin/so3krates label data/molecules/ac_ala3_nhme.xyz --out data/datasets/ac_ala3_nhme.extxyz --frames 1200 --torsions 30 --conformer-relax-steps 100 --seed 2 --quiet
.venv/bin/so3krates label data/molecules/ac_ala3_nhme.xyz --out build/models/ac_ala3_nhme-independent.extxyz --frames 100 --torsions 0 --interval 20 --md-steps 600 --seed 102 --quiet
.venv/bin/so3krates train --data data/datasets/ac_ala3_nhme.extxyz --n-train 1000 --n-valid 100 --features 64 --layers 2 --degrees 1,2 --seed 0 --zbl --batch-size 1 --lr 1e-3 --lr-decay-rate 0.1 --lr-decay-steps 40000 --valid-every 2500 --max-steps 50000 --out build/models/ac_ala3_nhme --overwrite --quiet
rm -rf data/models/ac_ala3_nhme.new
cp -r build/models/ac_ala3_nhme/best data/models/ac_ala3_nhme.new
cp build/models/ac_ala3_nhme/log.jsonl build/models/ac_ala3_nhme/train_config.json data/models/ac_ala3_nhme.new/
cp data/datasets/ac_ala3_nhme.relaxed.xyz data/models/ac_ala3_nhme.new/structure.xyz
rm -rf data/models/ac_ala3_nhme
mv data/models/ac_ala3_nhme.new data/models/ac_ala3_nhme
.venv/bin/so3krates evaluate data/models/ac_ala3_nhme data/datasets/ac_ala3_nhme.extxyz --split test --json data/models/ac_ala3_nhme/evaluation-test.json --plots data/models/ac_ala3_nhme/plots
.venv/bin/so3krates evaluate data/models/ac_ala3_nhme build/models/ac_ala3_nhme-independent.extxyz --json data/models/ac_ala3_nhme/evaluation-independent.json
.venv/bin/so3krates stability data/models/ac_ala3_nhme data/models/ac_ala3_nhme/structure.xyz --temperatures 300,500 --time 100ps --timestep 0.5 --json data/models/ac_ala3_nhme/stability.json
.venv/bin/python data/models/collect_metrics.py data/models/ac_ala3_nhme

# Refined where the explorer goes (written by data/models/refine_model.sh).
.venv/bin/so3krates refine data/models/ac_ala3_nhme data/models/ac_ala3_nhme/structure.xyz --out build/refine/ac_ala3_nhme --rounds 4 --walkers 2 --hops 12 --scheduler threads --displaced 4 --label-weight 3 --steps 4000 --lr 2e-4 --lr-decay 0.1 --energy-weight 100 --batch-size 4
rm -rf build/refine/ac_ala3_nhme.candidate
cp -r build/refine/ac_ala3_nhme/model build/refine/ac_ala3_nhme.candidate
cp data/models/ac_ala3_nhme/structure.xyz build/refine/ac_ala3_nhme.candidate/structure.xyz
.venv/bin/so3krates evaluate build/refine/ac_ala3_nhme.candidate data/datasets/ac_ala3_nhme.extxyz --split test --json build/refine/ac_ala3_nhme.candidate/evaluation-test.json --plots build/refine/ac_ala3_nhme.candidate/plots
.venv/bin/so3krates evaluate build/refine/ac_ala3_nhme.candidate build/models/ac_ala3_nhme-independent.extxyz --json build/refine/ac_ala3_nhme.candidate/evaluation-independent.json
.venv/bin/so3krates stability build/refine/ac_ala3_nhme.candidate build/refine/ac_ala3_nhme.candidate/structure.xyz --temperatures 300,500 --time 100ps --timestep 0.5 --json build/refine/ac_ala3_nhme.candidate/stability.json
.venv/bin/python data/models/collect_metrics.py build/refine/ac_ala3_nhme.candidate --refinement build/refine/ac_ala3_nhme.candidate/refinement --previous data/models/ac_ala3_nhme # exit 0: it replaces data/models/ac_ala3_nhme; 1: it ships beside, as data/models/ac_ala3_nhme/refined; 2: data/models/ac_ala3_nhme/refinement-not-shipped keeps its reports
