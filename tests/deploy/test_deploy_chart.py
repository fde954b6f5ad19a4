"""The Helm chart, rendered by the real helm: lint, Kubernetes schemas, security, single sources."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ovs-vport-exporter"
RULES = REPO / "alerts" / "ovs-vport-exporter.rules.yml"
DASHBOARDS = REPO / "dashboards"
KUBERNETES_VERSIONS = ("1.29.0", "1.31.0", "1.35.0")
MONITORING_GROUP = "monitoring.coreos.com/v1"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?")
CONFIG_MAP_LIMIT = 1024 * 1024

# render(values) -> Rendered (conftest.py): .documents, .namespace, .one(kind), .of_kind(kind), .kinds()
Rendered = Any
Render = Callable[[dict[str, Any]], Rendered]

WEB_TLS: dict[str, Any] = {
    "enabled": True,
    "scheme": "HTTPS",
    "tlsSecret": "ovs-vport-exporter-tls",
    "config": {
        "tls_server_config": {
            "cert_file": "/etc/ovs-vport-exporter/tls/tls.crt",
            "key_file": "/etc/ovs-vport-exporter/tls/tls.key",
        },
        "basic_auth_users": {"prometheus": "$2y$10$abcdefghijklmnopqrstuv"},
    },
}

# Default values, then each optional feature on, then all of them together.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "service-monitor": {
        "serviceMonitor": {
            "enabled": True,
            "interval": "30s",
            "scrapeTimeout": "10s",
            "honorLabels": True,
            "additionalLabels": {"release": "kube-prometheus-stack"},
            "metricRelabelings": [{"action": "drop", "regex": "python_gc_.*", "sourceLabels": ["__name__"]}],
        }
    },
    "pod-monitor": {
        "podMonitor": {"enabled": True, "interval": "1m", "namespace": "prometheus"},
        "service": {"enabled": False},
    },
    "prometheus-rule": {"prometheusRule": {"enabled": True, "additionalLabels": {"role": "alert-rules"}}},
    "dashboards-custom": {
        "dashboards": {
            "namespace": "grafana",
            "label": "grafana.example.com/dashboard",
            "labelValue": "ovs",
            "annotations": {"grafana_folder": "Network"},
        }
    },
    "no-dashboards": {"dashboards": {"enabled": False}},
    "ovsdb": {
        "ovsdb": {"enabled": True, "groupId": 997, "externalIds": ["iface-id", "vm-uuid"]},
        "podSecurityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "runAsGroup": 65534,
            "supplementalGroups": [4000],
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    },
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        }
    },
    "web-config": {
        "webConfig": WEB_TLS,
        "serviceMonitor": {
            "enabled": True,
            "tlsConfig": {"ca": {"secret": {"name": "ovs-vport-exporter-tls", "key": "ca.crt"}}},
            "basicAuth": {
                "username": {"name": "scrape-auth", "key": "username"},
                "password": {"name": "scrape-auth", "key": "password"},
            },
        },
    },
    "web-config-existing-secret": {"webConfig": {"enabled": True, "existingSecret": "my-web-config"}},
    "everything": {
        "image": {
            "repository": "registry.example.com/ovs-vport-exporter",
            "tag": "1.2.3",
            "digest": "sha256:" + "0" * 64,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "fullnameOverride": "ovs-exporter",
        "port": 19310,
        "telemetryPath": "/ovs-metrics",
        "config": {
            "log": {"level": "debug", "format": "json"},
            "netlink": {"timeout_seconds": 2.5},
            "filters": {"port": {"exclude": "tap.*"}, "vport_type": {"include": "netdev|internal"}},
            "collector": {
                "vport_metrics": ["packets", "bytes", "info"],
                "meters": False,
                "meters_interval_seconds": 30,
                "conntrack_zones": True,
                "conntrack_zones_interval_seconds": 60,
                "flows": True,
                "flows_interval_seconds": 10,
                "flows_max_flows": 100000,
                "flows_max_seconds": 30,
            },
        },
        "extraArgs": ["--netlink.timeout=3"],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "serviceAccount": {"create": True, "name": "ovs-exporter-sa", "annotations": {"a": "b"}},
        "podAnnotations": {"example.com/team": "network"},
        "podLabels": {"team": "network"},
        "commonLabels": {"cost-center": "net"},
        "nodeSelector": {"ovs.example.com/enabled": "true"},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
                            ]
                        }
                    ]
                }
            }
        },
        "tolerations": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}
        ],
        "priorityClassName": "system-node-critical",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
        "service": {"annotations": {"prometheus.io/scrape": "true"}, "labels": {"extra": "yes"}},
        "serviceMonitor": {"enabled": True, "namespace": "prometheus", "interval": "15s"},
        "prometheusRule": {"enabled": True, "namespace": "prometheus"},
        "dashboards": {"annotations": {"grafana_folder": "OVS"}},
        "networkPolicy": {"enabled": True},
        "webConfig": WEB_TLS,
    },
}

# Values the chart must refuse, with the part of helm's message that says what is wrong.
BAD_VALUES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "numeric image tag": ({"image": {"tag": 5}}, ["/image/tag", "want string"]),
    "unknown top-level key": ({"bogus": 1}, ["'bogus' not allowed"]),
    "misspelt nested key": (
        {"serviceMonitor": {"enable": True}},
        ["/serviceMonitor", "'enable' not allowed"],
    ),
    "negative port": ({"port": -1}, ["/port", "minimum"]),
    "port too large": ({"port": 70000}, ["/port", "maximum"]),
    "port as text": ({"port": "9310"}, ["/port", "want integer"]),
    "unknown log level": ({"config": {"log": {"level": "verbose"}}}, ["/config/log/level", "'debug'"]),
    "misspelt filter rule": ({"config": {"filters": {"port": {"exlude": "x"}}}}, ["'exlude' not allowed"]),
    "unknown filter subject": (
        {"config": {"filters": {"bridge": {"include": "x"}}}},
        ["'bridge' not allowed"],
    ),
    "unknown vport metric group": (
        {"config": {"collector": {"vport_metrics": ["packets", "drops"]}}},
        ["/config/collector/vport_metrics/1"],
    ),
    "netlink timeout zero": (
        {"config": {"netlink": {"timeout_seconds": 0}}},
        ["/config/netlink/timeout_seconds"],
    ),
    "bad scrape interval": ({"serviceMonitor": {"interval": "30x"}}, ["/serviceMonitor/interval", "pattern"]),
    "telemetry path without slash": ({"telemetryPath": "metrics"}, ["/telemetryPath"]),
    "bad pull policy": ({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy"]),
    "lower-case scheme": ({"webConfig": {"scheme": "https"}}, ["/webConfig/scheme"]),
    "extra arg without dashes": ({"extraArgs": ["log.level=debug"]}, ["/extraArgs/0"]),
    "ovsdb socket with a slash": ({"ovsdb": {"socket": "x/db.sock"}}, ["/ovsdb/socket"]),
    "ovsdb group as text": ({"ovsdb": {"groupId": "openvswitch"}}, ["/ovsdb/groupId"]),
    "both monitors": (
        {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        ["serviceMonitor.enabled and podMonitor.enabled are both true"],
    ),
    "service monitor without service": (
        {"serviceMonitor": {"enabled": True}, "service": {"enabled": False}},
        ["serviceMonitor.enabled needs service.enabled"],
    ),
    "web config without content": ({"webConfig": {"enabled": True}}, ["webConfig.enabled needs"]),
}


def _daemonset_pod(rendered: Rendered) -> dict[str, Any]:
    pod: dict[str, Any] = rendered.one("DaemonSet")["spec"]["template"]["spec"]
    return pod


def _exporter(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["containers"]
    assert container["name"] == "exporter"
    return dict(container)


def _flag(container: dict[str, Any], name: str) -> str | None:
    for arg in container.get("args", []):
        if arg.startswith(f"{name}="):
            return str(arg.split("=", 1)[1])
    return None


# --- lint and render -----------------------------------------------------------------------------


def test_helm_lint_strict(helm_run: Callable[..., str], tmp_path: Path) -> None:
    helm_run("lint", "--strict", str(CHART))
    everything = tmp_path / "everything.yaml"
    everything.write_text(yaml.safe_dump(SCENARIOS["everything"]), encoding="utf-8")
    helm_run("lint", "--strict", str(CHART), "--values", str(everything))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_renders(render: Render, scenario: str) -> None:
    rendered = render(SCENARIOS[scenario])
    values = SCENARIOS[scenario]
    expected = {"DaemonSet", "ConfigMap"}
    for key, kind in (
        ("serviceMonitor", "ServiceMonitor"),
        ("podMonitor", "PodMonitor"),
        ("prometheusRule", "PrometheusRule"),
        ("networkPolicy", "NetworkPolicy"),
    ):
        if values.get(key, {}).get("enabled"):
            expected.add(kind)
    assert expected <= rendered.kinds()
    assert ("Service" in rendered.kinds()) == values.get("service", {}).get("enabled", True)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"):
        if kind not in expected:
            assert kind not in rendered.kinds()
    names = [(d["kind"], d["metadata"]["name"]) for d in rendered.documents]
    assert len(names) == len(set(names)), f"duplicate resources: {names}"
    for document in rendered.documents:
        metadata = document["metadata"]
        # The schemas do not check names and labels; the API server does (RFC 1123 labels).
        assert DNS_LABEL.fullmatch(metadata["name"]), f"{document['kind']} name {metadata['name']!r}"
        for key, value in metadata.get("labels", {}).items():
            assert LABEL_VALUE.fullmatch(value), f"{document['kind']} label {key}={value!r}"


def test_chart_app_version_is_the_package_version() -> None:
    """The default image tag is the chart's appVersion: the version the Containerfile builds."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kubernetes_schemas(
    render: Render, kubernetes_validate: ModuleType, scenario: str, version: str
) -> None:
    """Every core resource is valid for the Kubernetes version, rejecting unknown fields."""
    checked = 0
    for document in render(SCENARIOS[scenario]).documents:
        if document["apiVersion"] == MONITORING_GROUP:
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(
                f"{document['kind']}/{document['metadata']['name']} is invalid for Kubernetes "
                f"{version}: {err.message} at {err.json_path}",
                pytrace=False,
            )
        checked += 1
    assert checked >= 3


