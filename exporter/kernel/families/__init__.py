"""One module per generic netlink family: its numbers and layouts as data, and its decoder.

Pure: bytes in, records out, no I/O. Each module declares its attribute sets and
structs (``exporter.kernel.netlink.AttributeSet``, ``StructLayout``) with the numbers of
``include/uapi/linux/openvswitch.h`` (or ``genetlink.h`` for ``nlctrl``), as the kernel's
YNL specs (``Documentation/netlink/specs/ovs_*.yaml``) write them.
"""
