"""The conntrack zone limit source against a fake kernel behind the real GenlSocket: one GET,
the chunked read when the zones do not fit one reply, what a scrape serves, and failures."""

from __future__ import annotations

import errno
import re

import pytest

from exporter.exposition import Format
from exporter.kernel.ct_zones import ConntrackZoneSource, read_zone_limits
from exporter.kernel.families.ct_limit import OVS_CT_LIMIT_FAMILY, ZONES_PER_REQUEST
from exporter.kernel.netlink import NLM_F_REQUEST
from tests.fake_genl import CT_LIMIT_CMD_GET, CT_LIMIT_REPLY_ZONES, FakeGenlSocket, FakeKernel
from tests.ovs_messages import nlmsg_error


def sample(body: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    braces = f"{{{re.escape(want)}}}" if want else ""
    match = re.search(rf"^{re.escape(name)}{braces} (\S+)$", body, re.M)
    return None if match is None else float(match[1])


def source_over(kernel: FakeKernel, **kwargs: object) -> ConntrackZoneSource:
    source = ConntrackZoneSource(lambda netns: FakeGenlSocket(kernel), interval=60, **kwargs)  # type: ignore[arg-type]
    source.poller.poll()
    return source


def test_one_get_serves_the_default_and_every_limited_zone() -> None:
    kernel = FakeKernel(default_limit=0, zone_limits={5: (100, 37), 2: (10, 10), 9: (0, 0)})
    body = "".join(source_over(kernel).report(Format.TEXT, []).chunks)
    assert sample(body, "ovs_conntrack_default_zone_limit") == 0
    assert sample(body, "ovs_conntrack_zone_limit", zone="5") == 100
    assert sample(body, "ovs_conntrack_zone_connections", zone="5") == 37
    assert sample(body, "ovs_conntrack_zone_connections", zone="2") == 10
    # A zone set to 0 has a limit of its own (unlimited): the kernel lists it, and so does this.
    assert sample(body, "ovs_conntrack_zone_limit", zone="9") == 0
    assert body.index('zone="2"') < body.index('zone="5"') < body.index('zone="9"'), "by zone id"
    assert kernel.requests == [(OVS_CT_LIMIT_FAMILY, CT_LIMIT_CMD_GET, NLM_F_REQUEST, 0)]


def test_without_limited_zones_only_the_default_is_served() -> None:
    body = "".join(source_over(FakeKernel(default_limit=2000)).report(Format.TEXT, []).chunks)
    assert sample(body, "ovs_conntrack_default_zone_limit") == 2000
    assert "ovs_conntrack_zone_limit" not in body and "ovs_conntrack_zone_connections" not in body


def test_more_zones_than_one_reply_holds_are_read_in_chunks() -> None:
    """Past ~654 limited zones the kernel answers EMSGSIZE: every zone id is asked for,
    ZONES_PER_REQUEST at a time, each reply well inside a page."""
    zones = {zone: (50 + zone % 7, zone % 50) for zone in range(1, CT_LIMIT_REPLY_ZONES + 300)}
    zones[65535] = (3, 1)
    kernel = FakeKernel(default_limit=0, zone_limits=zones)
    limits = read_zone_limits(FakeGenlSocket(kernel), None, None)
    assert limits.chunked
    assert {z.zone: (z.limit, z.connections) for z in limits.zones} == zones
    chunks = -(-65537 // ZONES_PER_REQUEST)
    assert chunks == 219 and limits.requests == len(kernel.requests) == 1 + chunks
    assert all(
        request == (OVS_CT_LIMIT_FAMILY, CT_LIMIT_CMD_GET, NLM_F_REQUEST, 0) for request in kernel.requests
    )


def test_chunked_read_keeps_zones_whose_limit_differs_from_the_default() -> None:
    """Asked by id, a zone without a limit of its own reports the default: indistinguishable from
    one whose own limit equals it (documented), so only those that differ are served."""
    zones = {zone: (500, 1) for zone in range(1, 700)}
    zones[7] = (1000, 0)  # the default limit: not told apart
    kernel = FakeKernel(default_limit=1000, zone_limits=zones)
    limits = read_zone_limits(FakeGenlSocket(kernel), None, None)
    assert limits.chunked and limits.default_limit == 1000
    assert len(limits.zones) == 698 and 7 not in {z.zone for z in limits.zones}


def test_namespaces_carry_their_label_and_health() -> None:
    kernels = {
        None: FakeKernel(zone_limits={1: (10, 2)}),
        "blue": FakeKernel(default_limit=5, zone_limits={1: (9, 9)}),
    }
    source = ConntrackZoneSource(
        lambda netns: FakeGenlSocket(kernels[netns]), interval=60, namespaces=lambda: ["blue"]
    )
    source.poller.poll()
    report = source.report(Format.TEXT, [])
    body = "".join(report.chunks)
    assert sample(body, "ovs_conntrack_zone_connections", zone="1") == 2
    assert sample(body, "ovs_conntrack_zone_connections", netns="blue", zone="1") == 9
    assert sample(body, "ovs_conntrack_default_zone_limit", netns="blue") == 5
    assert [(h.collector, h.netns, h.success) for h in report.health] == [
        ("conntrack_zones", None, True),
        ("conntrack_zones", "blue", True),
    ]


def test_a_module_without_conncount_is_health_0_and_nothing_else(caplog: pytest.LogCaptureFixture) -> None:
    """``ovs_ct_limit`` exists only with CONFIG_NETFILTER_CONNCOUNT."""
    kernel = FakeKernel(zone_limits={1: (10, 2)})
    kernel.families.discard(OVS_CT_LIMIT_FAMILY)
    source = source_over(kernel)
    source.poller.poll()
    report = source.report(Format.TEXT, [])
    assert report.chunks == [] and [h.success for h in report.health] == [False]
    assert len([r for r in caplog.records if "ovs_ct_limit generic netlink family" in r.getMessage()]) == 1


def test_an_error_reply_is_health_0_with_its_errno(caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel(zone_limits={1: (10, 2)})
    kernel.override = lambda family, cmd, dp, attrs, seq: [nlmsg_error(seq, errno.EPERM)]
    report = source_over(kernel).report(Format.TEXT, [])
    assert report.chunks == [] and [h.success for h in report.health] == [False]
    assert any("errno 1 EPERM" in r.getMessage() for r in caplog.records)


def test_openmetrics_headers() -> None:
    body = "".join(source_over(FakeKernel(zone_limits={1: (10, 2)})).report(Format.OPENMETRICS, []).chunks)
    assert "# TYPE ovs_conntrack_zone_connections gauge\n" in body
    assert "# TYPE ovs_conntrack_default_zone_limit gauge\n" in body
