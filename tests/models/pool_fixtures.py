"""AgentPool specs shared by the model, CRD and API-server tests: valid ones, ones near each
rule, and ones that break a rule or the schema."""

from __future__ import annotations

from typing import Any

from agentpool import models
from agentpool.models import CelRule


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "redis": {"urlSecretRef": {"name": "agentpool-redis"}},
        "worker": {"image": "ghcr.io/agentpool/worker:0.1.0", "handler": "pkg.mod:run"},
    }
    spec.update(overrides)
    return spec


def worker(**fields: Any) -> dict[str, Any]:
    return {"image": "img", "handler": "pkg.mod:run", **fields}


# One spec breaking each CEL rule: the operator must refuse what the API server refuses.
CEL_VIOLATIONS: list[tuple[CelRule, dict[str, Any]]] = [
    (models.REDIS_EXACTLY_ONE, minimal_spec(redis={})),
    (
        models.REDIS_EXACTLY_ONE,
        minimal_spec(redis={"url": "redis://r:6379", "urlSecretRef": {"name": "s"}}),
    ),
    (models.REDIS_URL_SCHEME, minimal_spec(redis={"url": "http://r:6379"})),
    (models.REDIS_URL_NO_CREDENTIALS, minimal_spec(redis={"url": "redis://:pw@r:6379"})),
    (models.REDIS_URL_NO_CREDENTIALS, minimal_spec(redis={"url": "redis://r:6379/0?password=pw"})),
    (models.HANDLER_FORMAT, minimal_spec(worker=worker(handler="pkg.mod.run"))),
    (models.HANDLER_FORMAT, minimal_spec(worker=worker(handler="pkg mod:run"))),
    (models.HANDLER_FORMAT, minimal_spec(worker=worker(handler="pkg.mod:"))),
    (models.WORKER_HANDLER_OR_COMMAND, minimal_spec(worker={"image": "img"})),
    (models.WORKER_HANDLER_OR_COMMAND,
     minimal_spec(worker=worker(taskCommand=["node", "/app/agent.js"]))),
    (models.MIN_LE_MAX, minimal_spec(scaling={"minReplicas": 5, "maxReplicas": 4})),
    (models.MIN_LE_MAX, minimal_spec(scaling={"minReplicas": 11})),
    (models.SCALE_UP_STEP_MIN, minimal_spec(scaling={"scaleUpStep": 0})),
    (models.SCALE_DOWN_STEP_MIN, minimal_spec(scaling={"scaleDownStep": -2})),
    (models.MAX_UNAVAILABLE_FORMAT, minimal_spec(recovery={"maxUnavailable": -1})),
    (models.MAX_UNAVAILABLE_FORMAT, minimal_spec(recovery={"maxUnavailable": "half"})),
    (models.RATE_LIMIT_HAS_RATE, minimal_spec(rateLimits=[{"name": "openai"}])),
    (models.RATE_LIMIT_HAS_RATE, minimal_spec(rateLimits=[{"name": "a", "burstSeconds": 2}])),
    (models.RATE_LIMIT_NAME_FORMAT,
     minimal_spec(rateLimits=[{"name": "OpenAI", "requestsPerMinute": 60}])),
    (models.RATE_LIMIT_NAME_FORMAT,
     minimal_spec(rateLimits=[{"name": "a}b", "requestsPerMinute": 60}])),
    (models.RATE_LIMIT_NAME_FORMAT,
     minimal_spec(rateLimits=[{"name": "-x", "requestsPerMinute": 60}])),
    (models.SCHEDULE_NAME_FORMAT, minimal_spec(schedules=[{"name": "Nightly", "cron": "@daily"}])),
    (models.SCHEDULE_CRON_FORMAT, minimal_spec(schedules=[{"name": "a", "cron": "61 * * * *"}])),
    (models.SCHEDULE_CRON_FORMAT, minimal_spec(schedules=[{"name": "a", "cron": "* * * *"}])),
    (models.SCHEDULE_CRON_FORMAT, minimal_spec(schedules=[{"name": "a", "cron": "*/0 * * * *"}])),
    (models.SCHEDULE_CRON_FORMAT, minimal_spec(schedules=[{"name": "a", "cron": "@reboot"}])),
    (models.SCHEDULE_CRON_TIME_ZONE,
     minimal_spec(schedules=[{"name": "a", "cron": "TZ=Europe/Paris 0 * * * *"}])),
    (models.SCHEDULE_CRON_TIME_ZONE,
     minimal_spec(schedules=[{"name": "a", "cron": "CRON_TZ=UTC @daily"}])),
    (models.SCHEDULE_TIME_ZONE_FORMAT,
     minimal_spec(schedules=[{"name": "a", "cron": "@daily", "timeZone": "Europe/../etc"}])),
    (models.SCHEDULE_TENANT_FORMAT,
     minimal_spec(schedules=[{"name": "a", "cron": "@daily", "tenant": "acme\tcorp"}])),
    (models.SCHEDULE_TENANT_FORMAT,
     minimal_spec(schedules=[{"name": "a", "cron": "@daily", "tenant": "acme\u0085"}])),
    (models.TENANT_NAME_FORMAT, minimal_spec(tenants=[{"name": "acme\ncorp", "weight": 2}])),
    (models.TENANT_NAME_FORMAT, minimal_spec(tenants=[{"name": "acme\u009f", "weight": 2}])),
    (models.TENANT_NAMES_UNIQUE, minimal_spec(tenants=[
        {"name": "acme", "weight": 2}, {"name": "acme", "weight": 3}])),
    (models.SCHEDULE_NAMES_UNIQUE, minimal_spec(schedules=[
        {"name": "report", "cron": "@daily"}, {"name": "report", "cron": "@hourly"}])),
    (models.SCHEDULE_TIMEOUT_WITHIN_POOLS, minimal_spec(schedules=[
        {"name": "report", "cron": "@daily", "taskTimeoutSeconds": 601}])),
    (models.SCHEDULE_TIMEOUT_WITHIN_POOLS, minimal_spec(
        worker=worker(taskTimeoutSeconds=60),
        schedules=[{"name": "a", "cron": "@daily", "taskTimeoutSeconds": 60},
                   {"name": "b", "cron": "@daily", "taskTimeoutSeconds": 61}])),
    (models.RATE_LIMIT_NAMES_UNIQUE, minimal_spec(rateLimits=[
        {"name": "openai", "requestsPerMinute": 60},
        {"name": "openai", "tokensPerMinute": 9000},
    ])),
    (models.SUBMITS_TO_UNIQUE, minimal_spec(worker=worker(submitsTo=["coder", "review",
                                                                     "coder"]))),
    (models.VOLUME_ONE_SOURCE, minimal_spec(worker=worker(volumes=[{"name": "data"}]))),
    (models.VOLUME_ONE_SOURCE, minimal_spec(worker=worker(volumes=[
        {"name": "data", "emptyDir": {}, "secret": {"secretName": "s"}}]))),
    (models.VOLUME_ONE_SOURCE, minimal_spec(worker=worker(volumes=[
        {"name": "host", "hostPath": {"path": "/var/run/docker.sock"}}]))),
    (models.VOLUME_NAMES_UNIQUE, minimal_spec(worker=worker(volumes=[
        {"name": "data", "emptyDir": {}}, {"name": "data", "configMap": {"name": "c"}}]))),
    (models.MOUNT_PATHS_UNIQUE, minimal_spec(worker=worker(
        volumes=[{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}],
        volumeMounts=[{"name": "a", "mountPath": "/work"}, {"name": "b", "mountPath": "/work"}],
    ))),
    (models.MOUNT_NOT_ON_SCRATCH, minimal_spec(worker=worker(
        volumes=[{"name": "a", "emptyDir": {}}], volumeMounts=[{"name": "a", "mountPath": "/tmp"}],
    ))),
    (models.MOUNT_NOT_ON_SCRATCH, minimal_spec(worker=worker(
        volumes=[{"name": "a", "emptyDir": {}}], volumeMounts=[{"name": "a", "mountPath": "/tmp/"}],
    ))),
    (models.MOUNT_SUB_PATH_RELATIVE, minimal_spec(worker=worker(
        volumes=[{"name": "a", "emptyDir": {}}],
        volumeMounts=[{"name": "a", "mountPath": "/work", "subPath": "../etc"}],
    ))),
    (models.MOUNT_SUB_PATH_RELATIVE, minimal_spec(worker=worker(
        volumes=[{"name": "a", "emptyDir": {}}],
        volumeMounts=[{"name": "a", "mountPath": "/work", "subPath": "/etc"}],
    ))),
    (models.MOUNTS_NAME_VOLUMES, minimal_spec(worker=worker(
        volumeMounts=[{"name": "data", "mountPath": "/data"}]))),
    (models.MOUNTS_NAME_VOLUMES, minimal_spec(worker=worker(
        volumes=[{"name": "cache", "emptyDir": {}}],
        volumeMounts=[{"name": "data", "mountPath": "/data"}]))),
    (models.INIT_MOUNTS_NAME_VOLUMES, minimal_spec(worker=worker(initContainers=[
        {"name": "fetch", "image": "curl", "volumeMounts": [
            {"name": "models", "mountPath": "/models"}]}]))),
    (models.ENV_ONE_VALUE, minimal_spec(worker=worker(env=[
        {"name": "KEY", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]))),
    (models.ENV_ONE_VALUE, minimal_spec(worker=worker(initContainers=[
        {"name": "fetch", "image": "a", "env": [
            {"name": "KEY", "value": "x", "valueFrom": {"fieldRef": {}}}]}]))),
    (models.INIT_CONTAINER_NAMES, minimal_spec(worker=worker(initContainers=[
        {"name": "fetch", "image": "a"}, {"name": "fetch", "image": "b"}]))),
    (models.INIT_CONTAINER_NAMES, minimal_spec(worker=worker(initContainers=[
        {"name": "worker", "image": "a"}]))),
    (models.MOUNT_NOT_ON_SCRATCH, minimal_spec(worker=worker(
        volumes=[{"name": "a", "emptyDir": {}}],
        initContainers=[{"name": "i", "image": "a", "volumeMounts": [
            {"name": "a", "mountPath": "/tmp"}]}]))),
]

NEAR_THE_RULES: list[dict[str, Any]] = [
    minimal_spec(redis={"url": "redis://redis.default:6379/0"}),
    minimal_spec(redis={"url": "rediss://redis.example:6380"}),
    minimal_spec(redis={"url": "redis+sentinel://s1:26379,s2:26379/agentpool/0"}),
    minimal_spec(redis={"url": "rediss+sentinel://s1/agentpool"}),
    minimal_spec(redis={"url": "redis+cluster://n1:6379,n2:6379,n3:6379/"}),
    minimal_spec(redis={"url": "rediss+cluster://n1"}),
    minimal_spec(worker=worker(handler="agentpool_worker.builtin:simulated_agent")),
    minimal_spec(worker=worker(handler="handlers:run")),
    minimal_spec(worker={"image": "img", "taskCommand": ["node", "/app/agent.js"]}),
    minimal_spec(worker={"image": "img", "taskCommand": ["claude", "-p", "--output-format",
                                                         "json"]}),
    minimal_spec(scaling={"minReplicas": 0, "maxReplicas": 1}),
    minimal_spec(scaling={"minReplicas": 3, "maxReplicas": 3, "scaleUpStep": 1}),
    minimal_spec(recovery={"maxUnavailable": 0}),
    minimal_spec(recovery={"maxUnavailable": "100%"}),
    minimal_spec(rateLimits=[{"name": "openai", "requestsPerMinute": 1}]),
    minimal_spec(rateLimits=[{"name": "a", "tokensPerMinute": 90000, "burstSeconds": 0.01}]),
    minimal_spec(rateLimits=[
        {"name": "openai.gpt-4o_mini", "requestsPerMinute": 500, "tokensPerMinute": 30000},
        {"name": "anthropic", "requestsPerMinute": 50, "burstSeconds": 60},
    ]),
    minimal_spec(rateLimits=[{"name": "e2b", "maxConcurrent": 1}]),
    minimal_spec(rateLimits=[{"name": "llm", "requestsPerMinute": 60, "maxConcurrent": 20}]),
    minimal_spec(rateLimits=[]),
    minimal_spec(schedules=[]),
    minimal_spec(worker=worker(volumes=[], volumeMounts=[], podLabels={}, podAnnotations={})),
    minimal_spec(worker=worker(
        volumes=[
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            {"name": "prompts", "configMap": {"name": "prompts", "defaultMode": 0o444}},
            {"name": "git-key", "secret": {"secretName": "deploy-key"}},
            {"name": "models", "persistentVolumeClaim": {"claimName": "model-cache",
                                                         "readOnly": True}},
            {"name": "pod", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"name": "both", "projected": {"sources": [{"secret": {"name": "s"}}]}},
            {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
            {"name": "x" * 63, "csi": {"driver": "secrets-store.csi.k8s.io"}},
        ],
        volumeMounts=[
            {"name": "prompts", "mountPath": "/etc/prompts", "readOnly": True},
            {"name": "git-key", "mountPath": "/home/agent/.ssh/id_ed25519",
             "subPath": "id_ed25519"},
            {"name": "models", "mountPath": "/models"},
            {"name": "tmp", "mountPath": "/home/agent", "subPath": "home"},
            {"name": "pod", "mountPath": "/tmp/pod"},
        ],
        initContainers=[
            {"name": "fetch-model", "image": "curlimages/curl:8",
             "args": ["-o", "/models/m.bin", "https://example.com/m.bin"],
             "volumeMounts": [{"name": "models", "mountPath": "/models"}]},
            {"name": "llm-gateway", "image": "litellm:1", "restartPolicy": "Always",
             "env": [{"name": "PORT", "value": "4000"}],
             "resources": {"limits": {"memory": "256Mi"}},
             "securityContext": {"runAsUser": 1000, "runAsGroup": 1000,
                                 "readOnlyRootFilesystem": False}},
        ],
        podLabels={"team": "agents", "example.com/cost-centre": "ai-1", "empty": ""},
        podAnnotations={"sidecar.istio.io/inject": "false",
                        "cluster-autoscaler.kubernetes.io/safe-to-evict": "true"},
    )),
    minimal_spec(schedules=[
        {"name": "nightly-report", "cron": "30 2 * * *", "timeZone": "Europe/Paris",
         "payload": {"prompt": "summarise the day"}, "priority": 9},
        {"name": "weekdays", "cron": "0,30 9-17/2 1-31 JAN-dec Mon-FRI", "timeZone": "UTC"},
        {"name": "every.quarter_hour", "cron": "*/15 * * * *", "payload": "a prompt"},
        {"name": "h", "cron": "@hourly", "timeZone": "America/Argentina/Buenos_Aires",
         "payload": [1, 2], "suspend": True, "startingDeadlineSeconds": 86400},
        {"name": "sunday", "cron": "0 0 * * 7", "timeZone": "Etc/GMT+5"},
        {"name": "ranges", "cron": "5-5,0-59/5 22-23,0-2 01-31 jan-12,DEC sat-7,sun-sat"},
        {"name": "wraps", "cron": "50-10 22-2 31-1 Dec-FEB/2 fri-mon", "tenant": "\u202eacme "},
        {"name": "forbid", "cron": "@daily", "concurrencyPolicy": "Forbid",
         "expiresSeconds": 3600},
        {"name": "replace", "cron": "@daily", "concurrencyPolicy": "Replace",
         "taskTimeoutSeconds": 600},
        {"name": "for-acme", "cron": "@daily", "tenant": "Acme Corp / équipe 7 \u00a0✓"},
        {"name": "longest-tenant", "cron": "@daily", "tenant": "t" * 128},
    ]),
    minimal_spec(tenants=[{"name": "Acme Corp / équipe 7 \u00a0✓", "weight": 100},
                          {"name": "t" * 128, "weight": 1}, {"name": "acme ", "weight": 2},
                          {"name": "acme", "weight": 3}, {"name": "\u3000acme\u200b"}]),
    minimal_spec(tenants=[{"name": f"tenant-{n}", "weight": 1 + n % 100} for n in range(64)]),
    minimal_spec(tenants=[]),
    minimal_spec(tenants=[{"name": "acme"}, {"name": "big", "maxRunning": 1000},
                          {"name": "one", "weight": 5, "maxRunning": 1}],
                 tenantMaxRunning=1000),
    minimal_spec(tenantMaxRunning=1),
    minimal_spec(worker=worker(
        env=[{"name": "my.var-1", "value": "x"}, {"name": "1_LEADING_DIGIT"},
             {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
             {"name": "EMPTY_BESIDE", "value": "", "valueFrom": {"fieldRef": {}}}],
        serviceAccountName="agents.v2", priorityClassName="agents-high",
        runtimeClassName="gvisor", imagePullSecrets=[{"name": "registry.example-1"}],
    )),
]
"""Specs just inside a rule: both the models and the API server accept them."""

VALID_SPECS: list[dict[str, Any]] = [
    {
        "redis": {"url": "redis://redis:6379/0"},
        "worker": {"image": "img:1", "handler": "pkg.mod:run"},
    },
    {
        "queue": "jobs",
        "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
        "worker": {
            "image": "img:1",
            "handler": "pkg.mod:run",
            "concurrency": 16,
            "resources": {"limits": {"cpu": 2, "memory": "1Gi"}, "requests": {"cpu": "250m"}},
            "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {}}}],
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "nodeSelector": {"pool": "agents"},
            "submitsTo": ["coder", "review.v2"],
        },
        "scaling": {"minReplicas": 0, "maxReplicas": 50, "pollSeconds": 0.5},
        "recovery": {"maxUnavailable": 2},
        "paused": True,
        "rateLimits": [{"name": "openai", "requestsPerMinute": 600, "tokensPerMinute": 90000}],
    },
]

INVALID_SPECS: list[dict[str, Any]] = [
    {"redis": {"url": "redis://r"}},
    minimal_spec(tenants=[{"name": "acme", "weight": 0}]),
    minimal_spec(tenants=[{"name": "acme", "weight": 101}]),
    minimal_spec(tenants=[{"name": "acme", "maxRunning": 0}]),
    minimal_spec(tenants=[{"name": "acme", "maxRunning": 1001}]),
    minimal_spec(tenantMaxRunning=0),
    minimal_spec(tenantMaxRunning=1001),
    minimal_spec(tenants=[{"name": "", "weight": 2}]),
    minimal_spec(tenants=[{"name": "t" * 129, "weight": 2}]),
    minimal_spec(tenants=[{"name": f"t{n}", "weight": 2} for n in range(65)]),
    minimal_spec(rateLimits=[{"name": "sandboxes", "maxConcurrent": 0}]),
    {"redis": {"url": "redis://r"}, "worker": {"image": "", "handler": "m:f"}},
    {"redis": {"url": "redis://r"}, "worker": {"image": "i", "handler": "m:f", "concurrency": 0}},
    {"redis": {"url": "redis://r"}, "worker": {"image": "i", "handler": "m:f"}, "queue": "/x"},
    {
        "redis": {"url": "redis://r"},
        "worker": {"image": "i", "handler": "m:f", "imagePullPolicy": "Sometimes"},
    },
    {
        "redis": {"url": "redis://r"},
        "worker": {"image": "i", "handler": "m:f"},
        "scaling": {"maxReplicas": 0},
    },
    {
        "redis": {"url": "redis://r"},
        "worker": {"image": "i", "handler": "m:f", "resources": {"limits": {"cpu": 0.5}}},
    },
    {
        "redis": {"url": "redis://r", "durability": "sometimes"},
        "worker": {"image": "i", "handler": "m:f"},
    },
    {
        "redis": {"url": "redis://r"},
        "worker": {"image": "i", "handler": "m:f"},
        "scaling": {"keepDrainedSeconds": -1},
    },
    {
        "redis": {"url": "redis://r"},
        "worker": {"image": "i", "handler": "m:f"},
        "schedules": [{"name": "a", "cron": "@daily", "concurrencyPolicy": "Sometimes"}],
    },
    {
        "redis": {"url": "redis://r"},
        "worker": {"image": "i", "handler": "m:f", "initContainers": [
            {"name": "root", "image": "a", "securityContext": {"runAsUser": 0}}]},
    },
    {"redis": {"url": "redis://r"}, "worker": {"image": "i", "handler": "m:f",
                                               "submitsTo": ["a:{b}"]}},
    {"redis": {"url": "redis://r"}, "worker": {"image": "i", "handler": "m:f",
                                               "submitsTo": ["q"] * 33}},
    minimal_spec(worker=worker(env=[{"name": "A=B", "value": "1"}])),
    minimal_spec(worker=worker(env=[{"name": "TAB\tNAME", "value": "1"}])),
    minimal_spec(worker=worker(initContainers=[
        {"name": "fetch", "image": "a", "env": [{"name": "X=Y"}]}])),
    minimal_spec(worker=worker(serviceAccountName="Agents_SA")),
    minimal_spec(worker=worker(imagePullSecrets=[{"name": "Bad Name"}])),
    minimal_spec(worker=worker(priorityClassName="High")),
    minimal_spec(worker=worker(runtimeClassName="gVisor")),
]


def pool(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "agentpool.dev/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": "p"},
        "spec": spec,
    }