def _unknown_or_changed(sent: Any, kept: Any, path: str = "") -> list[str]:
    """Where the CRD model dropped (unknown field) or changed a value."""
    if isinstance(sent, dict) and isinstance(kept, dict):
        problems = [f"{path}.{key}: unknown field" for key in sent if key not in kept]
        for key in sent:
            if key in kept:
                problems += _unknown_or_changed(sent[key], kept[key], f"{path}.{key}")
        return problems
    if isinstance(sent, list) and isinstance(kept, list) and len(sent) == len(kept):
        return [
            p
            for i, (s, k) in enumerate(zip(sent, kept, strict=True))
            for p in _unknown_or_changed(s, k, f"{path}[{i}]")
        ]
    return [] if sent == kept else [f"{path}: {sent!r} became {kept!r}"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_prometheus_operator_schemas(render: Render, prometheus_operator: ModuleType, scenario: str) -> None:
    """ServiceMonitor, PodMonitor and PrometheusRule match the operator's CRD schemas.

    The models (cloudcoil-models-prometheus-operator) are generated from the CRDs'
    OpenAPI schemas: types, required fields, enums and patterns. They ignore unknown
    fields, so a round trip catches those: a field the model does not keep is unknown.
    """
    for document in render(SCENARIOS[scenario]).documents:
        if document["apiVersion"] != MONITORING_GROUP:
            continue
        model = getattr(prometheus_operator, document["kind"]).model_validate(document)
        kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        problems = _unknown_or_changed(document, kept)
        assert not problems, f"{document['kind']}: {problems}"


# --- security posture ----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", "everything"])
def test_daemonset_security_posture(render: Render, scenario: str) -> None:
    pod = _daemonset_pod(render(SCENARIOS[scenario]))
    assert pod["hostNetwork"] is True, "the kernel datapath is per netns: the exporter needs the host's"
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod.get("hostPID", False) is False
    assert pod.get("hostIPC", False) is False
    assert pod["automountServiceAccountToken"] is False
    assert not any("hostPath" in volume for volume in pod["volumes"])
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security.get("privileged", False) is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert "add" not in security["capabilities"]
        assert security.get("runAsUser", pod_security["runAsUser"]) != 0


def test_ovsdb_mounts_the_socket_read_only_with_a_group_and_no_privilege(render: Render) -> None:
    """--collector.ovsdb: the host's OVS run directory, read-only, and one more group; still no root."""
    pod = _daemonset_pod(render(SCENARIOS["ovsdb"]))
    (host_volume,) = [v for v in pod["volumes"] if "hostPath" in v]
    assert host_volume["hostPath"] == {"path": "/run/openvswitch", "type": "Directory"}
    container = _exporter(pod)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == host_volume["name"]]
    assert mount == {"name": host_volume["name"], "mountPath": "/run/openvswitch", "readOnly": True}
    assert pod["securityContext"]["supplementalGroups"] == [4000, 997]
    assert pod["securityContext"]["runAsUser"] == 65534 and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "--collector.ovsdb" in container["args"]
    assert _flag(container, "--collector.ovsdb.socket") == "unix:/run/openvswitch/db.sock"
    assert _flag(container, "--collector.ovsdb.external-ids") == "iface-id,vm-uuid"
    # Off by default: no mount, no flag, no extra group.
    pod = _daemonset_pod(render({}))
    assert not any("hostPath" in v for v in pod["volumes"])
    assert not any(a.startswith("--collector.ovsdb") for a in _exporter(pod)["args"])
    assert "supplementalGroups" not in pod["securityContext"]
    # No group given: the mount and flags, and the pod's own groups unchanged.
    pod = _daemonset_pod(
        render({"ovsdb": {"enabled": True, "runDir": "/var/run/openvswitch", "socket": "s"}})
    )
    assert [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v] == ["/var/run/openvswitch"]
    assert _flag(_exporter(pod), "--collector.ovsdb.socket") == "unix:/run/openvswitch/s"
    assert "supplementalGroups" not in pod["securityContext"]


