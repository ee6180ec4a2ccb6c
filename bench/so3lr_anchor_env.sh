#!/usr/bin/env bash
# Rebuild the environment of the ORIGINAL SO3LR code, the anchor that bench/so3lr.py measures this
# project's SO3LR against. It lives outside the repository and never touches the project's venv or
# requirements.lock:
#
#     bash bench/so3lr_anchor_env.sh            # -> /work/anchor/so3lr-venv (python 3.12, jax 0.5.3)
#     SO3LR_ANCHOR_PYTHON=/work/anchor/so3lr-venv/bin/python .venv/bin/python bench/so3lr.py
#
# Sources. Only PyPI is reachable from this machine, so the git dependencies come from bare git
# mirrors (MIRROR=/work/.mirror/<owner>+<name>/repo) and are installed with --no-deps; their PyPI
# dependencies are listed explicitly below, with jax/jaxlib pinned to 0.5.3 as so3lr pins them.
#
#   so3lr   general-molecular-simulations/so3lr  HEAD (5ec39b9, "jaxpme import bugfix")
#   mlff    kabylda/mlff  branch v1.0. so3lr's pyproject pins branch v1.0_dev_import (and before it,
#           from 2025-07, v1.0-tfds-pme); NEITHER branch is in the mirror. v1.0 is the branch so3lr
#           pinned from 2025-04 to 2025-07, and the newest one that loads the shipped checkpoint
#           as it is (no theory levels). What that changes (see bench/so3lr.py): the ASE calculator
#           of v1.0 takes no `calculate_hessian`, so bench/so3lr.py builds so3lr's calculator
#           (so3lr.ase_utils.make_ase_calculator) with the same arguments minus that one; k-space
#           (Ewald/PME) electrostatics are absent, which so3lr's defaults do not use
#           (coulomb_kspace_do_ewald=False: real-space shifted-force Coulomb up to lr_cutoff).
#           The mirror also lacks the blob of mlff/sph_ops/u_matrix.pickle (a large-file filter),
#           which mlff loads at import but uses only in SymmetricContraction (so3kratACE), never in
#           the SO3krates path SO3LR runs: a placeholder pickle ({}) stands in for it. And v1.0's
#           tip (since 4da24c7, 2025-05-05) does not import under Python 3.12: three annotations
#           `Optional[Sequence[[str]]]` in mlff/mdx/potential/mlff_potential_sparse.py raise
#           "TypeError: unhashable type: 'list'" at import; they are rewritten to
#           `Optional[Sequence[str]]` (annotations only; nothing computed changes).
#   jax-md  kabylda/jax-md  branch main        (so3lr's pin)
#   glp     kabylda/glp     branch electrostatics_neighbourlist (so3lr's pin), its dep comms from
#           sirmarcel/comms main
#   jraph   kabylda/jraph   branch master      (so3lr's pin)
#   jax-pme fbruenig/jax-pme branch main       (so3lr's pin; imported only by so3lr's CLI)
set -euo pipefail

ANCHOR=${SO3LR_ANCHOR_DIR:-/work/anchor}
MIRROR=${MIRROR:-/work/.mirror}
PYTHON=${PYTHON312:-/root/.pyenv/versions/3.12.1/bin/python3.12}
VENV=$ANCHOR/so3lr-venv
SRC=$ANCHOR/src

export_tree() {  # export_tree <mirror name> <ref> <into> [paths...]: git archive of a bare mirror
  local repo=$MIRROR/$1/repo ref=$2 into=$SRC/$3
  shift 3
  rm -rf "$into"
  mkdir -p "$into"
  git --git-dir="$repo" archive "$ref" -- "$@" | tar -x -C "$into"
  echo "$1 $(git --git-dir="$repo" rev-parse "$ref")" >"$into/.anchor-source"
}

mkdir -p "$SRC"
# paths limited to what installs: the mirrors lack a few large blobs (notebooks, test assets)
export_tree general-molecular-simulations+so3lr HEAD so3lr pyproject.toml README.md LICENSE so3lr tests
export_tree kabylda+mlff v1.0 mlff pyproject.toml README.md LICENSE.md mlff ':(exclude)mlff/sph_ops/u_matrix.pickle'
"$PYTHON" -c "import pickle, sys; pickle.dump({}, open(sys.argv[1], 'wb'))" "$SRC/mlff/mlff/sph_ops/u_matrix.pickle"
sed -i 's/Optional\[Sequence\[\[str\]\]\]/Optional[Sequence[str]]/' "$SRC/mlff/mlff/mdx/potential/mlff_potential_sparse.py"
export_tree kabylda+jax-md main jax-md setup.py README.md LICENSE jax_md
export_tree kabylda+glp electrostatics_neighbourlist glp pyproject.toml README.md glp
export_tree sirmarcel+comms main comms .
export_tree kabylda+jraph master jraph .
export_tree fbruenig+jax-pme main jax-pme .

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip wheel "setuptools<81"
cat >"$ANCHOR/constraints.txt" <<'EOF'
jax==0.5.3
jaxlib==0.5.3
orbax-checkpoint==0.11.13
clu==0.0.9
setuptools<81
EOF
# PyPI dependencies of so3lr, mlff (v1.0 pyproject), jax-md (setup.py), glp, comms, jax-pme
"${PIP[@]}" install -c "$ANCHOR/constraints.txt" \
  jax jaxlib numpy ase h5py "setuptools<81" orbax-checkpoint \
  clu e3x flax jaxopt optax portpicker pandas scikit-learn tqdm wandb pyyaml pytest h5py ml_collections \
  absl-py einops e3nn-jax dm-haiku frozendict pymatgen \
  specable vesin click
# the git sources themselves, without resolving their (GitHub) dependencies again
for name in comms jraph jax-md glp jax-pme mlff so3lr; do
  "${PIP[@]}" install -c "$ANCHOR/constraints.txt" --no-deps "$SRC/$name"
done
"$VENV/bin/python" - <<'EOF'
import jax, so3lr, mlff, jax_md, glp
print("anchor environment ready: jax", jax.__version__, "so3lr", so3lr.__version__, "from", so3lr.__file__)
EOF
