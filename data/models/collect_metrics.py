"""Collect a shipped model's evaluations into its metrics.json, with the shipping verdict.

    python data/models/collect_metrics.py data/models/NAME
    python data/models/collect_metrics.py --table data/models/*/   # the README's Markdown table
    python data/models/collect_metrics.py CANDIDATE --refinement DIR --previous data/models/NAME [--start DIR]

The last form (refine_model.sh) adds the refinement's targets (issue 16) to a refined model's
metrics.json and compares it with the shipped model, measure by measure. It exits 0 when the
refined model is no worse on any measure and better on at least one (it replaces the shipped
model), 1 when it is at least better for exploring (more of its lowest minima confirmed by xTB and
a lower force error on displaced minima: it ships beside), else 2 (only its reports are kept).

A model is good enough to ship when its held-out test force MAE is at most 0.05 eV/Å and it
ran 100 ps of Langevin MD at 300 K and at 500 K without any bond stretched past 1.5x its
length (data/models/README.md). Reads evaluation-test.json, evaluation-independent.json,
stability.json and log.jsonl from the model directory (written by make_model.sh).
"""

import argparse
import json
import sys
from pathlib import Path

FORCE_MAE_LIMIT = 0.05  # eV/Å
# the refinement's targets: of the 10 lowest minima of a fresh exploration, at least 9 stay minima
# of xTB with relative energies within 0.05 eV of xTB's; the force error on those minima displaced
# at random by 0.1 Å; the CPU time of the whole refinement
CONFIRMED_TARGET, RELATIVE_ENERGY_TARGET, DISPLACED_FORCE_TARGET, CPU_MINUTES_TARGET = 9, 0.05, 0.2, 60.0


