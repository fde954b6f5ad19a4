"""Netlink framing shared by every kernel family the exporter reads: bytes in, records out, no I/O.

What every generic netlink conversation with the openvswitch module is made of, from
``include/uapi/linux/netlink.h``, ``genetlink.h`` and ``openvswitch.h``:

* a datagram holds messages, each a ``struct nlmsghdr`` and a payload (``iter_messages``);
  a request is answered by messages of the family, then ``NLMSG_DONE`` (a dump) or
  ``NLMSG_ERROR`` (``error_code``);
* an OVS family's payload is ``struct genlmsghdr`` + ``struct ovs_header`` (the datapath's
  ifindex), then attributes (``iter_attrs``), each a ``struct nlattr`` and its value,
  4-byte aligned, possibly nested.

Families declare their formats as data, as the kernel's YNL specs do
(``Documentation/netlink/specs/ovs_*.yaml``): an ``AttributeSet`` maps each attribute
number of a uapi enum to its name and type, a ``StructLayout`` lists a C struct's members.
``AttributeSet.decode`` is the one generic decoder for them: it checks every length
against the declared type and names what was wrong and where in a ``DecodeError``. The
vport decoder, which runs for every vport of every scrape, reads the same tables'
numbers with hand-unrolled code instead (``exporter.kernel.families.vport``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# --- netlink.h -------------------------------------------------------------

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

# struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
NLMSGHDR = struct.Struct("=IHHII")
# struct nlattr { u16 nla_len; u16 nla_type; }
NLA_HDR = struct.Struct("=HH")
# struct genlmsghdr { u8 cmd; u8 version; u16 reserved; }
GENLMSGHDR = struct.Struct("=BBH")
# struct genlmsghdr + struct ovs_header { int dp_ifindex; } (openvswitch.h): every OVS family's header.
GENL_OVS_HDR = struct.Struct("=BBHi")
OVS_HEADERS_LEN = NLMSGHDR.size + GENL_OVS_HDR.size  # 24: where an OVS message's attributes start

U16 = struct.Struct("=H")
U32 = struct.Struct("=I")
S32 = struct.Struct("=i")
U64 = struct.Struct("=Q")

# enum ovs_datapath_cmd, ovs_vport_cmd, ovs_flow_cmd: these families number their commands the
# same way (ovs_ct_limit too, with SET 1 and DEL 2 and GET 3). ovs_meter does not: its GET is 4
# and 3 is its DEL, so its codec names its own (exporter.kernel.families.meter).
OVS_CMD_NEW = 1
OVS_CMD_DEL = 2
OVS_CMD_GET = 3  # the only command this exporter sends to those families
OVS_CMD_SET = 4

# tuple.__new__ builds a NamedTuple from a tuple of the right length without the Python-level
# constructor's call: used where the hot path already knows the length.
new_tuple = tuple.__new__


class DecodeError(ValueError):
    """The kernel's reply did not have the layout the uapi headers promise."""


class NetlinkError(OSError):
    """The kernel answered a request with an error (NLMSG_ERROR or a failed NLMSG_DONE)."""


class Message(NamedTuple):
    """One netlink message inside a datagram: where it is and what its header says."""

    type: int
    flags: int
    seq: int
    start: int  # offset of the nlmsghdr
    end: int  # offset just past the message (not padded)


def iter_messages(buf: bytes, pos: int = 0) -> Iterator[Message]:
    """Split one datagram into netlink messages (from offset ``pos``), checking every length."""
    total = len(buf)
    while pos < total:
        if total - pos < NLMSGHDR.size:
            raise DecodeError(f"truncated netlink header at offset {pos}: {total - pos} bytes left")
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, pos)
        if length < NLMSGHDR.size or pos + length > total:
            raise DecodeError(
                f"netlink message at offset {pos} claims {length} bytes, {total - pos} available"
            )
        yield new_tuple(Message, (mtype, flags, seq, pos, pos + length))
        pos += (length + 3) & ~3


def error_code(buf: bytes, message: Message) -> int:
    """The positive errno carried by an NLMSG_ERROR or NLMSG_DONE message (0: none)."""
    start = message.start + NLMSGHDR.size
    if message.end - start < 4:
        if message.type == NLMSG_DONE:
            return 0  # some kernels send DONE without the int
        raise DecodeError(f"netlink error message at offset {message.start} has no error code")
    code = int(S32.unpack_from(buf, start)[0])
    return -code if code < 0 else code


