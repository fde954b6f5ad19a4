"""Writing the Prometheus exposition: the classic text format and OpenMetrics, by hand.

Every source writes its families with these few functions (HELP and TYPE lines,
escaped labels, single samples) instead of building a prometheus_client ``Metric``
per family and sample: at thousands of vports the object-per-sample route costs
~10x the rest of the scrape. ``tests/unit/test_equivalence.py`` parses both formats
with prometheus_client's own parsers and checks they mean exactly what
prometheus_client would have written for the same families. No I/O, and no import
of the rest of the exporter.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Format(enum.Enum):
    TEXT = "text/plain; version=0.0.4; charset=utf-8"
    OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label_value(value: str) -> str:
    """Escape a label value the same way in both formats."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str, fmt: Format) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if fmt is Format.OPENMETRICS else text


def family_header(name: str, kind: str, help_text: str, fmt: Format) -> str:
    """HELP and TYPE lines. ``name`` is the family name without ``_total``/``_info``.

    OpenMetrics names the family without the suffix its samples carry; the
    classic text format names it as the samples are named, and has no info type.
    """
    if fmt is Format.OPENMETRICS:
        family = name
    elif kind == "counter":
        family = name + "_total"
    elif kind == "info":
        family, kind = name + "_info", "gauge"
    else:
        family = name
    return f"# HELP {family} {_escape_help(help_text, fmt)}\n# TYPE {family} {kind}\n"


def render_labels(labels: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels) + "}"


def render_gauge(name: str, help_text: str, value: float, fmt: Format) -> str:
    return family_header(name, "gauge", help_text, fmt) + f"{name} {_number(value)}\n"


def render_counter(name: str, help_text: str, value: float, fmt: Format) -> str:
    return family_header(name, "counter", help_text, fmt) + f"{name}_total {_number(value)}\n"


def render_info(name: str, help_text: str, labels: dict[str, str], fmt: Format) -> str:
    return family_header(name, "info", help_text, fmt) + f"{name}_info{render_labels(labels.items())} 1\n"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def render_info_samples(name: str, label_sets: Iterable[Iterable[tuple[str, str]]]) -> str:
    """The samples of an info family (``name`` without ``_info``), one per label set; no header.

    The same text serves both formats, so a background source can write it once per change.
    """
    return "".join([f"{name}_info{render_labels(labels)} 1\n" for labels in label_sets])
