"""The exporter's HTTP side: `/probe?target=HOST` (one hypervisor's sample) and `/metrics` (its own health).

The pattern of Prometheus's blackbox_exporter and snmp_exporter: Prometheus names the target in the
URL (multi-target relabeling, docs/metrics.md), the exporter reads it at that moment, and a target
it cannot read answers `numa_k3s_probe_success 0` at once instead of an error page or a hang.

- One Session per hypervisor, kept between probes (SessionPool): one SSH connection, and one
  libvirt connection over it, reused; a connection that drops is reopened on the next read with the
  inventory's retry policies (lib/retry.py: ssh_connect, transient), as every run does.
- At most one probe per target in flight: a scrape that arrives while one runs waits for that one
  (two Prometheus replicas get one sample). At most `max_probes` targets are probed at once; a scrape
  beyond that fails at once as "busy" rather than queueing behind a slow host.
- Each probe has a budget under Prometheus's scrape timeout (its X-Prometheus-Scrape-Timeout-Seconds
  header, less `TIMEOUT_OFFSET`, and at most `timeout`). Past it the scrape is answered as failed
  ("timeout"); the read goes on in its own thread and frees its slot when it ends, so a dead host
  costs one worker, never the other targets' scrapes.
- Read-only: the reads are monitor's (lib/exporter/sample.py); the host lock is never taken.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lib.errors import ToolError
from lib.exporter.metrics import outcome_families, probe_families
from lib.exporter.sample import HostSample, sample_host
from lib.inventory.load import LoadedHost
from lib.pool import HostShell, SessionPool
from lib.retry import Policies
from lib.shell import mask
from lib.targets import hypervisor_endpoint
from lib.transport import ConnectError

TIMEOUT_OFFSET = 0.5  # seconds kept for rendering and the network, as blackbox_exporter's timeout_offset
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"

Sampler = Callable[[HostShell, LoadedHost, float], HostSample]


def _sample(session: HostShell, loaded: LoadedHost, interval: float) -> HostSample:
    return sample_host(session, loaded.host, interval)


@dataclass(frozen=True)
class Settings:
    interval: float = 1.0  # seconds between the two samples of each rate (monitor's --interval)
    timeout: float = 9.5  # a probe's budget when Prometheus sends no scrape timeout
    max_probes: int = 4


class _Families:
    """A collector over families already built (one probe's answer)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class Prober:
    def __init__(self, hosts: dict[str, LoadedHost], policies: Policies, settings: Settings, *,
                 sampler: Sampler = _sample, log: TextIO | None = None) -> None:
        self.hosts, self.settings, self.sampler = hosts, settings, sampler
        self.log = log or sys.stderr
        self.pool = SessionPool(policies)  # remember_failure off: a host that comes back is reconnected
        self.workers = ThreadPoolExecutor(max_workers=settings.max_probes, thread_name_prefix="probe")
        self.inflight: dict[str, Future[list[Metric]]] = {}
        self._lock = threading.Lock()
        self.health = CollectorRegistry(auto_describe=False)
        self.durations = Histogram("numa_k3s_exporter_probe_duration_seconds", "Time each scrape of a target took.",
                                   ["target"], registry=self.health,
                                   buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60))
        self.errors = Counter("numa_k3s_exporter_probe_errors", "Scrapes of a target that failed, by reason.",
                              ["target", "reason"], registry=self.health)
        self.health.register(_Connections(self))

    def budget(self, scrape_timeout: str | None) -> float:
        """Seconds this probe may take: under Prometheus's scrape timeout, and at most settings.timeout."""
        try:
            given = float(scrape_timeout) if scrape_timeout else None
        except ValueError:
            given = None
        limit = self.settings.timeout if given is None else min(given - TIMEOUT_OFFSET, self.settings.timeout)
        return max(limit, 0.1)

    def probe(self, target: str, budget: float) -> bytes:
        """The target's metrics as text; a failure is a valid answer too (probe_success 0)."""
        loaded = self.hosts[target]
        start = time.monotonic()
        reason = ""
        families: list[Metric] = []
        with self._lock:
            future = self.inflight.get(target)
            if future is None or future.done():
                busy = sum(not f.done() for f in self.inflight.values())
                if busy >= self.settings.max_probes:
                    future, reason = None, "busy"
                else:
                    future = self.workers.submit(self._read, loaded)
                    self.inflight[target] = future
        if future is not None:
            try:
                families = future.result(timeout=max(budget - (time.monotonic() - start), 0.0))
            except FutureTimeout:
                reason = "timeout"
                self._say(target, f"no answer within {budget:g} s (the read goes on in the background)")
            except ConnectError as exc:
                reason = "connect"
                self._say(target, str(exc))
            except ToolError as exc:
                reason = "command"
                self._say(target, str(exc))
            except Exception as exc:  # a parser meeting an odd value: this target's failure, not the exporter's
                reason = "error"
                self._say(target, f"{type(exc).__name__}: {exc}")
        took = time.monotonic() - start
        self.durations.labels(target).observe(took)
        if reason:
            self.errors.labels(target, reason).inc()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families([*outcome_families(not reason, took), *([] if reason else families)]))
        return generate_latest(registry)

    def _read(self, loaded: LoadedHost) -> list[Metric]:
        session = self.pool.shell(hypervisor_endpoint(loaded))
        sample = self.sampler(session, loaded, self.settings.interval)
        return probe_families(loaded.name, loaded.host, sample)

    def _say(self, target: str, text: str) -> None:
        first = (text.splitlines() or [""])[0]
        self.log.write(mask(f"probe {target} failed: {first}\n"))
        self.log.flush()

    def close(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.pool.close_all()


class _Connections:
    """Per target: is its SSH connection open, how often it was (re)opened, and is a probe running."""

    def __init__(self, prober: Prober) -> None:
        self.prober = prober

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily("numa_k3s_exporter_connected", "1 while the target's SSH connection is open.",
                                      labels=["target"])
        opened = CounterMetricFamily("numa_k3s_exporter_connects", "SSH connections opened to the target "
                                     "(more than 1: it was reconnected).", labels=["target"])
        running = GaugeMetricFamily("numa_k3s_exporter_probes_in_flight", "Probes reading a target now.",
                                    labels=["target"])
        sessions = {s.endpoint.name: s.session for s in list(self.prober.pool.shells.values())}
        with self.prober._lock:
            busy = {t for t, f in self.prober.inflight.items() if not f.done()}
        for target in sorted(self.prober.hosts):
            session = sessions.get(target)
            connected.add_metric([target], 1 if session is not None and session.connected else 0)
            opened.add_metric([target], session.connects if session is not None else 0)
            running.add_metric([target], 1 if target in busy else 0)
        yield from (connected, opened, running)


def _handler(prober: Prober) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "numa-k3s-exporter"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/metrics":
                self._send(200, generate_latest(prober.health), CONTENT_TYPE_LATEST)
            elif url.path == "/probe":
                targets = parse_qs(url.query).get("target", [])
                if len(targets) != 1 or not targets[0]:
                    self._text(400, "give one target: /probe?target=HOST (a hosts/*.yaml name)\n")
                elif targets[0] not in prober.hosts:
                    known = ", ".join(sorted(prober.hosts)) or "none"
                    self._text(400, f"unknown target {targets[0]!r}: not in the inventory (known: {known})\n")
                else:
                    budget = prober.budget(self.headers.get(SCRAPE_TIMEOUT_HEADER))
                    self._send(200, prober.probe(targets[0], budget), CONTENT_TYPE_LATEST)
            elif url.path == "/":
                self._text(200, "numa-k3s exporter: /probe?target=HOST, /metrics\n")
            else:
                self._text(404, "not found: /probe?target=HOST or /metrics\n")

        def _text(self, code: int, text: str) -> None:
            self._send(code, text.encode(), "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per failed probe is logged by the prober; successful scrapes are not news

    return Handler


def server(address: tuple[str, int], prober: Prober) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(address, _handler(prober))
    httpd.daemon_threads = True
    return httpd


def listen_address(value: str) -> tuple[str, int]:
    """--listen=HOST:PORT ([::1]:PORT for IPv6); a FlagError (exit 2) names what is wrong."""
    from lib.flags import FlagError

    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FlagError(f"--listen={value!r}: give HOST:PORT, e.g. --listen=127.0.0.1:9464")
    return host, int(port)


def serve(listen: str, hosts: dict[str, LoadedHost], policies: Policies, settings: Settings,
          out: TextIO | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM; then close every connection. Bind errors are the operator's (exit 2)."""
    import signal

    from lib.flags import FlagError

    address = listen_address(listen)
    prober = Prober(hosts, policies, settings)
    try:
        httpd = server(address, prober)
    except OSError as exc:
        prober.close()
        raise FlagError(f"--listen={listen}: cannot listen there ({exc.strerror or exc})") from None
    stream = out or sys.stdout
    stream.write(f"listening on http://{listen}/probe?target=HOST and /metrics; targets: "
                 f"{', '.join(sorted(hosts)) or 'none'}\n")
    stream.flush()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends it as Ctrl-C does
    try:
        httpd.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        prober.close()
