"""Local stack for development and tests: Kafka (KRaft, single node), Apicurio Registry
(Confluent-compatible API) and optionally a Flink standalone cluster, all on 127.0.0.1.

    from sluice.stack import up, down, status, StackPorts
    st = up(Path(".run"), StackPorts(), flink=True, progress=print)
    st.bootstrap_servers, st.registry_url, st.flink_rest_url
    down(Path(".run"))
"""

from .manager import (
    DEFAULT_DEPS_DIR,
    DEFAULT_RUN_DIR,
    DEFAULT_TIMEOUTS,
    down,
    status,
    up,
)
from .models import ComponentStatus, StackError, StackPorts, StackStatus
from .procs import port_in_use, port_owner, wait_for_port

__all__ = [
    "DEFAULT_DEPS_DIR",
    "DEFAULT_RUN_DIR",
    "DEFAULT_TIMEOUTS",
    "ComponentStatus",
    "StackError",
    "StackPorts",
    "StackStatus",
    "down",
    "port_in_use",
    "port_owner",
    "status",
    "up",
    "wait_for_port",
]
