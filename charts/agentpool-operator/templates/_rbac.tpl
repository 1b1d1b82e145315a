{{/* Rules the operator needs on namespaced resources, wherever it watches pools. */}}
{{- define "agentpool.namespacedRules" -}}
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools/status"]
  verbs: ["get", "patch", "update"]
# Deployments carry an owner reference with blockOwnerDeletion to their pool, which clusters
# with the OwnerReferencesPermissionEnforcement admission plugin only allow with this grant.
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# Each pool's budget that makes evictions of busy workers wait for their runs.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
{{- end -}}
{{- define "agentpool.clusterScopedRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# One node at a time, by name: whether the node of a worker pod is being drained.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get"]
{{- end -}}

{{- define "agentpool.operatorSubject" -}}
- kind: ServiceAccount
  name: {{ include "agentpool.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{/* What the console reads: the pools (status, conditions) and their Events. Nothing else:
it never reads Deployments, pods or Secrets (its Redis URL and token come through the kubelet). */}}
{{- define "agentpool.consoleRules" -}}
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["get", "list", "watch"]
{{- end -}}
