"""ovs-vport-exporter: Prometheus metrics for every vport of the Open vSwitch kernel datapath.

The data path, socket to HTTP response: ``kernel.genl`` (the netlink socket) ->
``kernel.dumps`` (the dumps of a scrape) -> ``kernel.families`` (bytes -> records) ->
``collector`` (where the sources meet: filters, health) -> ``kernel.dump_metrics`` and
``exposition`` (records -> text) -> ``http`` (the server). Background sources
(``kernel.events``, ``ovsdb``) hand the collector snapshots. ``config`` and ``cli`` set
it up. docs/architecture.md draws it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ovs-vport-exporter")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
