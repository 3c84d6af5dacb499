"""Run the operator: the orchestrator, gateways, or both, each Kopf registry as its own task.

`flare-operator run --config operator.yaml [--kubeconfig FILE]`. Torch and NVFlare are not
imported here: provisioning and the FLARE API load NVFlare lazily, when a federation needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import OperatorConfig, OperatorMode
from .runtime.kube import Kube
from .runtime.worker import OnDemandProcess
from .runtime.workloads import ProcessRuntime, WorkloadRuntime

log = logging.getLogger("flare_operator")
PROVISIONER_IDLE_SECONDS = 60.0  # the provisioner process stops this long after its last task
MALLOC_TRIM_SECONDS = 30.0  # how often freed heap pages are given back (trim_malloc)


def make_runtime(config: OperatorConfig, kube: Kube) -> WorkloadRuntime:
    if config.runtime == "process":
        return ProcessRuntime(config.workdir)
    from .runtime.kubernetes import KubernetesRuntime

    return KubernetesRuntime(config, kube)


async def run(config: OperatorConfig, kubeconfig: Path | None, stop: asyncio.Event | None = None,
              liveness_endpoint: str | None = None) -> None:
    import kopf

    from .handlers.compute import Hub
    from .handlers.gateway import Site
    from .handlers.registry import (
        answer_watch_settings,
        gateway_registries,
        operator_settings,
        orchestrator_registry,
        probe_webhook_certificates,
        webhook_settings,
    )

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(config.kube_threads, thread_name_prefix="kube"))
    kube = Kube.from_kubeconfig(kubeconfig, connections=config.kube_threads)
    runtime = make_runtime(config, kube)
    # name, registry, namespaces, Kopf settings
    operators: list[tuple[str, kopf.OperatorRegistry, list[str], kopf.OperatorSettings]] = []
    webhook_certs: list[Path] = []
    provisioner: OnDemandProcess | None = None
    if config.mode in (OperatorMode.ORCHESTRATOR, OperatorMode.ALL):
        from .nvflare.provisioning import lean_import
        from .store.results import store_from_config

        # A process of its own provisions the NVFlare projects (handlers/compute.py Hub.provisioner),
        # there only while it has work (≈ 36 MiB the orchestrator does not hold between batches;
        # lean_import keeps NVFlare's job runtime out of it: 58 MiB with it).
        provisioner = OnDemandProcess(idle_seconds=PROVISIONER_IDLE_SECONDS, initializer=lean_import)
        hub = Hub(config=config, kube=kube, runtime=runtime, provisioner=provisioner,
                  results_store=store_from_config(config.results_store, config.workdir))
        registry, answers = orchestrator_registry(hub, kubeconfig)
        operators.append(("orchestrator", registry, list(config.namespaces), operator_settings(config, workloads="server")))
        operators.append(("orchestrator (AccessRequest answers)", answers, [], answer_watch_settings(config)))
    if config.mode in (OperatorMode.GATEWAY, OperatorMode.ALL):
        for site_cfg in config.gateways:
            hub_kube = (Kube.from_kubeconfig(site_cfg.hub_kubeconfig, connections=config.kube_threads)
                        if site_cfg.hub_kubeconfig else kube)
            site = Site(config=config, settings=site_cfg, site_kube=kube, hub_kube=hub_kube, runtime=runtime)
            hub_registry, site_registry = gateway_registries(site, kubeconfig)
            # A gateway watches named namespaces only, and least privilege gives it no cluster-wide
            # list of namespaces or CRDs (neither the hub credential of its org nor, installed by the
            # chart, its own ServiceAccount): Kopf's scanning stays off on both sides.
            operators.append((f"gateway {site_cfg.site} (hub side)", hub_registry, [site_cfg.hub_namespace],
                              operator_settings(config, scanning=False)))
            site_settings = operator_settings(config, scanning=False, workloads="client")
            if site_cfg.webhook_port:
                webhook_certs.append(webhook_settings(site_settings, site_cfg, config.workdir))
            operators.append((f"gateway {site_cfg.site} (site side)", site_registry, [site_cfg.namespace],
                              site_settings))
    if not operators:
        raise SystemExit("nothing to run: mode gateway needs at least one entry in gateways")
    if webhook_certs:  # the liveness endpoint serves the first operator's probes
        probe_webhook_certificates(operators[0][1], webhook_certs)

    from .runtime.metrics import serve

    serve(config.metrics_port, config.metrics_host)
    stop_flag: asyncio.Future = loop.create_future()
    tasks = []
    for index, (name, registry, namespaces, settings) in enumerate(operators):
        log.info("starting %s on %s", name, ", ".join(namespaces) or "all namespaces")
        tasks.append(asyncio.create_task(kopf.operator(
            registry=registry, settings=settings, standalone=True,
            clusterwide=not namespaces, namespaces=namespaces, stop_flag=stop_flag,
            liveness_endpoint=liveness_endpoint if index == 0 else None,
        ), name=name))
    trimmer = asyncio.create_task(trim_malloc(MALLOC_TRIM_SECONDS), name="malloc_trim")
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not waiter and task.exception():
            log.error("%s stopped: %r", task.get_name(), task.exception())
    if not stop_flag.done():
        stop_flag.set_result(None)
    await asyncio.gather(*tasks, return_exceptions=True)
    await runtime.close()
    if provisioner is not None:
        provisioner.shutdown(wait=False, cancel_futures=True)
    waiter.cancel()
    trimmer.cancel()


def _libc(name: str):
    """A function of this process's C library (glibc's malloc tuning), or None where it has none."""
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


async def trim_malloc(interval: float) -> None:
    """Every ``interval`` seconds, glibc's malloc_trim(0): the pages freed inside every arena go back to
    the system. glibc returns memory only from the top of the main heap on its own, so a burst (a batch
    of ComputeSpecs at 100 orgs) left the hub's RSS where the burst took it, though Python had freed
    most of it (docs/benchmarks.md §7). A few milliseconds per call; a libc without it is left alone."""
    trim = _libc("malloc_trim")
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval)
        trim(0)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads that allocate at the same time arenas of their own, up to eight per core,
    and returns little of them: with 32 Kubernetes threads (kubeThreads) the scale benchmark's hub
    held ≈ 65 MiB more at 100 orgs than with two arenas (docs/benchmarks.md §7). Two, as
    MALLOC_ARENA_MAX=2 would set, before any thread starts; a MALLOC_ARENA_MAX in the environment
    wins, and a libc without mallopt (not glibc) is left alone."""
    import os

    mallopt = _libc("mallopt")
    if "MALLOC_ARENA_MAX" in os.environ or mallopt is None:
        return
    m_arena_max = -8  # glibc malloc.h
    mallopt(m_arena_max, arenas)


def main(config_path: Path, kubeconfig: Path | None, liveness_endpoint: str | None, verbose: bool) -> int:
    limit_malloc_arenas()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "kopf.activities.probe", "nvflare", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = OperatorConfig.from_file(config_path)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run(config, kubeconfig, stop, liveness_endpoint)

    asyncio.run(_main())
    return 0
