"""An agent program for the command handler's tests: what it does is the payload's "mode"."""

import json
import os
import signal
import subprocess
import sys
import time


def say(message: object) -> None:
    print(json.dumps(message), flush=True)


def main() -> None:
    payload = json.load(sys.stdin)
    mode = payload.get("mode")
    attempt = int(os.environ["AGENTPOOL_TASK_ATTEMPT"])
    if mode == "result":
        say({"result": {"payload": payload, "attempt": attempt,
                        "task": os.environ["AGENTPOOL_TASK_ID"],
                        "queue": os.environ["AGENTPOOL_QUEUE"]}})
    elif mode == "env":
        directory = os.environ["AGENTPOOL_TASK_DIR"]
        found = os.listdir(directory)
        with open(os.path.join(directory, "notes.txt"), "w") as file:
            file.write("scratch")
        say({"result": {"agentpool": sorted(k for k in os.environ
                                            if k.upper().startswith("AGENTPOOL_")),
                        "marker": os.environ.get("AGENT_MARKER"), "dir": directory,
                        "found": found, "tmpdir": os.environ["TMPDIR"]}})
    elif mode == "before":
        path = os.environ.get("AGENTPOOL_RESULTS_BEFORE_FILE")
        if path is None:
            say({"result": {"step": payload["step"], "before": None}})
        else:
            with open(path) as file:
                say({"result": {"step": payload["step"], "before": json.load(file)}})
    elif mode == "plan":
        for step in (1, 2):
            say({"submit": {"mode": "before", "step": step}, "name": f"step-{step}"})
        say({"submit": {"mode": "before", "step": "summary"}, "name": "summary",
             "after": ["step-1", "step-2"], "priority": 5})
        if attempt < payload.get("fail_attempts", 0) + 1:
            print("lost after submitting its steps", file=sys.stderr)
            sys.exit(1)
        say({"result": "planned"})
    elif mode == "gated-plan":
        open(payload["started"], "w").close()
        while not os.path.exists(payload["gate"]):
            time.sleep(0.01)
        for step in range(3):
            say({"submit": {"step": step}, "name": f"step-{step}"})
        say({"result": "planned"})
        open(payload["exited"], "w").close()
    elif mode == "big-plan":
        pad = "p" * payload["pad"]
        out = sys.stdout
        for step in range(payload["steps"]):
            out.write(json.dumps({"submit": {"step": step, "pad": pad}}) + "\n")
        out.write(json.dumps({"result": "planned"}) + "\n")
        out.flush()
    elif mode == "submit":
        for message in payload.get("messages", [payload.get("message")]):
            say(message)
        say({"result": "submitted"})
    elif mode == "tenant":
        tenant = os.environ.get("AGENTPOOL_TASK_TENANT")
        say({"submit": {"step": "mine"}, "name": "mine"})
        say({"submit": {"step": "theirs"}, "name": "theirs", "tenant": "globex"})
        say({"result": tenant})
    elif mode == "deadline":
        say({"result": {"left": float(os.environ["AGENTPOOL_TASK_DEADLINE"]) - time.time()}})
    elif mode == "home":
        home = os.environ["HOME"]
        with open(os.path.join(home, ".agentrc"), "w") as file:
            file.write("written where tools keep their state")
        say({"result": {"home": home, "dir": os.environ["AGENTPOOL_TASK_DIR"]}})
    elif mode == "long-output":
        for number in range(3000):
            print(f"{number:04d} " + "x" * 495)
    elif mode == "text":
        print("line one\nline two")
    elif mode == "events":
        say({"event": "token", "data": {"text": "Hel"}})
        say({"progress": 0.5, "message": "half way"})
        print("plain output between messages")
        say({"event": "token", "data": {"text": "lo"}})
        say({"result": "done"})
    elif mode == "checkpoint":
        path = os.environ.get("AGENTPOOL_CHECKPOINT_FILE")
        if path is None:
            say({"checkpoint": {"step": 3}})
            print("first attempt gives up", file=sys.stderr)
            sys.exit(1)
        with open(path) as file:
            say({"result": {"resumed": json.load(file), "attempt": attempt, "file": path}})
    elif mode == "checkpoint-on-term":
        path = os.environ.get("AGENTPOOL_CHECKPOINT_FILE")
        if path is not None:
            with open(path) as file:
                say({"result": {"resumed": json.load(file), "attempt": attempt}})
            return

        def save_and_leave(signum: int, frame: object) -> None:
            say({"submit": {"step": "too late"}, "name": "late"})  # the run is over
            say({"checkpoint": {"step": 7}})
            say({"result": "too late"})
            sys.exit(0)

        signal.signal(signal.SIGTERM, save_and_leave)
        say({"progress": 0.1})
        time.sleep(60)
    elif mode == "fail":
        print("warming up", file=sys.stderr)
        print(f"boom on attempt {attempt}", file=sys.stderr)
        sys.exit(3)
    elif mode == "fail_loudly":
        for n in range(20):
            print(f"line {n} " + "x" * 500, file=sys.stderr)
        print("the last line says why", file=sys.stderr)
        sys.exit(3)
    elif mode == "permanent":
        say({"error": "the prompt is empty", "retry": False})
    elif mode == "retry-after":
        if attempt == 1:
            say(payload["message"])
            sys.exit(payload.get("status", 1))
        say({"result": {"attempt": attempt}})
    elif mode == "bad-message":
        say({"event": "page", "data": "x" * 70_000})
        time.sleep(60)
    elif mode == "json-logs":
        say({"event": "fetching repo", "level": "info"})  # structlog
        say({"level": 30, "msg": "retrying", "error": "ECONNRESET"})  # pino
        say({"progress": "half"})
        say({"progress": 50, "message": "percent"})
        say({"event": "token", "data": 1, "extra": True})
        if payload.get("result"):
            say({"result": 42})
    elif mode == "huge-result":  # one message line of 9 MiB
        say({"result": "x" * (9 * 1024 * 1024)})
    elif mode == "huge-error":
        say({"error": "x" * (9 * 1024 * 1024), "retry": False})
    elif mode == "huge-named-submit":  # the name first, as jq or a JS object writes it
        say({"name": "step", "submit": {"text": "x" * (9 * 1024 * 1024)}})
        say({"result": "planned"})
    elif mode == "progress-bar":
        for step in range(700_000):  # 9 MiB without a newline
            sys.stdout.write(f"\rstep {step:07d}")
        sys.stdout.write("\n")
        if payload.get("result"):
            say({"result": "done"})
    elif mode == "raw":  # these bytes, then the exit: no flush of anything buffered after
        os.write(1, payload["raw"].encode())
        os._exit(payload.get("status", 0))
    elif mode == "parent-environ":
        try:
            with open(f"/proc/{os.getppid()}/environ", "rb") as file:
                seen = file.read()
        except OSError as exc:
            say({"result": {"read": False, "error": type(exc).__name__}})
        else:
            say({"result": {"read": True, "redis_url": b"AGENTPOOL_REDIS_URL=" in seen}})
    elif mode in ("sleep", "ignore-term"):
        if mode == "ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(payload["pids"], "w") as file:
            file.write(f"{os.getpid()} {child.pid}")
        time.sleep(60)
    elif mode == "escape":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)
        say({"result": {"escaped": child.pid}})
    elif mode == "escape_chatty":
        # writes on once the worker stops reading (a closed pipe does not end it), so that
        # the test finds it alive whenever it looks
        chatter = ("import os, time\nwhile True:\n    try:\n        os.write(1, b'tick\\n')\n"
                   "    except OSError:\n        pass\n    time.sleep(0.3)\n")
        child = subprocess.Popen([sys.executable, "-c", chatter], start_new_session=True)
        say({"result": {"escaped": child.pid}})
    elif mode == "leftover":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        say({"result": {"left_behind": child.pid}})


if __name__ == "__main__":
    main()
