{{/*
The default of every value added to values.yaml since the chart's first release (2026-11-23),
as values.yaml has it (tests/chart/test_chart_upgrade.py holds the two equal, and fails on a
new key of values.yaml missing here).

`helm upgrade --reuse-values` renders this chart's templates with the values of the release it
upgrades: the earlier chart's values.yaml, not this one's, with the user's values over it. A key
added since is missing there, and a template reading it would fail or render something else.
"agentpool.withDefaults" puts each missing key in with its default below and changes no value
the release has, the earlier chart's defaults included. With this chart's own values.yaml no key
is missing and nothing changes.
*/}}
{{- define "agentpool.addedDefaults" -}}
operator:
  perPoolCredentials: true
  extraVolumes: []
  extraVolumeMounts: []
redis:
  createUrlSecret: true
  external:
    mode: standalone
console:
  enabled: false
  image:
    repository: ""
    tag: ""
    pullPolicy: ""
  imagePullSecrets: []
  port: 8080
  service:
    port: 80
  allowedHosts: []
  redisUrlSecret: ""
  writeActions:
    enabled: false
    existingSecret: ""
  resources:
    requests:
      cpu: 20m
      memory: 96Mi
    limits:
      memory: 384Mi
  extraVolumes: []
  extraVolumeMounts: []
  nodeSelector: {}
  tolerations: []
  affinity: {}
  podSecurityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    seccompProfile:
      type: RuntimeDefault
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsNonRoot: true
    runAsUser: 10001
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
monitoring:
  prometheusRule:
    alertLabels: {}
    alerts:
      operatorDown: {enabled: true, for: 10m, severity: warning}
      reconcileErrors: {enabled: true, window: 15m, for: 15m, severity: warning}
      poolNotObserved: {enabled: true, seconds: 600, for: 5m, severity: warning}
      queueUnreachable: {enabled: true, for: 5m, severity: critical}
      queueDataLost: {enabled: true, window: 1h, for: 0m, severity: critical}
      redisFull: {enabled: true, for: 2m, severity: critical}
      crdOutdated: {enabled: true, for: 15m, severity: warning}
      degraded: {enabled: true, for: 15m, severity: warning}
      queueDepthHigh: {enabled: true, threshold: 1000, for: 15m, severity: warning}
      queueDepthCritical: {enabled: true, threshold: 10000, for: 10m, severity: critical}
      failureRateHigh: {enabled: true, threshold: 0.1, window: 10m, for: 10m, severity: warning}
      noReadyWorkers: {enabled: true, for: 5m, severity: critical}
      waitTimeHigh:
        {enabled: true, quantile: 0.95, seconds: 300, window: 10m, for: 15m, severity: warning}
      deadLettersGrowing: {enabled: true, threshold: 0, window: 30m, for: 0m, severity: warning}
      stuckAtMaxReplicas: {enabled: true, window: 15m, for: 15m, severity: warning}
      scheduleMissed: {enabled: true, window: 1h, for: 0m, severity: warning}
{{- end -}}

{{/*
Replaces .Values, for this template and the ones it includes, by a copy with the added defaults
filled in. A copy: the maps of .Values may be the chart's own, which Helm stores with the
release. Every template that reads .Values starts with it.
*/}}
{{- define "agentpool.withDefaults" -}}
{{- $values := deepCopy .Values -}}
{{- include "agentpool.fillMissing" (list $values (include "agentpool.addedDefaults" . | fromYaml)) -}}
{{- $_ := set . "Values" $values -}}
{{- end -}}

{{/* Sets each key of a map (argument 1) missing from another (argument 0), map by map. */}}
{{- define "agentpool.fillMissing" -}}
{{- $into := index . 0 -}}
{{- range $key, $default := index . 1 -}}
{{- $have := index $into $key -}}
{{- if kindIs "invalid" $have -}}
{{- $_ := set $into $key $default -}}
{{- else if and (kindIs "map" $have) (kindIs "map" $default) -}}
{{- include "agentpool.fillMissing" (list $have $default) -}}
{{- end -}}
{{- end -}}
{{- end -}}
