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

{{/* The namespace of the engines (driver and executor pods): "<fullname>-engines" by default. */}}
{{- define "rucat.engineNamespace" -}}
{{- default (printf "%s-engines" (include "rucat.fullname" .)) .Values.kubernetes.namespace -}}
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

{{- define "rucat.proxyServiceAccountName" -}}
{{- default (printf "%s-proxy" (include "rucat.fullname" .)) .Values.proxy.serviceAccount.name -}}
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

{{/*
Authentication. Rucat authenticates every REST request, so the chart renders only with a
credential source: a tokens file (auth.existingSecret, or auth.tokens from which the chart makes
the Secret "<fullname>-auth") or OIDC JWTs (auth.jwt.issuer). `required`, not `fail`, as for the
store: helm lint renders with the chart's own values and reports `required` as a warning only.
*/}}
{{- define "rucat.checkAuth" -}}
{{- $a := .Values.auth -}}
{{- if not (or $a.existingSecret $a.tokens $a.jwt.issuer) -}}
{{- $_ := required "authentication is not configured, and Rucat authenticates every request: make a token with `rucat token create --user NAME --admin` (it prints the token, to keep, and its hash), then set auth.tokens (e.g. --set auth.tokens[0].user=NAME,auth.tokens[0].role=admin,auth.tokens[0].hash=sha256:...), or put the printed [[tokens]] entry into a Secret and set auth.existingSecret (key auth.existingSecretKey, default tokens.toml); or set auth.jwt.issuer (with auth.jwt.audience and auth.jwt.jwksUrl) to accept OIDC JWTs" "" -}}
{{- end -}}
{{- if $a.jwt.issuer -}}
{{- $_ := required "auth.jwt.issuer is set: auth.jwt.audience (the aud the JWTs carry) is required too" $a.jwt.audience -}}
{{- $_ := required "auth.jwt.issuer is set: auth.jwt.jwksUrl (the issuer's JWKS, https) is required too" $a.jwt.jwksUrl -}}
{{- if and (or $a.jwt.adminClaim $a.jwt.adminValue) (not (and $a.jwt.adminClaim $a.jwt.adminValue)) -}}
{{- fail "auth.jwt.adminClaim and auth.jwt.adminValue go together: set both (admins are those whose claim holds the value) or neither" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the tokens file; empty when there is none (JWTs only). */}}
{{- define "rucat.authSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else if .Values.auth.tokens -}}
{{- printf "%s-auth" (include "rucat.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "rucat.authSecretKey" -}}
{{- if .Values.auth.existingSecret -}}
{{- required "auth.existingSecretKey must name the key of auth.existingSecret that holds the tokens file" .Values.auth.existingSecretKey -}}
{{- else -}}
tokens.toml
{{- end -}}
{{- end -}}

{{/* Where the server and the proxy read the tokens file ([auth] tokens_file); empty without one. */}}
{{- define "rucat.authTokensFile" -}}
{{- if include "rucat.authSecretName" . -}}
{{- printf "/etc/rucat/auth/%s" (include "rucat.authSecretKey" .) -}}
{{- end -}}
{{- end -}}

{{/*
The pods that may reach the engines' Spark Connect port, as a JSON list of {namespace, podLabels}
(namespace absent: the engine namespace): this release's pods labelled
rucat.io/engine-access=true (the proxy and the monitor), then networkPolicy.engineClients (a
bypass of the proxy for special cases). They are Rucat's [kubernetes.network_policy] connect_from and the
peers of the static engine NetworkPolicy.
*/}}
{{- define "rucat.engineAccessPeers" -}}
{{- $own := dict "namespace" .Release.Namespace "podLabels" (dict "app.kubernetes.io/instance" .Release.Name "rucat.io/engine-access" "true") -}}
{{- $peers := list $own -}}
{{- range .Values.networkPolicy.engineClients -}}
{{- $peers = append $peers . -}}
{{- end -}}
{{- toJson $peers -}}
{{- end -}}

{{/* The environment, mounts and volumes the server, the monitor and the proxy share (argument: $). */}}
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
{{- if .Values.metrics.enabled }}
# The metrics listener (GET /metrics only, no authentication, aggregates only). An environment
# variable: it beats a [metrics] listen of extraConfig.
- name: RUCAT_METRICS_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
{{- end }}
{{- end -}}

{{/*
The metrics listener's port, with metrics.enabled: not one the roles listen on already (the
REST port 3000, the Spark Connect port 15002), where the listener could not bind.
*/}}
{{- define "rucat.checkMetrics" -}}
{{- if and .Values.metrics.enabled (has (int .Values.metrics.port) (list 3000 15002)) -}}
{{- fail (printf "metrics.port is %d, a port Rucat already listens on (3000: REST, 15002: Spark Connect): choose another, e.g. 9090" (int .Values.metrics.port)) -}}
{{- end -}}
{{- end -}}

{{/* The metrics listener's container port, with metrics.enabled (argument: $). */}}
{{- define "rucat.metricsContainerPort" -}}
{{- if .Values.metrics.enabled -}}
- name: metrics
  containerPort: {{ int .Values.metrics.port }}
  protocol: TCP
{{- end -}}
{{- end -}}

{{/*
A NetworkPolicy ingress rule admitting metrics.from on the metrics port, with metrics.enabled
(argument: $).
*/}}
{{- define "rucat.metricsIngressRule" -}}
{{- if .Values.metrics.enabled -}}
# Prometheus: the metrics listener only, from metrics.from only.
- ports:
    - port: {{ int .Values.metrics.port }}
      protocol: TCP
  from:
    {{- toYaml .Values.metrics.from | nindent 4 }}
{{- end -}}
{{- end -}}

{{/*
A role's pod annotations beyond the config checksum: its own podAnnotations and, with
metrics.enabled, metrics.podAnnotations (the role's own win on the same key). Argument:
(dict "ctx" $ "own" .Values.<role>.podAnnotations).
*/}}
{{- define "rucat.podAnnotations" -}}
{{- $annotations := deepCopy (.own | default dict) -}}
{{- if .ctx.Values.metrics.enabled -}}
{{- $annotations = merge $annotations (deepCopy (.ctx.Values.metrics.podAnnotations | default dict)) -}}
{{- end -}}
{{- with $annotations -}}
{{- toYaml . -}}
{{- end -}}
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

{{/*
TOML value of a string or a list of strings: JSON strings and arrays are valid TOML (a JSON
string is a TOML basic string, and a quoted TOML key).
*/}}
{{- define "rucat.toml" -}}
{{- toJson . -}}
{{- end -}}

{{/* A TOML inline table of strings from a map of strings: { "key" = "value", ... }. */}}
{{- define "rucat.tomlInlineTable" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s = %s" (include "rucat.toml" $key) (include "rucat.toml" (toString $value))) -}}
{{- end -}}
{{- printf "{ %s }" (join ", " $pairs) -}}
{{- end -}}

{{/*
The Spark Connect proxy. Checked where rucat.toml is rendered, after the store and the
credentials: with the proxy enabled, proxy.publicUrl is required (the server shows it to users),
and so is TLS (proxy.tls.existingSecret) unless proxy.allowPlaintext says that TLS ends in front
of the proxy; the Ingress needs its host. `required`, not `fail`, as for the store: helm lint
renders with the chart's own values and reports `required` as a warning only.
*/}}
{{- define "rucat.checkProxy" -}}
{{- $p := .Values.proxy -}}
{{- if $p.enabled -}}
{{- $_ := required "proxy.publicUrl is required: the sc://HOST:PORT at which Spark Connect clients reach the proxy (its Service's load balancer, or the Ingress host: sc://HOST:443); users see engines' endpoints as it plus ;x-rucat-engine=<id>" $p.publicUrl -}}
{{- if not (or $p.tls.existingSecret $p.allowPlaintext) -}}
{{- $_ := required "the Spark Connect proxy would serve plaintext: set proxy.tls.existingSecret (a kubernetes.io/tls Secret, e.g. from cert-manager; the proxy then serves TLS), or proxy.allowPlaintext=true only when TLS ends in front of the proxy (e.g. an Ingress) and the network up to it is trusted: without TLS, every caller's token crosses the network in the clear" "" -}}
{{- end -}}
{{- if $p.ingress.enabled -}}
{{- $_ := required "proxy.ingress.enabled is set: proxy.ingress.host (the host clients connect to) is required too" $p.ingress.host -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Idle auto-stop limits, checked as Rucat checks them: with idle.maxMinutes above 0,
idle.defaultMinutes must be between 1 and it.
*/}}
{{- define "rucat.checkIdle" -}}
{{- $i := .Values.idle -}}
{{- if and (not (kindIs "invalid" $i.maxMinutes)) (gt (int64 $i.maxMinutes) 0) -}}
{{- $default := 0 -}}
{{- if not (kindIs "invalid" $i.defaultMinutes) -}}{{- $default = int64 $i.defaultMinutes -}}{{- end -}}
{{- if or (lt (int64 $default) 1) (gt (int64 $default) (int64 $i.maxMinutes)) -}}
{{- fail (printf "idle.maxMinutes is %d: idle.defaultMinutes must be set between 1 and it (an engine's idle timeout when its create names none; 0, never, is beyond any maximum)" (int64 $i.maxMinutes)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether clients reach the proxy over TLS as far as the chart knows: "true" or empty. */}}
{{- define "rucat.proxyClientTls" -}}
{{- if or .Values.proxy.tls.existingSecret .Values.proxy.ingress.enabled -}}true{{- end -}}
{{- end -}}

{{/*
[proxy] public_url: proxy.publicUrl, with "/;use_ssl=true" added when clients reach the proxy
over TLS (rucat.proxyClientTls) and it names no use_ssl itself.
*/}}
{{- define "rucat.proxyPublicUrl" -}}
{{- $url := trimSuffix "/" .Values.proxy.publicUrl -}}
{{- if and $url (include "rucat.proxyClientTls" .) (not (regexMatch "(?i)[/;]use_ssl=" $url)) -}}
{{- if contains "/;" $url -}}
{{- printf "%s;use_ssl=true" $url -}}
{{- else -}}
{{- printf "%s/;use_ssl=true" $url -}}
{{- end -}}
{{- else -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/* An engine's connection string through the proxy, as Rucat makes it (argument: dict "ctx" $ "id" ID). */}}
{{- define "rucat.proxyEndpoint" -}}
{{- $url := include "rucat.proxyPublicUrl" .ctx -}}
{{- if contains "/;" $url -}}
{{- printf "%s;x-rucat-engine=%s" $url .id -}}
{{- else -}}
{{- printf "%s/;x-rucat-engine=%s" $url .id -}}
{{- end -}}
{{- end -}}

{{/* Where the proxy reads its certificate and key ([proxy] tls_cert, tls_key). */}}
{{- define "rucat.proxyTlsDir" -}}
/etc/rucat/proxy-tls
{{- end -}}
