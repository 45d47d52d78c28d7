#!/usr/bin/env python3
"""Two small thread-pool runners of a bench workload (tasks.json from bench/workloads.lua), for
reference beside coral: standard library only.

  pyrun.py dag    -j W tasks.json   true DAG: a task is submitted the moment its dependencies end
  pyrun.py phased -j W tasks.json   a barrier between phases, like the tool coral replaces

Each task's argv runs with subprocess (no shell); a non-zero exit fails the run (exit 1).
"""
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait


def run(argv):
    return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode


def phased(tasks, workers):
    by_phase = {}
    for t in tasks:
        by_phase.setdefault(t["phase"], []).append(t)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for p in sorted(by_phase):
            futures = [pool.submit(run, t["argv"]) for t in by_phase[p]]
            wait(futures)
            if any(f.result() != 0 for f in futures):
                return 1
    return 0


def dag(tasks, workers):
    by_id = {t["id"]: t for t in tasks}
    missing = {t["id"]: len(t["deps"]) for t in tasks}
    dependents = {t["id"]: [] for t in tasks}
    for t in tasks:
        for d in t["deps"]:
            dependents[d].append(t["id"])
    lock = threading.Lock()
    all_done = threading.Event()
    state = {"left": len(tasks), "failed": False}
    pool = ThreadPoolExecutor(max_workers=workers)

    def submit(tid):
        pool.submit(run, by_id[tid]["argv"]).add_done_callback(lambda f, tid=tid: finished(tid, f))

    def finished(tid, future):
        ready = []
        with lock:
            state["left"] -= 1
            if future.result() != 0:
                state["failed"] = True
            for d in dependents[tid]:
                missing[d] -= 1
                if missing[d] == 0:
                    ready.append(d)
            if state["left"] == 0 or state["failed"]:
                all_done.set()
        for d in ready:
            submit(d)

    roots = [t["id"] for t in tasks if not t["deps"]]
    for tid in roots:
        submit(tid)
    all_done.wait()
    pool.shutdown(wait=True)
    return 1 if state["failed"] else 0


def main():
    mode, workers, path = sys.argv[1], int(sys.argv[3]), sys.argv[4]
    with open(path) as f:
        tasks = json.load(f)["tasks"]
    sys.exit((dag if mode == "dag" else phased)(tasks, workers))


if __name__ == "__main__":
    main()
