#!/bin/sh
# sluice: render the mounted flink-conf/config.yaml template for this container
# (sluice.container_conf), then hand over to the official Flink entrypoint
# (jobmanager | taskmanager | standalone-job | any command).
# Without SLUICE_FLINK_CONF_TEMPLATE (the Kubernetes operator writes its own
# configuration) nothing is rendered.
set -e
if [ -n "${SLUICE_FLINK_CONF_TEMPLATE:-}" ]; then
    python3 -m sluice.container_conf \
        --template "$SLUICE_FLINK_CONF_TEMPLATE" \
        --dist "$FLINK_HOME/conf/config.dist.yaml" \
        --out "$FLINK_HOME/conf/config.yaml"
fi
exec /docker-entrypoint.sh "$@"
