"""A Python agent that prints its messages with plain print(), never flushing: on a pipe its
output is block-buffered unless PYTHONUNBUFFERED is set. Its first attempt checkpoints and
hangs until its timeout stops it; the next one returns what it resumed from."""

import json
import os
import sys
import time

json.load(sys.stdin)
path = os.environ.get("AGENTPOOL_CHECKPOINT_FILE")
if path is None:
    print(json.dumps({"progress": 0.5, "message": "half way"}))
    print(json.dumps({"checkpoint": {"step": 5}}))
    time.sleep(60)
else:
    with open(path) as file:
        resumed = json.load(file)
    print(json.dumps({"result": {"resumed": resumed,
                                 "unbuffered": os.environ.get("PYTHONUNBUFFERED")}}))
