{{/* Chart name, for the app.kubernetes.io/name label. */}}
{{- define "rucat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Object name prefix: "<release>" when the release name already contains the chart name, else
"<release>-<chart>". Kept to 50 characters so that suffixes such as "-monitor" and
"-spark-driver" stay within 63.
*/}}
{{- define "rucat.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rucat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "rucat.labels" -}}
helm.sh/chart: {{ include "rucat.chart" . }}
{{ include "rucat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rucat
{{- end -}}

{{- define "rucat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rucat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component's objects: (dict "ctx" $ "component" "server"). */}}
{{- define "rucat.componentLabels" -}}
{{ include "rucat.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "rucat.componentSelectorLabels" -}}
{{ include "rucat.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The namespace of the driver pods. */}}
{{- define "rucat.engineNamespace" -}}
{{- default .Release.Namespace .Values.kubernetes.namespace -}}
{{- end -}}

{{/* The value of Rucat's instance label on its driver pods. */}}
{{- define "rucat.instance" -}}
{{- default (include "rucat.fullname" .) .Values.kubernetes.instance -}}
{{- end -}}

{{- define "rucat.serverServiceAccountName" -}}
{{- default (printf "%s-server" (include "rucat.fullname" .)) .Values.server.serviceAccount.name -}}
{{- end -}}

{{- define "rucat.monitorServiceAccountName" -}}
{{- default (printf "%s-monitor" (include "rucat.fullname" .)) .Values.monitor.serviceAccount.name -}}
{{- end -}}

{{- define "rucat.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The Secret and key holding RUCAT_DATABASE_URL. Without database.existingSecret the chart creates
"<fullname>-database" from database.url, which is then required. (`required`, not `fail`: helm
lint renders with the chart's own values, where neither is set, and reports `required` as a
warning only.)
*/}}
{{- define "rucat.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- $_ := required "the store is missing: set database.existingSecret (a Secret with the PostgreSQL URL, key database.existingSecretKey) or database.url" .Values.database.url -}}
{{- printf "%s-database" (include "rucat.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "rucat.databaseSecretKey" -}}
{{- if .Values.database.existingSecret -}}
{{- required "database.existingSecretKey must name the key of database.existingSecret that holds the URL" .Values.database.existingSecretKey -}}
{{- else -}}
url
{{- end -}}
{{- end -}}

{{/* The environment, mounts and volumes the server and the monitor share (argument: $). */}}
{{- define "rucat.sharedEnv" -}}
- name: RUCAT_CONFIG
  value: /etc/rucat/rucat.toml
- name: RUCAT_DATA_DIR
  value: /var/lib/rucat
- name: RUCAT_LOG
  value: {{ .Values.logLevel | quote }}
- name: RUCAT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "rucat.databaseSecretName" . }}
      key: {{ include "rucat.databaseSecretKey" . }}
{{- end -}}

{{- define "rucat.volumeMounts" -}}
- name: config
  mountPath: /etc/rucat
  readOnly: true
- name: data
  mountPath: /var/lib/rucat
{{- end -}}

{{- define "rucat.volumes" -}}
- name: config
  configMap:
    name: {{ include "rucat.fullname" . }}-config
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataDirSizeLimit }}
{{- end -}}

{{/* TOML value of a string or a list of strings: JSON strings and arrays are valid TOML. */}}
{{- define "rucat.toml" -}}
{{- toJson . -}}
{{- end -}}