def test_daemonset_runs_everywhere_by_default(render: Render) -> None:
    pod = _daemonset_pod(render({}))
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert "nodeSelector" not in pod
    assert "affinity" not in pod


def test_scheduling_from_values(render: Render) -> None:
    values = SCENARIOS["everything"]
    pod = _daemonset_pod(render(values))
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["affinity"] == values["affinity"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"


@pytest.mark.parametrize("scenario", ["default", "everything", "web-config-existing-secret"])
def test_ports_probes_and_args(render: Render, scenario: str) -> None:
    values = SCENARIOS[scenario]
    rendered = render(values)
    pod = _daemonset_pod(rendered)
    container = _exporter(pod)
    port = values.get("port", 9310)
    path = values.get("telemetryPath", "/metrics")
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert _flag(container, "--web.listen-address") == f":{port}"
    assert _flag(container, "--web.telemetry-path") == path
    web = values.get("webConfig", {})
    for probe in ("livenessProbe", "readinessProbe"):
        if web.get("config", {}).get("basic_auth_users"):
            # The kubelet cannot pass basic auth: the chart probes the port over TCP.
            assert container[probe]["tcpSocket"] == {"port": "metrics"}
        else:
            expected = {"path": "/", "port": "metrics", "scheme": web.get("scheme", "HTTP")}
            assert container[probe]["httpGet"] == expected
    assert set(container["resources"]) == {"requests", "limits"}
    if "Service" in rendered.kinds():
        (service_port,) = rendered.one("Service")["spec"]["ports"]
        assert service_port == {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}


def _mounted_file(rendered: Rendered, pod: dict[str, Any], file: str) -> tuple[str, str, dict[str, Any]]:
    """The (kind, name, data) of the ConfigMap or Secret that provides the file at this path."""
    container = _exporter(pod)
    parent, name = str(PurePosixPath(file).parent), PurePosixPath(file).name
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == parent]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    if "configMap" in volume:
        config_map = [
            d for d in rendered.of_kind("ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"]
        ]
        assert config_map, f"{file}: no ConfigMap {volume['configMap']['name']}"
        return "ConfigMap", config_map[0]["metadata"]["name"], config_map[0]["data"]
    secret_name = volume["secret"]["secretName"]
    assert [item["path"] for item in volume["secret"]["items"]] == [name]
    secrets = [d for d in rendered.of_kind("Secret") if d["metadata"]["name"] == secret_name]
    return "Secret", secret_name, secrets[0]["stringData"] if secrets else {}


