"""Everything that reads the kernel: generic netlink sockets, the OVS families' codecs, the kernel sources.

* ``netlink``: framing and attribute walking, the formats-as-data decoder (no I/O);
* ``families/``: one codec per generic netlink family (``nlctrl``, ``datapath``,
  ``vport``): its layouts from ``include/uapi/linux/openvswitch.h``, bytes to records;
* ``genl``: the one socket class every reader uses; ``netns``: other network namespaces;
* the sources: ``dumps`` (the datapath and vport dumps of every scrape, here and in named
  namespaces) with its families in ``dump_metrics``; ``events`` (port notifications,
  counted in a thread of its own).

Imports only the exporter's base modules (``exposition``, ``records``, ``deadline``),
never ``ovsdb``, ``http``, ``collector`` or ``config``. See docs/architecture.md.
"""
