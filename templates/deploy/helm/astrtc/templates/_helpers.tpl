{{/* Chart name, truncated to the 63 characters Kubernetes allows in names and labels. */}}
{{- define "astrtc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already contains it. */}}
{{- define "astrtc.fullname" -}}
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

{{/* Standard labels. */}}
{{- define "astrtc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "astrtc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: astrtc
{{- end }}

{{/* Selector labels: name and instance only, so they never change on upgrade. */}}
{{- define "astrtc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "astrtc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The TURN relay's selector labels: a name of its own, so Asterisk's Service and Deployment
never select its pod. */}}
{{- define "astrtc.turnSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-turn" (include "astrtc.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The TURN relay's labels. */}}
{{- define "astrtc.turnLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "astrtc.turnSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: astrtc
app.kubernetes.io/component: turn
{{- end }}

{{/* Whether a Secret or Certificate of the chart must hold the TLS certificate: the pod
terminates TLS, or the TURN relay serves TURN over TLS with it. */}}
{{- define "astrtc.needsKeys" -}}
{{- if or (eq (include "astrtc.podTLS" .) "true") .Values.turn.enabled }}true{{ else }}false{{ end }}
{{- end }}

{{/* Secret holding the endpoint passwords (pjsip_auth.conf). */}}
{{- define "astrtc.authSecretName" -}}
{{- default (printf "%s-auth" (include "astrtc.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* Secret holding the WSS certificate (asterisk.crt, asterisk.key). */}}
{{- define "astrtc.keysSecretName" -}}
{{- if eq .Values.certificates.mode "existingSecret" }}
{{- required "certificates.existingSecret is required when certificates.mode is existingSecret" .Values.certificates.existingSecret }}
{{- else }}
{{- printf "%s-keys" (include "astrtc.fullname" .) }}
{{- end }}
{{- end }}

{{/* The rendered configs (the ConfigMap) at /etc/asterisk and the password files (the auth
Secret) at /etc/asterisk-secrets, each one directory mount: Kubernetes switches a directory
volume's files as a whole (its `..data` symlink), so a running Asterisk sees the old set or the
new one, never a mix, and the reloader applies it. (subPath mounts never see updates.) */}}
{{- define "astrtc.configMounts" -}}
- name: config
  mountPath: /etc/asterisk
  readOnly: true
- name: auth
  mountPath: /etc/asterisk-secrets
  readOnly: true
{{- end }}

{{/* The WSS certificate at /etc/asterisk-keys, when the pod terminates TLS. */}}
{{- define "astrtc.keysMount" -}}
{{- if eq (include "astrtc.acmeSidecar" .) "true" }}
- name: acme-state
  mountPath: /etc/asterisk-keys
  subPath: keys
  readOnly: true
{{- else if eq (include "astrtc.podTLS" .) "true" }}
- name: keys
  mountPath: /etc/asterisk-keys
  readOnly: true
{{- end }}
{{- end }}

{{/* Whether the ACME sidecar runs (mode acme, TLS in the pod). */}}
{{- define "astrtc.acmeSidecar" -}}
{{- if and (eq .Values.certificates.mode "acme") (not .Values.ingress.enabled) }}true{{ else }}false{{ end }}
{{- end }}

{{/* Whether the pod terminates TLS itself (false when an Ingress does). */}}
{{- define "astrtc.podTLS" -}}
{{- if .Values.ingress.enabled }}false{{ else }}true{{ end }}
{{- end }}

{{/* A file's text as one YAML double-quoted scalar that reads back byte for byte in any YAML
reader: toJson escapes quotes, backslashes, C0 controls and U+2028/U+2029; the characters it
leaves as they are but YAML treats as breaks (NEL) or refuses (DEL, the other C1 controls,
U+FFFE, U+FFFF) are escaped here. */}}
{{- define "astrtc.yamlString" -}}
{{- $s := toJson . }}
{{- range $cp := concat (untilStep 127 160 1) (list 65534 65535) }}
{{- $s = replace (printf "%c" $cp) (printf "\\u%04x" $cp) $s }}
{{- end }}
{{- $s }}
{{- end }}

{{/* Secret holding the metrics basic-auth user and password (for a ServiceMonitor/PodMonitor). */}}
{{- define "astrtc.metricsSecretName" -}}
{{- printf "%s-metrics" (include "astrtc.fullname" .) }}
{{- end }}

{{/* The pod port /metrics is scraped on: the TLS (WSS) port, or plain HTTP behind an Ingress. */}}
{{- define "astrtc.metricsPort" -}}
{{- if eq (include "astrtc.podTLS" .) "true" }}wss{{ else }}ws{{ end }}
{{- end }}

{{/* The scrape scheme matching astrtc.metricsPort. */}}
{{- define "astrtc.metricsScheme" -}}
{{- if eq (include "astrtc.podTLS" .) "true" }}https{{ else }}http{{ end }}
{{- end }}

{{/* The endpoint of a ServiceMonitor or PodMonitor: port, path, basic auth, TLS by name. */}}
{{- define "astrtc.metricsEndpoint" -}}
port: {{ include "astrtc.metricsPort" . }}
path: /metrics
scheme: {{ include "astrtc.metricsScheme" . }}
interval: {{ .Values.metrics.interval }}
basicAuth:
  username:
    name: {{ include "astrtc.metricsSecretName" . }}
    key: username
  password:
    name: {{ include "astrtc.metricsSecretName" . }}
    key: password
{{- if eq (include "astrtc.podTLS" .) "true" }}
tlsConfig:
  serverName: {{ .Values.tls.domain }}
  insecureSkipVerify: {{ .Values.metrics.insecureSkipVerify }}
  {{- if eq .Values.certificates.mode "bundled" }}
  ca:
    secret:
      name: {{ include "astrtc.keysSecretName" . }}
      key: ca.crt
  {{- end }}
{{- end }}
{{- end }}

{{/* Whether the pod runs astrtc-metrics and the node exporter sidecar serving its text file. */}}
{{- define "astrtc.exporter" -}}
{{- if and .Values.metrics.enabled .Values.metrics.exporter.enabled }}true{{ else }}false{{ end }}
{{- end }}

{{/* Where the node exporter listens: loopback or all (metrics.exporter.listen; auto is loopback
with hostNetwork, where every interface is the node's, and all with hostPort, where the pod has
an address of its own in the cluster network and the port is never a host port). */}}
{{- define "astrtc.exporterListen" -}}
{{- $listen := .Values.metrics.exporter.listen }}
{{- if eq $listen "auto" }}{{ ternary "loopback" "all" (eq .Values.network.mode "hostNetwork") }}{{ else }}{{ $listen }}{{ end }}
{{- end }}

{{/* Whether monitors scrape the node exporter: it runs and listens beyond loopback. */}}
{{- define "astrtc.exporterScraped" -}}
{{- if and (eq (include "astrtc.exporter" .) "true") (eq (include "astrtc.exporterListen" .) "all") }}true{{ else }}false{{ end }}
{{- end }}

{{/* The node exporter's endpoint in a ServiceMonitor or PodMonitor: plain HTTP, no password
(it has neither; see metrics.exporter.listen). */}}
{{- define "astrtc.exporterEndpoint" -}}
port: exporter
path: /metrics
scheme: http
interval: {{ .Values.metrics.interval }}
{{- end }}
