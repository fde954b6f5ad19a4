{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "ovs-vport-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources. */}}
{{- define "ovs-vport-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ovs-vport-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels selecting the pods; they never change during the release's life. */}}
{{- define "ovs-vport-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ovs-vport-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ovs-vport-exporter.labels" -}}
helm.sh/chart: {{ include "ovs-vport-exporter.chart" . }}
{{ include "ovs-vport-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ include "ovs-vport-exporter.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: metrics
app.kubernetes.io/part-of: ovs-vport-exporter
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ovs-vport-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ovs-vport-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ovs-vport-exporter.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "ovs-vport-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "ovs-vport-exporter.imageTag" .) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding web-config.yml. */}}
{{- define "ovs-vport-exporter.webConfigSecret" -}}
{{- default (printf "%s-web-config" (include "ovs-vport-exporter.fullname" .)) .Values.webConfig.existingSecret }}
{{- end }}

{{/* The project's alert rules, parsed; one source with alerts/ (files/ holds a symlink). */}}
{{- define "ovs-vport-exporter.rules" -}}
{{- $path := "files/ovs-vport-exporter.rules.yml" }}
{{- $text := .Files.Get $path }}
{{- if not $text }}
{{- fail (printf "%s is missing or empty: it must be a symlink to alerts/ovs-vport-exporter.rules.yml" $path) }}
{{- end }}
{{- $rules := fromYaml $text }}
{{- if hasKey $rules "Error" }}
{{- fail (printf "%s is not valid YAML: %s" $path $rules.Error) }}
{{- end }}
{{- if not $rules.groups }}
{{- fail (printf "%s has no rule groups" $path) }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/*
A probe from values. An HTTP probe gets the scheme of webConfig unless it names
one. When the chart's own web configuration turns basic auth on, the exporter
refuses the kubelet's unauthenticated GET: an HTTP probe then becomes a TCP
probe of the same port.
*/}}
{{- define "ovs-vport-exporter.probe" -}}
{{- $probe := deepCopy .probe }}
{{- $web := .root.Values.webConfig }}
{{- if and (hasKey $probe "httpGet") $web.enabled (not $web.existingSecret) $web.config.basic_auth_users }}
{{- $port := $probe.httpGet.port }}
{{- $_ := unset $probe "httpGet" }}
{{- $_ := set $probe "tcpSocket" (dict "port" $port) }}
{{- else if and (hasKey $probe "httpGet") (not (hasKey $probe.httpGet "scheme")) }}
{{- $_ := set $probe.httpGet "scheme" $web.scheme }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* Settings shared by the ServiceMonitor endpoint and the PodMonitor endpoint. */}}
{{- define "ovs-vport-exporter.scrapeEndpoint" -}}
port: metrics
path: {{ .root.Values.telemetryPath }}
scheme: {{ lower .root.Values.webConfig.scheme }}
{{- with .monitor.interval }}
interval: {{ . }}
{{- end }}
{{- with .monitor.scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- if .monitor.honorLabels }}
honorLabels: true
{{- end }}
{{- with .monitor.relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .monitor.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .monitor.tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .monitor.basicAuth }}
basicAuth:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