def test_config_file_comes_from_values(render: Render) -> None:
    values = SCENARIOS["everything"]
    rendered = render(values)
    pod = _daemonset_pod(rendered)
    config_file = _flag(_exporter(pod), "--config.file")
    assert config_file
    kind, _, data = _mounted_file(rendered, pod, config_file)
    assert kind == "ConfigMap"
    assert yaml.safe_load(data[PurePosixPath(config_file).name]) == values["config"]
    # A changed configuration rolls the pods.
    annotations = rendered.one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] != _daemonset_checksum(render({}))


def _daemonset_checksum(rendered: Rendered) -> str:
    return str(rendered.one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


# The exporter does not take --web.config.file yet: run it with everything else.
RUNNABLE = {
    "default": {},
    "custom": {
        "port": 19310,
        "telemetryPath": "/ovs-metrics",
        "config": SCENARIOS["everything"]["config"],
        "extraArgs": ["--netlink.timeout=3"],
    },
    # No OVSDB here: it starts, serves the kernel side and says OVSDB is not there.
    "ovsdb": {"ovsdb": {"enabled": True, "externalIds": ["iface-id"]}},
}


@pytest.mark.parametrize("scenario", RUNNABLE)
def test_exporter_runs_with_the_pod_arguments(
    render: Render, run_exporter: Callable[..., Any], tmp_path: Path, scenario: str
) -> None:
    """The container's arguments and the ConfigMap, given to the exporter of this checkout
    (on a loopback port, without capabilities): it starts, answers the probes' path and
    serves metrics where the ServiceMonitor looks."""
    rendered = render(RUNNABLE[scenario])
    pod = _daemonset_pod(rendered)
    container = _exporter(pod)
    mounted = _flag(container, "--config.file")
    assert mounted
    _, _, data = _mounted_file(rendered, pod, mounted)
    config_file = tmp_path / PurePosixPath(mounted).name
    config_file.write_text(data[config_file.name], encoding="utf-8")
    args = [
        f"--config.file={config_file}" if a.startswith("--config.file=") else a for a in container["args"]
    ]
    assert container["livenessProbe"]["httpGet"]["path"] == "/"
    telemetry_path = _flag(container, "--web.telemetry-path")
    assert telemetry_path
    scrape = run_exporter(args, telemetry_path)
    assert scrape.landing_status == 200
    assert scrape.metrics_status == 200
    assert "\novs_up " in scrape.metrics
    if "ovsdb" in RUNNABLE[scenario]:
        assert '\novs_scrape_collector_success{collector="ovsdb"} 0\n' in scrape.metrics
    if RUNNABLE[scenario].get("config", {}).get("collector", {}).get("flows"):
        # The chart's flows keys reach the exporter: the worker started and reports its health
        # (0 here, with no openvswitch module on the host).
        assert '\novs_scrape_collector_success{collector="flows"} ' in scrape.metrics
    assert scrape.capabilities["CapEff"] == 0
    assert scrape.exit_code == 0


def test_exporter_runs_with_the_pod_web_config(
    render: Render, run_exporter: Callable[..., Any], tmp_path: Path
) -> None:
    """TLS and basic auth from the chart's Secret and the TLS Secret's mount: the exporter
    serves HTTPS, wants the password, and the probes (TCP, since `/` wants it too) hold."""
    import bcrypt  # a dependency of the exporter, which this test starts

    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(tls / "tls.key"), "-out", str(tls / "tls.crt"), "-days", "1", "-subj", "/CN=node",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    password_hash = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = {**WEB_TLS, "config": {**WEB_TLS["config"], "basic_auth_users": {"prometheus": password_hash}}}
    rendered = render({"webConfig": web})
    pod = _daemonset_pod(rendered)
    container = _exporter(pod)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "metrics"}
        assert "httpGet" not in container[probe]
    files: dict[str, Path] = {}
    for flag in ("--config.file", "--web.config.file"):
        mounted = _flag(container, flag)
        assert mounted
        _, _, data = _mounted_file(rendered, pod, mounted)
        text = data[PurePosixPath(mounted).name].replace("/etc/ovs-vport-exporter/tls", str(tls))
        files[flag] = tmp_path / PurePosixPath(mounted).name
        files[flag].write_text(text, encoding="utf-8")
    args = [
        f"{a.split('=', 1)[0]}={files[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in files else a
        for a in container["args"]
    ]
    scrape = run_exporter(args, "/metrics", ca_file=tls / "tls.crt", basic_auth=("prometheus", "s3cret"))
    assert scrape.landing_status == 200
    assert scrape.anonymous_status == 401
    assert scrape.metrics_status == 200
    assert "\novs_up " in scrape.metrics
    assert scrape.exit_code == 0


