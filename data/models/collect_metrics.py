"""Collect a shipped model's evaluations into its metrics.json, with the shipping verdict.

    python data/models/collect_metrics.py data/models/NAME
    python data/models/collect_metrics.py --table data/models/*/   # the README's Markdown table

A model is good enough to ship when its held-out test force MAE is at most 0.05 eV/Å and it
ran 100 ps of Langevin MD at 300 K and at 500 K without any bond stretched past 1.5x its
length (data/models/README.md). Reads evaluation-test.json, evaluation-independent.json,
stability.json and log.jsonl from the model directory (written by make_model.sh).
"""

import json
import sys
from pathlib import Path

FORCE_MAE_LIMIT = 0.05  # eV/Å


def main(model: Path) -> None:
    read = lambda name: json.loads((model / name).read_text())  # noqa: E731
    test, independent, stability = read("evaluation-test.json"), read("evaluation-independent.json"), read("stability.json")
    log = [json.loads(line) for line in (model / "log.jsonl").read_text().splitlines() if line.strip()]
    force_mae = test["forces"]["mae_eV_A"]
    accurate = force_mae <= FORCE_MAE_LIMIT
    stable = stability["passed"] and all(run["simulated_time_fs"] >= 100_000 for run in stability["runs"])
    reasons = []
    if not accurate:
        reasons.append(f"test force MAE {force_mae:.4f} eV/Å is above {FORCE_MAE_LIMIT} eV/Å")
    for run in stability["runs"]:
        if not run["passed"]:
            reasons.append(f"broke at {run['temperature']:g} K after {run['simulated_time_fs'] / 1000:g} ps: {run['guard']}")
    metrics = {
        "shippable": accurate and stable,
        "criterion": f"held-out test force MAE <= {FORCE_MAE_LIMIT} eV/Å and {stability['criterion']} at "
                     + " and ".join(f"{run['temperature']:g} K" for run in stability["runs"]),
        "shortcomings": reasons,
        "reference_method": "GFN2-xTB (tblite, accuracy 0.1)",
        "units": "eV, eV/Å (kcal/mol where named)",
        "test_split": test,
        "independent_trajectory": independent,
        "stability": stability,
        "training": {
            "steps": log[-1]["step"], "wall_time_s": log[-1]["wall_time"],
            "best_valid_forces_mae": min(entry["valid_forces_mae"] for entry in log),
        },
    }
    (model / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    verdict = "shippable" if metrics["shippable"] else "NOT shippable: " + "; ".join(reasons)
    print(f"{model.name}: test force MAE {force_mae:.4f} eV/Å, independent "
          f"{independent['forces']['mae_eV_A']:.4f} eV/Å, stability {'passed' if stable else 'failed'}: {verdict}")


def table(models: list[Path]) -> str:
    """One Markdown row per model, from the metrics.json files."""
    rows = ["| model | atoms | test force MAE (eV/Å) | independent trajectory | test energy MAE (meV/atom) | "
            "100 ps at 300 K / 500 K (largest bond stretch) | training | shippable |",
            "|---|---|---|---|---|---|---|---|"]
    for model in models:
        m = json.loads((model / "metrics.json").read_text())
        test, runs = m["test_split"], m["stability"]["runs"]
        atoms = test["num_atoms"] // test["num_frames"]
        md = " / ".join(f"{'intact' if r['passed'] else 'broke'} ({r['max_bond_ratio']:.2f}x)" for r in runs)
        rows.append(
            f"| {model.name} | {atoms} | {test['forces']['mae_eV_A']:.4f} | "
            f"{m['independent_trajectory']['forces']['mae_eV_A']:.4f} | "
            f"{1000 * test['energy_per_atom']['mae_eV']:.2f} | {md} | {m['training']['steps']:,} steps, "
            f"{m['training']['wall_time_s'] / 60:.0f} min | {'yes' if m['shippable'] else 'no'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        print(table([Path(p) for p in sys.argv[2:]]))
    else:
        main(Path(sys.argv[1]))