def attr_error(what: str, attr: int, want: int, got: int, offset: int) -> DecodeError:
    return DecodeError(f"{what} attribute {attr} at offset {offset}: want {want} bytes, got {got}")


def c_string(buf: bytes, start: int, end: int) -> str:
    """A NUL-terminated string attribute (the NUL is optional; bad UTF-8 is kept, escaped)."""
    nul = buf.find(b"\0", start, end)
    return buf[start : end if nul < 0 else nul].decode("utf-8", "backslashreplace")


def iter_attrs(buf: bytes, pos: int, end: int, what: str) -> Iterator[tuple[int, int, int]]:
    """Yield (type, payload start, payload end) of each attribute in buf[pos:end]."""
    while pos + 4 <= end:
        alen, atype = NLA_HDR.unpack_from(buf, pos)
        if alen < 4 or pos + alen > end:
            raise DecodeError(f"{what} attribute at offset {pos} claims {alen} bytes, {end - pos} available")
        yield atype & NLA_TYPE_MASK, pos + 4, pos + alen
        pos += (alen + 3) & ~3
    if pos < end:
        raise DecodeError(f"{what}: {end - pos} trailing bytes at offset {pos}")


def u32_attr(buf: bytes, start: int, size: int, what: str, atype: int) -> int:
    if size != 4:
        raise attr_error(what, atype, 4, size, start - 4)
    return int(U32.unpack_from(buf, start)[0])


def u32_array(buf: bytes, start: int, size: int, what: str, atype: int) -> tuple[int, ...]:
    if size % 4:
        raise DecodeError(f"{what} attribute {atype} at offset {start - 4}: {size} bytes, not a u32 array")
    return struct.unpack_from(f"={size // 4}I", buf, start)


