{{/*
`helm upgrade --reuse-values` renders this chart's templates with the values of the release it
upgrades: the earlier chart's values.yaml, not this one's, with the user's values over it. A key
added since is missing there, and a template reading it would fail or render something else.
"agentpool.withDefaults" puts each such key in with its default, and changes no value the
release has (the earlier chart's defaults included).

Which keys are missing: values.yaml's `valuesVersion` says which keys it has. Below, under each
valuesVersion, are the keys values.yaml gained with it, with their defaults as values.yaml has
them. Values without valuesVersion are an earlier chart's (1), which had at least the first
chart's keys (2026-11-23). Only keys of a version above the values' own are filled in: this
chart's own values.yaml (install, upgrade without --reuse-values, --reset-then-reuse-values,
--reuse-values of a release of this chart) gets none, so that a key the user set to null, Helm's
way to remove a default, stays removed. Values without valuesVersion get each listed key they
lack, one the user set to null too: nothing tells the two apart there.

Adding a key to values.yaml (tests/chart/test_chart_upgrade.py checks each step):
1. raise valuesVersion by one, to N, in values.yaml and as the `maximum` of valuesVersion in
   values.schema.json (a release may carry any earlier one);
2. list the key with its default below, under N;
3. record the digest of N's keys in ADDED_KEYS of tests/chart/test_chart_upgrade.py (its
   failing test prints it).
Never add a key under a version a chart may have been installed with: its releases lack the key
and, carrying that version, do not get it filled in. A default changed in values.yaml changes
here too.
*/}}
{{- define "agentpool.addedDefaults" -}}
# Added from the first chart (2026-11-23) to the one that brought valuesVersion.
2:
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
# The console's NetworkPolicy.
3:
  console:
    networkPolicy:
      enabled: true
      from: []
{{- end -}}

{{/*
Replaces .Values, for this template and the ones it includes, by a copy with the keys added after
its valuesVersion filled in. A copy: the maps of .Values may be the chart's own, which Helm
stores with the release. Every template that reads .Values starts with it.
*/}}
{{- define "agentpool.withDefaults" -}}
{{- $have := int (.Values.valuesVersion | default 1) -}}
{{- $values := deepCopy .Values -}}
{{- range $version, $added := include "agentpool.addedDefaults" . | fromYaml -}}
{{- if gt (int $version) $have -}}
{{- include "agentpool.fillMissing" (list $values $added) -}}
{{- end -}}
{{- end -}}
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
