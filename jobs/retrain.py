"""Retrain models on drift: RetrainTriggers in, new registry versions and ModelUpdates out.

    retrain-triggers ──(read_committed)──▶ this process ──▶ models/<name>/<version>/
                                              │   reads features (read_committed)
                                              └──(transaction: ModelUpdate + offset)──▶ model-updates

A plain process, not a Flink job: each trigger is a bounded batch job (read the recent
FeatureVectors, fit scikit-learn's IsolationForest, compare on a holdout, write files),
single-threaded by nature and rare (at most one per model per drift cool-down). A Flink job
would add a cluster slot, checkpointing of nothing and a Python worker round trip, and no
guarantee this process lacks: progress and announcement commit in one Kafka transaction,
and a published version is found again by its trigger id (sluice/retrain.py,
docs/drift.md).

    python jobs/retrain.py [--config sluice.yaml] [--once]

``--once`` handles the triggers there are and exits (0 also when some were refused); without
it the process waits for triggers until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sluice.config import ConfigError, load_config  # noqa: E402
from sluice.retrain import PUBLISHED, RECOVERED, REFUSED, Decision, RetrainError, RetrainService  # noqa: E402

console = Console(stderr=True)
_STYLE = {PUBLISHED: "green", RECOVERED: "green", REFUSED: "yellow"}


def _event(d: Decision) -> None:
    style = _STYLE.get(d.action, "dim")
    version = f" → v{d.version}" if d.version is not None else ""
    console.print(f"[{style}]{d.action}[/{style}] {escape(d.trigger_id)} "
                  f"({escape(d.model_name)}{version}, {d.rows} rows): {escape(d.reason)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", type=Path, default=None, help="sluice YAML")
    parser.add_argument("--once", action="store_true",
                        help="handle the triggers on the topic, then exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    svc = RetrainService(cfg, on_event=_event)
    svc.install_signal_handlers()
    console.print(f"retrain: {cfg.topics.retrain_triggers} → {cfg.topics.model_updates} "
                  f"(group {cfg.retrain.consumer_group}, registry {cfg.path(cfg.models.dir)})")
    try:
        summary = svc.run(once=args.once)
    except RetrainError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 1
    t = Table(title=f"retrain: {summary.triggers} trigger(s), {summary.elapsed_s:.1f} s, "
                    f"stopped by {summary.stopped_by}")
    for col in ("trigger", "model", "action", "version", "rows", "guard", "reason"):
        t.add_column(col)
    for d in summary.decisions:
        g = d.guard
        guard = (f"{g['metric']}: {g['candidate']:.4f} vs {g['active']:.4f}" if g else "")
        t.add_row(escape(d.trigger_id), escape(d.model_name), d.action,
                  "" if d.version is None else str(d.version), str(d.rows), guard, escape(d.reason))
    console.print(t)
    print(json.dumps({"triggers": summary.triggers, "stopped_by": summary.stopped_by,
                      "decisions": [{"trigger_id": d.trigger_id, "action": d.action,
                                     "version": d.version, "reason": d.reason}
                                    for d in summary.decisions]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
