"""The OVSDB source: a read-only copy of the Open_vSwitch database, and who is on each kernel vport.

* ``reader``: ``OvsdbReader``, Open vSwitch's own ``ovs.db.idl`` in a thread of its own,
  turning the replica into immutable snapshots; it never writes;
* ``identity``: where OVSDB meets the kernel: Interface -> (datapath, port), the
  ``ovs_interface_info`` and ``ovs_system_info`` series, and ``IdentitySource``, the
  collector's view of it.

Imports only the exporter's base modules (``exposition``, ``records``), never ``kernel``,
``http``, ``collector`` or ``config``. See docs/architecture.md.
"""
