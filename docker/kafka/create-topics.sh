#!/bin/sh
# sluice: create the topics of sluice.yaml (topics.*) on the compose cluster, replicated.
# Run once by the kafka-init service; existing topics are left as they are.
# The topic list is checked against sluice.yaml by tests/unit/test_deploy_static.py.
set -eu
KT=/opt/kafka/bin/kafka-topics.sh
create() {  # create NAME [compact]
    extra=""
    if [ "${2:-}" = compact ]; then extra="--config cleanup.policy=compact"; fi
    # shellcheck disable=SC2086
    $KT --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$1" \
        --partitions "$PARTITIONS" --replication-factor "$REPLICATION" \
        --config min.insync.replicas=2 $extra
}
create telemetry
create sensor-frames
create maintenance-events
create telemetry.enriched
create scores
create alerts
create dlq
create quality
create dlq.replays compact
create devices compact
create telemetry.joined
create features
create late
create drift
create retrain-triggers
create model-updates compact
create action-dlq
create model-scores
