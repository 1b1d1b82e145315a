{{/*
Rules the operator needs on namespaced resources, wherever it watches pools. Every verb is used:
kopf lists and watches what its handlers serve, patches the pools (finalizers, progress) and
posts Events; it never reads one object by name and never updates (PUT). The operator's own
calls (operator/agentpool_operator/kube.py) add the rest: get, create, patch and delete where
named below.
*/}}
{{- define "agentpool.namespacedRules" -}}
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools/status"]
  verbs: ["patch"]
# The objects the operator creates for a pool (Deployment, PodDisruptionBudget, credential
# Secrets) carry an owner reference with blockOwnerDeletion to it, which clusters with the
# OwnerReferencesPermissionEnforcement admission plugin only allow with this grant.
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools/finalizers"]
  verbs: ["update"]
# delete: never called on Deployments, but OwnerReferencesPermissionEnforcement lets only who may
# delete an object set its ownerReferences.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Each pool's budget that makes evictions of busy workers wait for their runs.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
{{- end -}}
{{- define "agentpool.clusterScopedRules" -}}
{{- if .Values.watchNamespaces -}}
# get: is the installed AgentPool CRD current? Serving listed namespaces, kopf neither lists nor
# watches CRDs (the operator turns its scanning off: operator/agentpool_operator/main.py).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["agentpools.agentpool.dev"]
  verbs: ["get"]
{{- else -}}
# get: is the installed AgentPool CRD current? list, watch: kopf follows the CRDs it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
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
{{- /* The console lists pools (the fleet page) and a pool's Events (its page); nothing more. */}}
- apiGroups: ["agentpool.dev"]
  resources: ["agentpools"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
{{- end -}}