def main(model: Path) -> dict:
    read = lambda name: json.loads((model / name).read_text())  # noqa: E731
    test, independent, stability = read("evaluation-test.json"), read("evaluation-independent.json"), read("stability.json")
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
        "training": _training(model),
    }
    (model / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    verdict = "shippable" if metrics["shippable"] else "NOT shippable: " + "; ".join(reasons)
    print(f"{model.name}: test force MAE {force_mae:.4f} eV/Å, independent "
          f"{independent['forces']['mae_eV_A']:.4f} eV/Å, stability {'passed' if stable else 'failed'}: {verdict}")
    return metrics


def _training(model: Path) -> dict:
    """The training run that made ``model`` (its log.jsonl)."""
    log = [json.loads(line) for line in (model / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"steps": log[-1]["step"], "wall_time_s": log[-1]["wall_time"],
            "best_valid_forces_mae": min(entry["valid_forces_mae"] for entry in log)}


def _exploration(report: dict) -> dict:
    """What a round's validation measured of the model it explored with."""
    return {"model": report["model"], "confirmed": report["confirmed"], "validated": report["validated"],
            "relative_energy_max_eV": report.get("relative_energy_max"),
            "displaced_forces_mae_eV_A": (report.get("displaced_error") or {}).get("forces_mae")}


REPLACE, BESIDE, NOT_SHIPPED = 0, 1, 2
# timings on a shared machine scatter: a cost within this factor of the shipped model's is no worse
NOISE = {"MD cost (wall seconds per simulated ps, the 100 ps runs)": 1.3}


def _md_cost(stability: dict) -> float | None:
    """Wall seconds per simulated picosecond of the stability runs (one thread each), averaged."""
    runs = [run for run in stability["runs"] if run.get("wall_s") and run.get("simulated_time_fs")]
    return round(sum(run["wall_s"] / (run["simulated_time_fs"] / 1000) for run in runs) / len(runs), 2) if runs else None


def refinement(model: Path, reports: Path, previous: Path, start_model: Path | None = None) -> int:
    """Add the refinement's targets and the comparison with ``previous`` to ``model``'s metrics.json
    (written by :func:`main` first); the verdict: REPLACE, BESIDE or NOT_SHIPPED (module docstring).
    ``start_model``: the model the refinement started from, when not ``previous`` (a larger model
    trained on the same data, say); its training is the one reported."""
    metrics = main(model)
    rounds = json.loads((reports / "report.json").read_text())["rounds"]
    start, final = _exploration(rounds[0]), _exploration(rounds[-1])
    start_dir = start_model or previous
    other_start = start_dir.resolve() != previous.resolve()
    # where the explorer goes, the shipped model is measured by the first round of a refinement that
    # started from it; a refinement from another model takes that from the shipped model's own record
    shipped_exploration = _shipped_exploration(previous) if other_start else start
    cpu_minutes = sum(sum(r["cpu_seconds"].values()) for r in rounds) / 60
    old = json.loads((previous / "metrics.json").read_text())
    targets = {
        f"at least {CONFIRMED_TARGET} of the 10 lowest minima confirmed by xTB": final["confirmed"] >= CONFIRMED_TARGET,
        f"relative energies of confirmed minima within {RELATIVE_ENERGY_TARGET} eV of xTB's":
            final["relative_energy_max_eV"] is not None and final["relative_energy_max_eV"] <= RELATIVE_ENERGY_TARGET,
        f"force MAE at 0.1 Å random displacements <= {DISPLACED_FORCE_TARGET} eV/Å":
            final["displaced_forces_mae_eV_A"] is not None and final["displaced_forces_mae_eV_A"] <= DISPLACED_FORCE_TARGET,
        "test-split force and energy MAE no worse than the model it refined":
            metrics["test_split"]["forces"]["mae_eV_A"] <= old["test_split"]["forces"]["mae_eV_A"]
            and metrics["test_split"]["energy"]["mae_eV"] <= old["test_split"]["energy"]["mae_eV"],
        f"the whole refinement within {CPU_MINUTES_TARGET:g} CPU-minutes": cpu_minutes <= CPU_MINUTES_TARGET,
    }
    lower = {  # measure: (refined, shipped); lower is better
        "test force MAE (eV/Å)": (metrics["test_split"]["forces"]["mae_eV_A"], old["test_split"]["forces"]["mae_eV_A"]),
        "test energy MAE (eV)": (metrics["test_split"]["energy"]["mae_eV"], old["test_split"]["energy"]["mae_eV"]),
        "independent force MAE (eV/Å)": (metrics["independent_trajectory"]["forces"]["mae_eV_A"],
                                         old["independent_trajectory"]["forces"]["mae_eV_A"]),
        "independent energy MAE (eV)": (metrics["independent_trajectory"]["energy"]["mae_eV"],
                                        old["independent_trajectory"]["energy"]["mae_eV"]),
        "force MAE on displaced minima of a fresh exploration (eV/Å)": (
            final["displaced_forces_mae_eV_A"], (shipped_exploration or {}).get("displaced_forces_mae_eV_A")),
        "minima not confirmed by xTB, of the 10 lowest": (
            final["validated"] - final["confirmed"],
            None if shipped_exploration is None else shipped_exploration["validated"] - shipped_exploration["confirmed"]),
        "100 ps runs that broke": (sum(not r["passed"] for r in metrics["stability"]["runs"]),
                                   sum(not r["passed"] for r in old["stability"]["runs"])),
        # a larger network is slower in MD, exploration and the dashboard: a cost users feel
        "MD cost (wall seconds per simulated ps, the 100 ps runs)": (_md_cost(metrics["stability"]),
                                                                     _md_cost(old["stability"])),
    }
    comparison = {name: {"refined": new, "shipped": was, "no_worse": new is not None and was is not None
                         and new <= was * NOISE.get(name, 1.0)} for name, (new, was) in lower.items()}
    better = all(c["no_worse"] for c in comparison.values()) and any(
        c["refined"] < c["shipped"] for name, c in comparison.items() if name not in NOISE)
    exploring = [comparison[name] for name in ("force MAE on displaced minima of a fresh exploration (eV/Å)",
                                               "minima not confirmed by xTB, of the 10 lowest")]
    better_for_exploring = all(c["no_worse"] and c["refined"] < c["shipped"] for c in exploring)
    verdict = REPLACE if better else BESIDE if better_for_exploring else NOT_SHIPPED
    # the training that made the model it refined, then the refinement's last fine-tuning
    first = _training(start_dir) if other_start else old["training"]
    fine_tuned = any(r["next_model"] is not None for r in rounds)
    metrics["training"] = {**first, "last_fine_tuning": metrics["training"]} if fine_tuned else first
    metrics["refinement"] = {
        "reports": "refinement/ (report.json, rounds.csv, rounds.png, roundK/report.json and validation.json)",
        "rounds": sum(r["next_model"] is not None for r in rounds),
        "labels": sum(sum(r["labels_added"].values()) for r in rounds),
        "cpu_minutes": round(cpu_minutes, 1),
        "start": start, "final": final, "shipped_model_exploring": shipped_exploration,
        "targets": targets, "targets_met": all(targets.values()),
        "compared_with_shipped": comparison, "better_on_every_measure": better,
        "better_for_exploring": better_for_exploring,
        "verdict": {REPLACE: "replaces the shipped model", BESIDE: "ships beside the shipped model (NAME/refined)",
                    NOT_SHIPPED: "not shipped: only its reports are kept (NAME/refinement-not-shipped)"}[verdict],
    }
    (model / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"{model.name}: refinement targets {'met' if all(targets.values()) else 'NOT all met'}: "
          + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in targets.items()))
    print(f"{model.name}: against the shipped model: " + "; ".join(
        f"{k} {c['refined']} vs {c['shipped']}{'' if c['no_worse'] else ' (WORSE)'}" for k, c in comparison.items()))
    return verdict


def _shipped_exploration(shipped: Path) -> dict | None:
    """The shipped model's first-round measures (confirmed minima, displaced-minima force error), as
    a refinement that started from it recorded them (in its metrics.json, or its refined model's)."""
    for path in (shipped / "metrics.json", shipped / "refined" / "metrics.json"):
        if path.is_file():
            refined = json.loads(path.read_text()).get("refinement") or {}
            if refined.get("shipped_model_exploring") is not None:
                return refined["shipped_model_exploring"]
            if refined.get("start") is not None and "shipped_model_exploring" not in refined:
                return refined["start"]  # a refinement from the shipped model itself: its first round
    return None


def _refined(metrics: dict) -> str:
    refined = metrics.get("refinement")
    if not refined:
        return ""
    return (f", then refined: {refined['rounds']} rounds, {refined['labels']} xTB labels, "
            f"{refined['cpu_minutes']:.0f} CPU-min")


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
            f"{m['training']['wall_time_s'] / 60:.0f} min{_refined(m)} | {'yes' if m['shippable'] else 'no'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        print(table([Path(p) for p in sys.argv[2:]]))
        sys.exit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--refinement", type=Path, help="the refinement's reports (report.json)")
    parser.add_argument("--previous", type=Path, help="the shipped model it would replace")
    parser.add_argument("--start", type=Path, help="the model the refinement started from (default: --previous)")
    args = parser.parse_args()
    if args.refinement is None:
        main(args.model)
    else:
        sys.exit(refinement(args.model, args.refinement, args.previous, args.start))