def test_web_config_off_by_default(render: Render) -> None:
    rendered = render({})
    container = _exporter(_daemonset_pod(rendered))
    assert _flag(container, "--web.config.file") is None
    assert "Secret" not in rendered.kinds()


@pytest.mark.parametrize("scenario", ["web-config", "web-config-existing-secret"])
def test_web_config_from_secret(render: Render, scenario: str) -> None:
    values = SCENARIOS[scenario]
    rendered = render(values)
    pod = _daemonset_pod(rendered)
    web_config_file = _flag(_exporter(pod), "--web.config.file")
    assert web_config_file
    kind, name, data = _mounted_file(rendered, pod, web_config_file)
    assert kind == "Secret"
    existing = values["webConfig"].get("existingSecret")
    if existing:
        assert name == existing
        assert "Secret" not in rendered.kinds()
    else:
        assert yaml.safe_load(data["web-config.yml"]) == values["webConfig"]["config"]
        tls_mounts = [
            m for m in _exporter(pod)["volumeMounts"] if m["mountPath"] == "/etc/ovs-vport-exporter/tls"
        ]
        assert tls_mounts and tls_mounts[0]["readOnly"] is True


def test_monitors_scrape_the_metrics_port(render: Render) -> None:
    service_monitor = render(SCENARIOS["web-config"]).one("ServiceMonitor")
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == SCENARIOS["web-config"]["serviceMonitor"]["tlsConfig"]
    service = render(SCENARIOS["web-config"]).one("Service")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The alert rules select the exporter with job="ovs-vport-exporter": jobLabel gives that job name.
    assert service["metadata"]["labels"][service_monitor["spec"]["jobLabel"]] == "ovs-vport-exporter"
    pod_monitor = render(SCENARIOS["pod-monitor"]).one("PodMonitor")
    (pod_endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert pod_endpoint["port"] == "metrics"
    assert pod_endpoint["interval"] == "1m"
    assert pod_monitor["metadata"]["namespace"] == "prometheus"
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": [render({}).namespace]}
    pod_labels = render(SCENARIOS["pod-monitor"]).one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_network_policy_admits_the_metrics_port_only(render: Render) -> None:
    values = SCENARIOS["network-policy"]
    policy = render(values).one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"] == values["networkPolicy"]["from"]


# --- values schema -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_are_refused_clearly(render_error: Callable[[dict[str, Any]], str], case: str) -> None:
    values, expected = BAD_VALUES[case]
    message = render_error(values)
    for part in expected:
        assert part in message, f"helm's message lacks {part!r}:\n{message}"
    assert "panic" not in message


def test_schema_is_valid_json_schema(kubernetes_validate: ModuleType) -> None:
    jsonschema = importlib.import_module("jsonschema")  # comes with kubernetes-validate

    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(
        yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    )


def test_values_table_in_readme_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "helm" / "values_table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- single sources: alert rules and dashboards ------------------------------------------------


def test_chart_files_are_links_to_the_single_sources() -> None:
    """No copies in the chart: files/ links to alerts/ and dashboards/."""
    rules_link = CHART / "files" / "ovs-vport-exporter.rules.yml"
    dashboards_link = CHART / "files" / "dashboards"
    assert rules_link.is_symlink() and rules_link.resolve() == RULES.resolve()
    assert dashboards_link.is_symlink() and dashboards_link.resolve() == DASHBOARDS.resolve()
    assert os.readlink(rules_link) == "../../../alerts/ovs-vport-exporter.rules.yml"


def test_prometheus_rule_is_the_rules_file(render: Render) -> None:
    rule = render(SCENARIOS["prometheus-rule"]).one("PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert rule["metadata"]["labels"]["role"] == "alert-rules"


def _dashboard_config_maps(rendered: Rendered, label: str) -> list[dict[str, Any]]:
    return [d for d in rendered.of_kind("ConfigMap") if label in d["metadata"]["labels"]]


@pytest.mark.parametrize("scenario", ["default", "dashboards-custom"])
def test_dashboard_config_maps_are_the_dashboard_files(render: Render, scenario: str) -> None:
    values = SCENARIOS[scenario].get("dashboards", {})
    label = values.get("label", "grafana_dashboard")
    rendered = render(SCENARIOS[scenario])
    config_maps = _dashboard_config_maps(rendered, label)
    files = sorted(DASHBOARDS.glob("*.json"))
    assert len(config_maps) == len(files)
    by_key = {key: (cm, text) for cm in config_maps for key, text in cm["data"].items()}
    for file in files:
        assert file.name in by_key, f"no dashboard ConfigMap for {file.name}"
        config_map, text = by_key[file.name]
        assert text == file.read_text(encoding="utf-8"), f"{file.name} differs from its ConfigMap"
        assert len(text.encode()) < CONFIG_MAP_LIMIT, f"{file.name} is too large for a ConfigMap"
        json.loads(text)
        assert config_map["metadata"]["labels"][label] == values.get("labelValue", "1")
        assert config_map["metadata"]["namespace"] == values.get("namespace", rendered.namespace)
        assert config_map["metadata"].get("annotations", {}) == values.get("annotations", {})


def test_no_dashboards_when_disabled(render: Render) -> None:
    assert _dashboard_config_maps(render(SCENARIOS["no-dashboards"]), "grafana_dashboard") == []


def test_packaged_chart_holds_the_sources(helm_run: Callable[..., str], tmp_path: Path) -> None:
    """`helm package` follows the links: the archive has the files' content, not links."""
    helm_run("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("ovs-vport-exporter-*.tgz")
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        rules = members["ovs-vport-exporter/files/ovs-vport-exporter.rules.yml"]
        assert rules.isfile()
        extracted = tar.extractfile(rules)
        assert extracted is not None
        assert extracted.read() == RULES.read_bytes()
        packaged_dashboards = {
            PurePosixPath(n).name for n in members if n.startswith("ovs-vport-exporter/files/dashboards/")
        }
        assert packaged_dashboards == {f.name for f in DASHBOARDS.glob("*.json")}


def test_template_error_names_a_missing_rules_file(helm: Path, tmp_path: Path) -> None:
    """A chart copied without its sources fails with a message that says why."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy, symlinks=True)
    (copy / "files" / "ovs-vport-exporter.rules.yml").unlink()
    (copy / "files" / "ovs-vport-exporter.rules.yml").write_text("", encoding="utf-8")
    (copy / "files" / "dashboards").unlink()
    (copy / "files" / "dashboards").mkdir()
    result = subprocess.run(
        [str(helm), "template", "x", str(copy), "--set", "prometheusRule.enabled=true"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "alerts/ovs-vport-exporter.rules.yml" in result.stderr


# --- the documentation's commands and examples ----------------------------------------------------

DOCS = [REPO / "docs" / "deploy.md", CHART / "README.md"]


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def _helm_commands() -> list[tuple[str, list[str]]]:
    """(document, arguments) of every `helm install`/`helm upgrade --install` in the docs."""
    found = []
    for doc in DOCS:
        for block in _code_blocks(doc.read_text(encoding="utf-8"), "sh"):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line)
                if words[:2] in (["helm", "install"], ["helm", "upgrade"]):
                    found.append((doc.name, words[2:]))
    return found


@pytest.mark.parametrize(("doc", "arguments"), _helm_commands())
def test_documented_helm_commands_install(
    helm_run: Callable[..., str], doc: str, arguments: list[str]
) -> None:
    """Each documented install command, as `helm install --dry-run=client` from the repository's
    top (no cluster needed): values are checked and every template renders, NOTES.txt too."""
    arguments = [a for a in arguments if a != "--install"]  # `upgrade --install` installs here
    release, chart, *flags = arguments
    assert (REPO / chart).resolve() == CHART.resolve(), f"{doc}: chart path {chart}"
    output = helm_run("install", release, str(CHART), *flags, "--dry-run=client")
    assert "NOTES:" in output


def test_documented_values_examples_render(render: Render) -> None:
    examples = _code_blocks((CHART / "README.md").read_text(encoding="utf-8"), "yaml")
    assert examples
    for example in examples:
        assert render(yaml.safe_load(example)).one("DaemonSet")
