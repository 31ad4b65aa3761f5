{{/* Names and labels. */}}
{{- define "embedfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "embedfleet.fullname" -}}
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

{{/* Name of one component's objects: (dict "ctx" $ "component" "gateway"). */}}
{{- define "embedfleet.component" -}}
{{- printf "%s-%s" (include "embedfleet.fullname" .ctx | trunc 50 | trimSuffix "-") .component }}
{{- end }}

{{- define "embedfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "embedfleet.selectorLabels" . }}
{{- end }}

{{- define "embedfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "embedfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "embedfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{/* Service URLs: in-release dependencies when enabled, external ones otherwise. */}}
{{- define "embedfleet.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s-redis-master:6379/0" .Release.Name }}
{{- else }}
{{- .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{- define "embedfleet.qdrantUrl" -}}
{{- if .Values.qdrant.enabled }}
{{- printf "http://%s-qdrant:6333" .Release.Name }}
{{- else }}
{{- .Values.externalQdrant.url }}
{{- end }}
{{- end }}

{{- define "embedfleet.tritonUrl" -}}
{{- printf "%s:8001" (include "embedfleet.component" (dict "ctx" . "component" "triton")) }}
{{- end }}

{{- define "embedfleet.apiKeysSecret" -}}
{{- default (include "embedfleet.component" (dict "ctx" . "component" "api-keys")) .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "embedfleet.authEnabled" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}true{{ end }}
{{- end }}

{{/* EMBEDFLEET_* settings shared by gateway and worker; every name is a field of services.config.Settings. */}}
{{- define "embedfleet.commonEnv" -}}
- name: EMBEDFLEET_MODELS
  value: {{ join "," .Values.models | quote }}
- name: EMBEDFLEET_TRITON_URL
  value: {{ include "embedfleet.tritonUrl" . | quote }}
- name: EMBEDFLEET_REGISTRY_PATH
  value: /etc/embedfleet/registry/models.yaml
- name: EMBEDFLEET_DATA_DIR
  value: /var/lib/embedfleet
- name: EMBEDFLEET_LOG_LEVEL
  value: {{ .Values.gateway.logLevel | quote }}
- name: EMBEDFLEET_REDIS_URL
  value: {{ include "embedfleet.redisUrl" . | quote }}
- name: EMBEDFLEET_BROKER_URL
  value: {{ include "embedfleet.redisUrl" . | quote }}
- name: EMBEDFLEET_QDRANT_URL
  value: {{ include "embedfleet.qdrantUrl" . | quote }}
{{- if and (not .Values.qdrant.enabled) .Values.externalQdrant.apiKeySecret }}
- name: EMBEDFLEET_QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalQdrant.apiKeySecret }}
      key: api-key
{{- end }}
{{- if include "embedfleet.authEnabled" . }}
- name: EMBEDFLEET_API_KEYS_FILE
  value: /etc/embedfleet/keys/{{ .Values.apiKeys.secretKey }}
{{- end }}
{{- include "embedfleet.settingsEnv" (dict "settings" .Values.settings "prefix" "") }}
{{- end }}

{{/* `settings` (Settings field -> value) as EMBEDFLEET_* env, only fields starting with `prefix`;
lists and maps as JSON, which pydantic-settings parses. */}}
{{- define "embedfleet.settingsEnv" -}}
{{- range $field, $value := .settings }}
{{- if hasPrefix $.prefix $field }}
- name: {{ printf "EMBEDFLEET_%s" (upper $field) }}
  value: {{ if or (kindIs "slice" $value) (kindIs "map" $value) }}{{ toJson $value | quote }}{{ else }}{{ toString $value | quote }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes for the registry ConfigMap, the API-key Secret and a writable data dir. */}}
{{- define "embedfleet.appVolumes" -}}
- name: registry
  configMap:
    name: {{ include "embedfleet.component" (dict "ctx" . "component" "registry") }}
- name: data
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if include "embedfleet.authEnabled" . }}
- name: api-keys
  secret:
    secretName: {{ include "embedfleet.apiKeysSecret" . }}
{{- end }}
{{- end }}

{{- define "embedfleet.appVolumeMounts" -}}
- name: registry
  mountPath: /etc/embedfleet/registry
  readOnly: true
- name: data
  mountPath: /var/lib/embedfleet
- name: tmp
  mountPath: /tmp
{{- if include "embedfleet.authEnabled" . }}
- name: api-keys
  mountPath: /etc/embedfleet/keys
  readOnly: true
{{- end }}
{{- end }}

{{/* Pod scheduling block from a component's values. */}}
{{- define "embedfleet.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
