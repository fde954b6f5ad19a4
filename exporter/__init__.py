"""ovs-vport-exporter: Prometheus metrics for every vport of the Open vSwitch kernel datapath.

The data path, socket to HTTP response: ``source`` (kernel sockets and dumps) ->
``wire`` (bytes -> records) -> ``collector`` (filters, health) -> ``exposition``
(records -> text) -> ``web`` (HTTP). ``config`` and ``cli`` set it up.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ovs-vport-exporter")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
