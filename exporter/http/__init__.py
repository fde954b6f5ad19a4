"""The HTTP side: the server and its bounds, the exporter-toolkit web config, shared scrapes.

* ``server``: the metrics path, the landing page, content negotiation, gzip, and the
  bounds that keep hostile clients from hurting it (``MetricsServer``, ``HttpMetrics``);
* ``coalesce``: scrapes arriving together share one kernel read and one immutable body;
* ``webconfig``: ``--web.config.file``, TLS and basic auth as node_exporter reads them.

Imports the exporter's base modules and ``exporter.config`` (the web config file is
checked with its YAML helpers); never a source. It reaches the collector only through
the ``coalesce.Scraper`` protocol. See docs/architecture.md.
"""
