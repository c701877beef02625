{{/* Chart name, truncated to the 63 characters Kubernetes allows in names and labels. */}}
{{- define "astrtc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already contains it. Kept
to 52 characters: the pool's pod names add "-pool-NN" and must stay DNS labels. */}}
{{- define "astrtc.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The pool's StatefulSet and headless Service (one name, which resolves to every member's address). */}}
{{- define "astrtc.pool" -}}
{{- printf "%s-pool" (include "astrtc.fullname" .) }}
{{- end }}

{{/* Standard labels of a component (. = list root component). */}}
{{- define "astrtc.labels" -}}
{{- $root := index . 0 }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "astrtc.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: astrtc
{{- end }}

{{/* Selector labels of a component (. = list root component): name, instance, component. */}}
{{- define "astrtc.selectorLabels" -}}
{{- $root := index . 0 }}
app.kubernetes.io/name: {{ include "astrtc.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Secret holding the WSS certificate (tls.crt, tls.key). */}}
{{- define "astrtc.keysSecretName" -}}
{{- if eq .Values.certificates.mode "existingSecret" }}
{{- .Values.certificates.existingSecret }}
{{- else }}
{{- printf "%s-keys" (include "astrtc.fullname" .) }}
{{- end }}
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

{{/* The existing database's address (libpq's variables; no password here). */}}
{{- define "astrtc.databaseEnv" -}}
- name: PGHOST
  value: {{ .Values.database.host | quote }}
- name: PGPORT
  value: {{ .Values.database.port | quote }}
- name: PGDATABASE
  value: {{ .Values.database.name | quote }}
- name: PGUSER
  value: {{ .Values.database.user | quote }}
- name: PGSSLMODE
  value: {{ .Values.database.sslMode | quote }}
{{- end }}
