{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "flotilla-hub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full object name: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>". Kubernetes names stop at
63 characters.
*/}}
{{- define "flotilla-hub.fullname" -}}
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
Labels that select the hub pod; they never change across upgrades.
*/}}
{{- define "flotilla-hub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla-hub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels on every object of the chart.
*/}}
{{- define "flotilla-hub.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "flotilla-hub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: hub
app.kubernetes.io/part-of: flotilla
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
ServiceAccount the hub runs as.
*/}}
{{- define "flotilla-hub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flotilla-hub.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Secret holding a supplied CA.
*/}}
{{- define "flotilla-hub.caSecretName" -}}
{{- default (printf "%s-ca" (include "flotilla-hub.fullname" .)) .Values.ca.existingSecret -}}
{{- end -}}

{{/*
Secret holding a supplied admin token.
*/}}
{{- define "flotilla-hub.adminTokenSecretName" -}}
{{- default (printf "%s-admin-token" (include "flotilla-hub.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}

{{/*
Whether an admin token is supplied, by value or by existing Secret.
*/}}
{{- define "flotilla-hub.hasAdminToken" -}}
{{- if or .Values.adminToken.value .Values.adminToken.existingSecret -}}true{{- end -}}
{{- end -}}

{{/*
ConfigMap holding the ssh known hosts.
*/}}
{{- define "flotilla-hub.knownHostsConfigMapName" -}}
{{- default (printf "%s-ssh-known-hosts" (include "flotilla-hub.fullname" .)) .Values.ssh.existingConfigMap -}}
{{- end -}}

{{/*
Whether ssh known hosts are supplied, by value or by existing ConfigMap.
*/}}
{{- define "flotilla-hub.hasKnownHosts" -}}
{{- if or .Values.ssh.knownHosts .Values.ssh.existingConfigMap -}}true{{- end -}}
{{- end -}}

{{/*
Secret holding the credentials key.
*/}}
{{- define "flotilla-hub.credentialsKeySecretName" -}}
{{- default (printf "%s-credentials-key" (include "flotilla-hub.fullname" .)) .Values.credentialsKey.existingSecret -}}
{{- end -}}

{{/*
Whether a credentials key is supplied, by value or by existing Secret.
*/}}
{{- define "flotilla-hub.hasCredentialsKey" -}}
{{- if or .Values.credentialsKey.value .Values.credentialsKey.existingSecret -}}true{{- end -}}
{{- end -}}

{{/*
Secret holding the webhook secret.
*/}}
{{- define "flotilla-hub.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "flotilla-hub.fullname" .)) .Values.webhook.secret.existingSecret -}}
{{- end -}}

{{/*
Whether a webhook secret is supplied, by value or by existing Secret.
*/}}
{{- define "flotilla-hub.hasWebhookSecret" -}}
{{- if and .Values.webhook.enabled (or .Values.webhook.secret.value .Values.webhook.secret.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/*
Where the render tools (helm, kustomize) are copied to; on the hub's PATH.
*/}}
{{- define "flotilla-hub.toolsDir" -}}
/opt/flotilla/tools
{{- end -}}

{{/*
One alerting rule of the PrometheusRule, unless its name is in
metrics.prometheusRule.disabledAlerts. Argument: a dict with pr (the
prometheusRule values), name, severity, for, expr, summary, description.
*/}}
{{- define "flotilla-hub.alert" -}}
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
