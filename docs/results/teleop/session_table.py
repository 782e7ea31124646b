"""The operator-session table of docs/results/teleop.md from session.json (operator_session.py).

    python3 docs/results/teleop/session_table.py [docs/results/teleop/session.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(record: dict) -> str:
    period = record["control_period"]
    rows = ["| episode (seed) | outcome | policy steps | recovery steps | correction steps | interventions: "
            "start step, recovery + correction steps, wall seconds |", "|---|---|---|---|---|---|"]
    total = {"policy": 0, "recovery": 0, "correction": 0}
    seconds = []
    for i, ep in enumerate(record["episodes"]):
        for k in total:
            total[k] += ep["steps"][k]
        parts = []
        for seg in ep["interventions"]:
            seconds.append(seg["seconds"])
            parts.append(f"step {seg['start']}: {seg['recovery']} + {seg['correction']}, {seg['seconds']:.1f} s")
        rows.append(f"| {i + 1} ({ep['seed']}) | {ep['outcome']} | {ep['steps']['policy']} | {ep['steps']['recovery']} | "
                    f"{ep['steps']['correction']} | {'; '.join(parts) or '-'} |")
    rows.append(f"| all | {sum(e['success'] for e in record['episodes'])}/{len(record['episodes'])} successes | "
                f"{total['policy']} | {total['recovery']} | {total['correction']} | {len(seconds)} interventions, "
                f"median {sorted(seconds)[len(seconds) // 2]:.1f} s, {sum(seconds):.1f} s in all |")
    steps = total["recovery"] + total["correction"]
    rows.append("")
    rows.append(f"Operator steps {steps} = {steps * period:.1f} s of task time (control period {period:g} s); "
                f"load average {' '.join(record['loadavg'])}; {record['date']}.")
    return "\n".join(rows)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("session.json"))
    print(table(json.loads(path.read_text())))