def encode_attr(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    return NLA_HDR.pack(4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


# --- the OVS families' common header ---------------------------------------------------------


def ovs_start(buf: bytes, message: Message, what: str) -> tuple[int, int]:
    """The dp_ifindex of an OVS family message and the offset where its attributes start."""
    if message.end - message.start < OVS_HEADERS_LEN:
        raise DecodeError(
            f"{what} message at offset {message.start} is {message.end - message.start} bytes,"
            f" shorter than its {OVS_HEADERS_LEN}-byte headers"
        )
    dp_ifindex = GENL_OVS_HDR.unpack_from(buf, message.start + NLMSGHDR.size)[3]
    return dp_ifindex, message.start + OVS_HEADERS_LEN


def genl_command(buf: bytes, message: Message) -> tuple[int, int]:
    """The command and dp_ifindex of an OVS family message (a notification's whole meaning here)."""
    if message.end - message.start < OVS_HEADERS_LEN:
        raise DecodeError(
            f"OVS message at offset {message.start} is {message.end - message.start} bytes,"
            f" shorter than its {OVS_HEADERS_LEN}-byte headers"
        )
    cmd, _version, _reserved, dp_ifindex = GENL_OVS_HDR.unpack_from(buf, message.start + NLMSGHDR.size)
    return cmd, dp_ifindex


def encode_ovs_get(
    family_id: int,
    version: int,
    seq: int,
    dp_ifindex: int = 0,
    attrs: bytes = b"",
    dump: bool = True,
    command: int = OVS_CMD_GET,
) -> bytes:
    """An ``OVS_*_CMD_GET`` request (a dump unless ``dump`` is False): all this exporter sends.

    ``attrs`` are the request's attributes, already encoded (``encode_attr``). ``command``
    is the family's read command: ``OVS_CMD_GET`` but for ``ovs_meter``, whose codec passes
    its own GET or FEATURES number. No flag beyond NLM_F_REQUEST and NLM_F_DUMP is ever set:
    no ACK, no ECHO, nothing that creates or replaces.
    """
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    length = OVS_HEADERS_LEN + len(attrs)
    header = NLMSGHDR.pack(length, family_id, flags, seq, 0)
    return header + GENL_OVS_HDR.pack(command, version, 0, dp_ifindex) + attrs


# --- formats as data -------------------------------------------------------------------------

#: The scalar attribute types, as YNL names them, and their sizes (None: any size).
SCALARS: dict[str, struct.Struct | None] = {
    "u8": struct.Struct("=B"),
    "u16": U16,
    "u32": U32,
    "s32": S32,
    "u64": U64,
    "string": None,  # NUL-terminated
    "binary": None,  # raw bytes
    "flag": None,  # present or not: the value is True
    "u32-array": None,  # a binary attribute holding u32s back to back
    "pad": None,  # alignment padding: skipped
}


@dataclass(frozen=True)
class StructLayout:
    """A C struct sent as one attribute, its members in order with their scalar types.

    Decodes to a tuple of the members' values (padding members included: name them ``pad``).
    """

    name: str
    members: tuple[tuple[str, str], ...]
    unpack: struct.Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        codes = {"u8": "B", "u16": "H", "u32": "I", "s32": "i", "u64": "Q"}
        fmt = "=" + "".join(codes[kind] for _name, kind in self.members)
        object.__setattr__(self, "unpack", struct.Struct(fmt))

    @property
    def size(self) -> int:
        return self.unpack.size


@dataclass(frozen=True)
class StructArray:
    """An attribute holding structs back to back (e.g. ``OVS_CT_LIMIT_ATTR_ZONE_LIMIT``)."""

    layout: StructLayout


@dataclass(frozen=True)
class NestArray:
    """A nest whose every attribute is a nest of ``attrs`` (YNL's indexed-array, e.g. meter bands)."""

    attrs: AttributeSet


class AttributeSet:
    """The attributes of one uapi enum: number -> (name, type), as a YNL spec's attribute-set.

    Names are the enum's without its prefix (``STATS`` for ``OVS_DP_ATTR_STATS``), so that
    an error names the attribute as the header does. A type is a scalar (``SCALARS``), a
    ``StructLayout``, a ``StructArray``, a ``NestArray``, or another ``AttributeSet`` (a nest).
    """

    def __init__(self, name: str, attrs: Mapping[int, tuple[str, AttrType]]) -> None:
        self.name = name
        self.attrs = dict(attrs)
        self._numbers = {attr_name: number for number, (attr_name, _kind) in self.attrs.items()}
        for attr_name, kind in self.attrs.values():
            if isinstance(kind, str) and kind not in SCALARS:
                raise ValueError(f"{name} {attr_name}: unknown attribute type {kind!r}")

    def __getitem__(self, attr_name: str) -> int:
        """The attribute's number: ``VPORT["STATS"]`` is ``OVS_VPORT_ATTR_STATS``."""
        return self._numbers[attr_name]

    def decode(self, buf: bytes, pos: int, end: int) -> dict[str, Any]:
        """The attributes in buf[pos:end] by name; unknown ones are skipped, a repeated one's last wins."""
        values: dict[str, Any] = {}
        for atype, start, aend in iter_attrs(buf, pos, end, self.name):
            known = self.attrs.get(atype)
            if known is None:
                continue  # newer kernels add attributes: not an error
            attr_name, kind = known
            value = _decode_value(buf, start, aend, kind, f"{self.name} {attr_name}", atype)
            if value is not _PAD:
                values[attr_name] = value
        return values


#: What an attribute's type may be (see AttributeSet).
AttrType = str | StructLayout | StructArray | NestArray | AttributeSet

_PAD = object()


def _decode_value(buf: bytes, start: int, end: int, kind: AttrType, what: str, atype: int) -> Any:
    size = end - start
    if isinstance(kind, AttributeSet):
        return kind.decode(buf, start, end)
    if isinstance(kind, StructLayout):
        if size != kind.size:
            raise attr_error(what, atype, kind.size, size, start - 4)
        return kind.unpack.unpack_from(buf, start)
    if isinstance(kind, StructArray):
        width = kind.layout.size
        if size % width:
            raise DecodeError(
                f"{what} attribute {atype} at offset {start - 4}: {size} bytes, not whole {width}-byte"
                f" {kind.layout.name} structs"
            )
        return list(kind.layout.unpack.iter_unpack(memoryview(buf)[start:end]))
    if isinstance(kind, NestArray):
        return [kind.attrs.decode(buf, s, e) for _index, s, e in iter_attrs(buf, start, end, what)]
    if kind == "string":
        return c_string(buf, start, end)
    if kind == "binary":
        return buf[start:end]
    if kind == "flag":
        return True
    if kind == "pad":
        return _PAD
    if kind == "u32-array":
        return u32_array(buf, start, size, what, atype)
    scalar = SCALARS[kind]
    assert scalar is not None
    if size != scalar.size:
        raise attr_error(what, atype, scalar.size, size, start - 4)
    return scalar.unpack_from(buf, start)[0]
