"""Where a Spark job's CPU goes: one ``spark-submit`` run, its event log and its processes' CPU.

    python -m benchmarks.spark_profile spark_jobs/dedup.py --input <dir> --output <dir> \\
        [--cores 2] [--driver-memory 4g] [--conf KEY=VALUE ...] [--json out.json]

The job runs as the benchmarks run it (``spark-submit --master local[N]``), with Spark's
event log on (a temporary folder) and its process tree sampled every 0.1 s
(``psutil``): user+system CPU seconds of the JVM (driver and local executors), the Python
driver and the Python workers (the daemon, ``pyspark.daemon`` or jinglian's ``spark_jobs.worker_daemon``, and the workers it forks), each sample
timestamped, so the CPU of each category is attributed to the Spark step whose jobs were
running (``job_step`` descriptions ``<stage>: <step>``) or to the time between jobs
(session start, planning on the driver, shut-down).  From the event log: per step the
number of jobs, stages and tasks, the tasks' JVM CPU (``executorCpuTime``, which excludes
the Python workers), shuffle bytes written, and the time spent deserialising tasks.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.dedup.__main__ import is_python_worker

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CATEGORIES = ("jvm", "python_driver", "python_workers")


class CpuSampler(threading.Thread):
    """Timestamped cumulative CPU seconds per process category of a process tree."""

    def __init__(self, root_pid: int, job_file: str, interval_s: float = 0.1):
        super().__init__(daemon=True)
        self.root_pid, self.job_file, self.interval_s = root_pid, job_file, interval_s
        self.last: dict[int, tuple[str, float]] = {}  # pid -> (category, cpu seconds) last seen
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.thread_names: dict[int, str] = {}
        self.thread_cpu: dict[int, float] = {}
        self.done = threading.Event()

    def category(self, proc: psutil.Process) -> str | None:
        cmd = " ".join(proc.cmdline())
        if "java" in proc.name():
            return "jvm"
        if is_python_worker(cmd):
            return "python_workers"
        if self.job_file in cmd:
            return "python_driver"
        return None

    def run(self) -> None:
        while not self.done.is_set():
            try:
                root = psutil.Process(self.root_pid)
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    kind = self.category(p)  # not cached: spark-submit's shell execs the JVM under the same pid
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                if kind is not None:
                    self.last[p.pid] = (kind, t.user + t.system)
            self.sample_threads([p for p in procs if p.pid in self.last and self.last[p.pid][0] == "jvm"])
            totals = dict.fromkeys(CATEGORIES, 0.0)
            for kind, cpu in self.last.values():
                totals[kind] += cpu
            self.samples.append((time.time(), totals))
            time.sleep(self.interval_s)

    def sample_threads(self, jvms: list[psutil.Process]) -> None:
        """Last-seen CPU seconds of each JVM thread, by thread id (named from /proc)."""
        for proc in jvms:
            try:
                for t in proc.threads():
                    if t.id not in self.thread_names:
                        try:
                            self.thread_names[t.id] = Path(f"/proc/{proc.pid}/task/{t.id}/comm").read_text().strip()
                        except OSError:
                            continue
                    self.thread_cpu[t.id] = t.user_time + t.system_time
            except psutil.Error:
                continue

    def jvm_threads(self) -> dict[str, float]:
        """JVM CPU seconds by thread kind (the name less its number): compiler, GC, task threads..."""
        out: dict[str, float] = collections.Counter()
        for tid, cpu in self.thread_cpu.items():
            name = self.thread_names[tid].rstrip("0123456789#- ").strip() or "?"
            out[name] += cpu
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.05}

    def at(self, when: float) -> dict[str, float]:
        """Cumulative CPU per category at the last sample not after ``when``."""
        best = dict.fromkeys(CATEGORIES, 0.0)
        for ts, totals in self.samples:
            if ts > when:
                break
            best = totals
        return best


def read_event_log(folder: str) -> dict[str, Any]:
    """Jobs (description, start, end, stages) and per-stage task metrics from an event log."""
    files = sorted(f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True) if os.path.isfile(f))  # rolling logs: a folder
    jobs: dict[int, dict[str, Any]] = {}
    stage_job: dict[int, int] = {}
    stage_tasks: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    skipped_stages: set[int] = set()
    for path in files:
        for line in open(path, encoding="utf-8"):
            event = json.loads(line)
            kind = event["Event"]
            if kind == "SparkListenerJobStart":
                props = event.get("Properties") or {}
                infos = sorted(event["Stage Infos"], key=lambda s: s["Stage ID"])
                job = {"description": props.get("spark.job.description") or "(none)", "start": event["Submission Time"] / 1000,
                       "stages": [s["Stage ID"] for s in infos], "call_site": infos[-1]["Stage Name"] if infos else ""}
                jobs[event["Job ID"]] = job
                for s in job["stages"]:
                    stage_job.setdefault(s, event["Job ID"])
            elif kind == "SparkListenerJobEnd":
                jobs[event["Job ID"]]["end"] = event["Completion Time"] / 1000
            elif kind == "SparkListenerTaskEnd":
                m = event.get("Task Metrics") or {}
                c = stage_tasks[event["Stage ID"]]
                c["tasks"] += 1
                c["cpu_s"] += m.get("Executor CPU Time", 0) / 1e9
                c["run_s"] += m.get("Executor Run Time", 0) / 1000
                c["deserialize_cpu_s"] += m.get("Executor Deserialize CPU Time", 0) / 1e9
                c["gc_s"] += m.get("JVM GC Time", 0) / 1000
                c["shuffle_write_bytes"] += (m.get("Shuffle Write Metrics") or {}).get("Shuffle Bytes Written", 0)
                c["result_bytes"] += m.get("Result Size", 0)
    return {"jobs": jobs, "stage_job": stage_job, "stage_tasks": stage_tasks, "skipped": skipped_stages}


def profile(job: str, job_args: list[str], cores: int, driver_memory: str, conf: list[str]) -> dict[str, Any]:
    events = tempfile.mkdtemp(prefix="spark-events-")
    cmd = [str(VENV_BIN / "spark-submit"), "--master", f"local[{cores}]", "--driver-memory", driver_memory,
           "--conf", "spark.ui.enabled=false", "--conf", "spark.eventLog.enabled=true",
           "--conf", "spark.eventLog.compress=false", "--conf", f"spark.eventLog.dir=file://{events}"]
    for c in conf:
        cmd += ["--conf", c]
    cmd += [job, *job_args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    started, rusage_before = time.time(), os.times()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = CpuSampler(proc.pid, os.path.basename(job))
    sampler.start()
    output, _ = proc.communicate()
    wall_s = time.time() - started
    sampler.done.set()
    sampler.join()
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"spark-submit failed ({proc.returncode}):\n{output[-4000:]}")
    log = read_event_log(events)
    if not os.environ.get("KEEP_EVENTS"):
        shutil.rmtree(events, ignore_errors=True)
    steps: dict[str, dict[str, Any]] = collections.OrderedDict()
    per_job = []
    for job_id in sorted(log["jobs"]):
        j = log["jobs"][job_id]
        a, b = sampler.at(j["start"]), sampler.at(j.get("end", j["start"]))
        per_job.append({"job": job_id, "step": j["description"], "call_site": j["call_site"], "wall_s": round(j.get("end", j["start"]) - j["start"], 2),
                        "cpu_s": {k: round(b[k] - a[k], 2) for k in CATEGORIES},
                        "tasks": sum(log["stage_tasks"][st]["tasks"] for st in j["stages"] if st in log["stage_tasks"] and log["stage_job"].get(st) == job_id)})
        s = steps.setdefault(j["description"], {"jobs": 0, "stages": 0, "tasks": 0, "task_jvm_cpu_s": 0.0, "task_run_s": 0.0,
                                                "deserialize_cpu_s": 0.0, "gc_s": 0.0, "shuffle_write_mb": 0.0, "wall_s": 0.0,
                                                "cpu_s": dict.fromkeys(CATEGORIES, 0.0)})
        s["jobs"] += 1
        s["wall_s"] += j.get("end", j["start"]) - j["start"]
        a, b = sampler.at(j["start"]), sampler.at(j.get("end", j["start"]))
        for k in CATEGORIES:
            s["cpu_s"][k] += b[k] - a[k]
        for stage in j["stages"]:
            t = log["stage_tasks"].get(stage)
            if not t or log["stage_job"].get(stage) != job_id:
                continue
            s["stages"] += 1
            s["tasks"] += t["tasks"]
            s["task_jvm_cpu_s"] += t["cpu_s"]
            s["task_run_s"] += t["run_s"]
            s["deserialize_cpu_s"] += t["deserialize_cpu_s"]
            s["gc_s"] += t["gc_s"]
            s["shuffle_write_mb"] += t["shuffle_write_bytes"] / 2**20
    total = sampler.samples[-1][1] if sampler.samples else dict.fromkeys(CATEGORIES, 0.0)
    spans = sorted((j["start"], j.get("end", j["start"])) for j in log["jobs"].values())
    first, last = (spans[0][0], max(e for _, e in spans)) if spans else (started, started)
    before_first, at_last = sampler.at(first), sampler.at(last)
    phases = {"before_first_job": {k: before_first[k] for k in CATEGORIES},
              "after_last_job": {k: total[k] - at_last[k] for k in CATEGORIES}}
    phases["between_jobs"] = {k: total[k] - phases["before_first_job"][k] - phases["after_last_job"][k] for k in CATEGORIES}
    walls = {"before_first_job": first - started, "after_last_job": started + wall_s - last, "in_jobs": 0.0}
    union_end = first
    for s0, e0 in spans:  # wall covered by jobs (jobs of one driver thread do not overlap, but be safe)
        walls["in_jobs"] += max(0.0, e0 - max(s0, union_end))
        union_end = max(union_end, e0)
    walls["between_jobs"] = last - first - walls["in_jobs"]
    in_jobs = {k: sum(s["cpu_s"][k] for s in steps.values()) for k in CATEGORIES}
    for s in steps.values():
        s["wall_s"] = round(s["wall_s"], 2)
        s["cpu_s"] = {k: round(v, 2) for k, v in s["cpu_s"].items()}
        for k in ("task_jvm_cpu_s", "task_run_s", "deserialize_cpu_s", "gc_s", "shuffle_write_mb"):
            s[k] = round(s[k], 2)
    return {
        "command": " ".join(cmd), "wall_s": round(wall_s, 2),
        "cpu_s": {k: round(v, 2) for k, v in total.items()}, "cpu_s_total": round(sum(total.values()), 2),
        "cpu_s_children_rusage": round(after.children_user + after.children_system - rusage_before.children_user - rusage_before.children_system, 2),
        "cpu_s_outside_jobs": {k: round(total[k] - in_jobs[k], 2) for k in CATEGORIES},
        "phases": {name: {"wall_s": round(walls[name], 2), "cpu_s": {k: round(v, 2) for k, v in cpu.items()}} for name, cpu in phases.items()},
        "jvm_threads_cpu_s": sampler.jvm_threads(),
        "num_jobs": len(log["jobs"]), "num_stages": sum(s["stages"] for s in steps.values()), "num_tasks": sum(s["tasks"] for s in steps.values()),
        "steps": steps, "jobs": per_job, "summary_line": output.strip().splitlines()[-1] if output.strip() else "",
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spark_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="spark_jobs/<stage>.py")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None, help="write the profile here")
    parser.add_argument("--jobs", action="store_true", help="also print one line per Spark job")
    args, job_args = parser.parse_known_args(argv)
    result = profile(args.job, job_args, args.cores, args.driver_memory, args.conf)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wall {result['wall_s']} s, CPU {result['cpu_s_total']} s {result['cpu_s']} (rusage {result['cpu_s_children_rusage']}); "
          f"{result['num_jobs']} jobs, {result['num_stages']} stages, {result['num_tasks']} tasks; outside jobs {result['cpu_s_outside_jobs']}")
    print(f"  JVM CPU by thread: {result['jvm_threads_cpu_s']}")
    for name, phase in result["phases"].items():
        print(f"  {name}: wall {phase['wall_s']} s, CPU {phase['cpu_s']} (between_jobs includes the CPU of jobs)")
    print(f"{'step':40s} {'jobs':>4s} {'stg':>4s} {'tasks':>5s} {'wall':>6s} {'jvm':>6s} {'pyW':>6s} {'pyD':>5s} {'taskJVM':>7s} {'deser':>5s} {'gc':>5s} {'shufMB':>7s}")
    for name, s in result["steps"].items():
        c = s["cpu_s"]
        print(f"{name[:40]:40s} {s['jobs']:4d} {s['stages']:4d} {s['tasks']:5d} {s['wall_s']:6.1f} {c['jvm']:6.1f} {c['python_workers']:6.1f} "
              f"{c['python_driver']:5.1f} {s['task_jvm_cpu_s']:7.1f} {s['deserialize_cpu_s']:5.1f} {s['gc_s']:5.1f} {s['shuffle_write_mb']:7.1f}")
    if args.jobs:
        for j in result["jobs"]:
            c = j["cpu_s"]
            print(f"  job {j['job']:3d} {j['step'][:28]:28s} {j['call_site'][:50]:50s} tasks {j['tasks']:4d} wall {j['wall_s']:5.2f} "
                  f"jvm {c['jvm']:5.2f} pyW {c['python_workers']:5.2f} pyD {c['python_driver']:4.2f}")
    print(result["summary_line"])


if __name__ == "__main__":
    main()
