"""The scaling policy as pure functions, shared by the operator and `agentpool simulate`.

`policy` sizes a pool from its queue, `scaledown` picks the pods that go, `simulation` replays
a task trace through both. No Kubernetes client, no Redis, no clock.
"""
