"""``python -m exporter``: the same as the ``ovs-vport-exporter`` command."""

import sys

from exporter.cli import main

sys.exit(main())
