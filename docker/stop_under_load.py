#!/usr/bin/env python3
"""Runs a stop command while clients post predictions, and checks that nothing accepted was cut.

    stop_under_load.py URL BODY_FILE -- COMMAND...

Eight clients post BODY_FILE to URL in a loop, one connection per request. Once 50 answers have come, COMMAND
runs (e.g. `podman stop -t 30 NAME`, which sends SIGTERM). A request that reached the server after its listeners
closed is refused or reset at the connection; that is allowed. What fails the check: any status but 200, an
answer cut short, an answer that is not the expected label, or fewer than 50 answers. Exits with COMMAND's status
when everything else passed.
"""
import http.client
import json
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

url, body_file, sep, *command = sys.argv[1:]
assert sep == "--" and command, __doc__
parts = urlsplit(url)
body = open(body_file, "rb").read()
lock = threading.Lock()
counts = {"answered": 0, "refused": 0}
problems = []
done = threading.Event()


def client():
    while not done.is_set():
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            connection.request("POST", parts.path, body, {"content-type": "application/json"})
        except OSError:
            # Refused, or reset before the server took the request: not accepted.
            with lock:
                counts["refused"] += 1
            time.sleep(0.01)
            continue
        try:
            response = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            with lock:
                counts["refused"] += 1
            continue
        try:
            data = response.read()
            label = json.loads(data)["predictions"][0]["label"]
            ok = response.status == 200 and label == "hello"
            problem = None if ok else f"{response.status}: {data[:200]!r}"
        except (http.client.IncompleteRead, OSError, ValueError, KeyError) as error:
            problem = f"an answer cut short or unreadable: {error!r}"
        finally:
            connection.close()
        with lock:
            if problem:
                problems.append(problem)
            else:
                counts["answered"] += 1


threads = [threading.Thread(target=client) for _ in range(8)]
for thread in threads:
    thread.start()
deadline = time.monotonic() + 60
while counts["answered"] < 50 and time.monotonic() < deadline:
    time.sleep(0.01)
before = counts["answered"]
stopped = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
time.sleep(0.5)
done.set()
for thread in threads:
    thread.join()
print(f"answered {counts['answered']} ({before} before the stop), refused {counts['refused']}, "
      f"problems {len(problems)}; stop command exited {stopped}")
for problem in problems[:5]:
    print(" ", problem, file=sys.stderr)
sys.exit(1 if problems or before < 50 else stopped)
