{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "flotilla-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full object name: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>".
*/}}
{{- define "flotilla-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Labels that select the agent pod.
*/}}
{{- define "flotilla-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels on every object of the chart.
*/}}
{{- define "flotilla-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "flotilla-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: flotilla
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
ServiceAccount the agent runs as.
*/}}
{{- define "flotilla-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flotilla-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Secret holding the bootstrap token, hub URL and CA pin.
*/}}
{{- define "flotilla-agent.bootstrapSecretName" -}}
{{- default (printf "%s-bootstrap" (include "flotilla-agent.fullname" .)) .Values.bootstrap.existingSecret -}}
{{- end -}}

{{/*
The rules the agent needs to apply what Git holds: everything.
*/}}
{{- define "flotilla-agent.managementRules" -}}
- apiGroups: ["*"]
  resources: ["*"]
  verbs: ["*"]
{{- with .Values.rbac.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
One alerting rule of the PrometheusRule, unless its name is in
metrics.prometheusRule.disabledAlerts. Argument: a dict with pr (the
prometheusRule values), name, severity, for, expr, summary, description.
*/}}
{{- define "flotilla-agent.alert" -}}
{{- if not (has .name .pr.disabledAlerts) -}}
- alert: {{ .name }}
  expr: {{ .expr | quote }}
  {{- with .for }}
  for: {{ . }}
  {{- end }}
  labels:
    {{- toYaml (merge (dict) .pr.alertLabels (dict "severity" .severity)) | nindent 4 }}
  annotations:
    summary: {{ .summary | quote }}
    description: {{ .description | quote }}
{{- end -}}
{{- end -}}

{{/*
Where the agent keeps its desired-state cache: cluster or disk.
*/}}
{{- define "flotilla-agent.cacheStore" -}}
{{- $store := .Values.cache.store | default "cluster" -}}
{{- if and (ne $store "cluster") (ne $store "disk") -}}
{{- fail (printf "cache.store must be cluster or disk, not %q" $store) -}}
{{- end -}}
{{- $store -}}
{{- end -}}
