{{/*
Name prefix of every object: fullnameOverride or the release name (dots, which Helm allows in
release names, become dashes). Cut to 46 characters so that every derived name stays within its
kind's limit: the bundled Redis StatefulSet "<prefix>-redis" must stay within 52 characters (its
pods carry a controller-revision-hash label of the name plus 11 characters, at most 63), which
also keeps the longest Service, "<prefix>-redis-headless", within 63. values.schema.json caps
fullnameOverride at the same length.
*/}}
{{- define "agentpool.fullname" -}}
{{- $prefix := default .Release.Name .Values.fullnameOverride | replace "." "-" | trunc 46 | trimSuffix "-" -}}
{{- if not (regexMatch "^[a-z]" $prefix) -}}
{{- fail (printf "the name prefix %q must start with a letter (Service names do): set fullnameOverride" $prefix) -}}
{{- end -}}
{{- $prefix -}}
{{- end -}}

{{- define "agentpool.operatorName" -}}
{{- printf "%s-operator" (include "agentpool.fullname" .) -}}
{{- end -}}

{{- define "agentpool.redisName" -}}
{{- printf "%s-redis" (include "agentpool.fullname" .) -}}
{{- end -}}

{{- define "agentpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agentpool.operatorName" .) .Values.serviceAccount.name -}}
{{- else if .Values.serviceAccount.name -}}
{{- .Values.serviceAccount.name -}}
{{- else -}}
{{- fail "serviceAccount.create=false needs serviceAccount.name: the ServiceAccount the operator runs as (otherwise the chart would bind the operator's rights to the namespace's \"default\" ServiceAccount, which every other pod there uses)" -}}
{{- end -}}
{{- end -}}

{{- define "agentpool.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
app.kubernetes.io/part-of: agentpool
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "agentpool.operatorSelectorLabels" -}}
app.kubernetes.io/name: agentpool-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentpool.operatorLabels" -}}
{{ include "agentpool.commonLabels" . }}
{{ include "agentpool.operatorSelectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "agentpool.redisSelectorLabels" -}}
app.kubernetes.io/name: agentpool-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentpool.redisLabels" -}}
{{ include "agentpool.commonLabels" . }}
{{ include "agentpool.redisSelectorLabels" . }}
app.kubernetes.io/component: redis
{{- end -}}

{{/* Peering (kopf leader election between operator replicas) is on with more than one replica. */}}
{{- define "agentpool.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 }}true{{ end -}}
{{- end -}}

{{/* Namespaces holding a Role for reading Secrets, one per line. */}}
{{- define "agentpool.secretNamespaces" -}}
{{- $namespaces := .Values.secretNamespaces -}}
{{- if not $namespaces -}}
{{- $namespaces = prepend .Values.watchNamespaces .Release.Namespace -}}
{{- end -}}
{{- range ($namespaces | uniq) }}
{{ . }}
{{- end -}}
{{- end -}}

{{- define "agentpool.image" -}}
{{- $tag := .image.tag -}}
{{- if and (kindIs "float64" $tag) (eq $tag (floor $tag)) -}}
{{- /* a whole number from a values file, written out in full (not 2.0240101e+07) */ -}}
{{- $tag = printf "%.0f" $tag -}}
{{- end -}}
{{- printf "%s:%s" .image.repository (toString (default .appVersion $tag)) -}}
{{- end -}}

{{/*
Checks across values that values.schema.json cannot express with a readable message.
Included by the operator Deployment, so every render runs it.
*/}}
{{- define "agentpool.validate" -}}
{{- $external := .Values.redis.external -}}
{{- if and .Values.redis.enabled (or $external.url $external.existingSecret) -}}
{{- fail "redis.external.url / redis.external.existingSecret need redis.enabled=false (the bundled Redis is on)" -}}
{{- end -}}
{{- if and $external.url $external.existingSecret -}}
{{- fail "set only one of redis.external.url and redis.external.existingSecret" -}}
{{- end -}}
{{- if not (or .Values.redis.enabled $external.url $external.existingSecret) -}}
{{- fail "redis.enabled=false needs redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- $mode := default "standalone" $external.mode -}}
{{- if and .Values.redis.enabled (ne $mode "standalone") -}}
{{- fail (printf "redis.external.mode=%s needs redis.enabled=false and an external Redis (the bundled Redis is one server)" $mode) -}}
{{- end -}}
{{- $schemes := dict "standalone" (list "redis://" "rediss://") "sentinel" (list "redis+sentinel://" "rediss+sentinel://") "cluster" (list "redis+cluster://" "rediss+cluster://") -}}
{{- if $external.url -}}
{{- $wanted := get $schemes $mode -}}
{{- if not (or (hasPrefix (index $wanted 0) $external.url) (hasPrefix (index $wanted 1) $external.url)) -}}
{{- fail (printf "redis.external.mode=%s takes a URL starting with %s or %s" $mode (index $wanted 0) (index $wanted 1)) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z+]+://([^@/?#]*@)?[^@/?#:]" $external.url) -}}
{{- fail "redis.external.url names no host (expected scheme://[user:password@]host[:port][/db]; percent-encode / ? # @ in a password)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (not .Values.redis.enabled) -}}
{{- fail "networkPolicy.enabled protects the bundled Redis: it needs redis.enabled=true" -}}
{{- end -}}
{{- end -}}

{{- define "agentpool.consoleName" -}}
{{- printf "%s-console" (include "agentpool.fullname" .) -}}
{{- end -}}

{{- define "agentpool.consoleSelectorLabels" -}}
app.kubernetes.io/name: agentpool-console
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentpool.consoleLabels" -}}
{{ include "agentpool.commonLabels" . }}
{{ include "agentpool.consoleSelectorLabels" . }}
app.kubernetes.io/component: console
{{- end -}}

{{/* The Secret holding the console's write token (key `token`). */}}
{{- define "agentpool.consoleTokenSecret" -}}
{{- default (printf "%s-token" (include "agentpool.consoleName" .)) .Values.console.writeActions.existingSecret -}}
{{- end -}}

{{/* The Secret holding the Redis URL the console reads (key `url`). */}}
{{- define "agentpool.consoleRedisSecret" -}}
{{- coalesce .Values.console.redisUrlSecret .Values.redis.external.existingSecret .Values.redis.urlSecretName -}}
{{- end -}}
