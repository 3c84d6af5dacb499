"""`flareop`: the SDK's verbs from a shell, for modellers and data owners' admins.

    flareop compute create esm2-scl --model esm2-finetune@1.0.0 -d org-a/scl-org-a -d org-b/scl-org-b
    flareop job submit esm2-scl --rounds 8 -p preset=tiny -p localSteps=8 --epsilon 8 --wait
    flareop job download JOB --to results/
    flareop pending -n org-b                 # a data owner: jobs waiting for my org
    flareop approve modeller/JOB -n org-b    # after reading what it asks

Tables for people, ``-o json|yaml`` for scripts. Exit codes: 0 ok, 1 error, 2 invalid input,
3 not found, 4 forbidden (RBAC), 5 timeout, 6 awaiting approval, 7 rejected, 8 job failed.
Shell completion: ``flareop --install-completion``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pydantic
import typer
import yaml
from rich.console import Console
from rich.table import Table

from . import compute as compute_sdk
from . import datasets as datasets_sdk
from . import job as job_sdk
from . import models as models_sdk
from . import owner
from .errors import FlareError, InvalidSpec
from .session import Session
from .validate import check_manifests

app = typer.Typer(help="Modellers' and data owners' verbs over flareop.io resources, as your kubeconfig identity. "
                  "Exit codes: 0 ok, 1 error, 2 invalid input, 3 not found, 4 forbidden (RBAC), 5 timeout, "
                  "6 awaiting approval, 7 rejected, 8 job failed.", no_args_is_help=True, pretty_exceptions_enable=False)
compute_app = typer.Typer(help="Federations (ComputeSpecs): create, activate, deactivate, status, delete.",
                          no_args_is_help=True)
job_app = typer.Typer(help="Federated jobs: submit, status, wait, logs, download, list, abort.", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets your org may train on (owners' summaries, your terms).", no_args_is_help=True)
models_app = typer.Typer(help="Models (catalog apps): versions, resources, parameters.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(compute_app, name="compute")
app.add_typer(job_app, name="job")
console = Console()


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


class _Ctx:
    def __init__(self, kubeconfig: Path | None, context: str | None, namespace: str | None, output: Output):
        self.kubeconfig, self.context, self.namespace, self.output = kubeconfig, context, namespace, output
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = Session(self.kubeconfig, self.context, self.namespace)
        return self._session


@app.callback()
def _main(ctx: typer.Context,
          kubeconfig: Annotated[Path | None, typer.Option(help="default: $KUBECONFIG, ~/.kube/config, in-cluster")] = None,
          context: Annotated[str | None, typer.Option(help="kubeconfig context (default: the current one)")] = None,
          namespace: Annotated[str | None, typer.Option("-n", "--namespace",
                                                        help="your namespace (default: the context's)")] = None,
          output: Annotated[Output, typer.Option("-o", "--output", help="table, json or yaml")] = Output.table):
    ctx.obj = _Ctx(kubeconfig, context, namespace, output)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _emit(ctx: typer.Context, value: Any, columns: list[str], rows: list[list[Any]], title: str = "") -> None:
    out = ctx.obj.output
    if out == Output.json:
        print(json.dumps(_plain(value), indent=1, default=str))
    elif out == Output.yaml:
        print(yaml.safe_dump(json.loads(json.dumps(_plain(value), default=str)), sort_keys=False), end="")
    else:
        table = Table(title=title or None, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")  # never cut a message short
        for row in rows:
            table.add_row(*("" if c is None else str(c) for c in row))
        console.print(table)


def _terms(t: dict) -> str:
    parts = [", ".join(t.get("models") or [])]
    if t.get("dpRequired"):
        parts.append("DP required")
    for key, label in (("maxEpsilonPerJob", "eps/job"), ("epsilonLeft", "eps left"), ("maxRounds", "max rounds"),
                       ("expiresAt", "until")):
        if t.get(key) is not None:
            parts.append(f"{label} {t[key]}")
    return "; ".join(p for p in parts if p)


@datasets_app.command("list")
def datasets_list(ctx: typer.Context, slug_contains: Annotated[str, typer.Argument(help="filter on org/id")] = ""):
    """Datasets offered to your org, with your terms (never a site's paths)."""
    items = datasets_sdk.list_datasets(slug_contains, session=ctx.obj.session)
    _emit(ctx, items, ["DATASET", "SAMPLES", "FORMAT", "SITE READY", "TERMS", "DESCRIPTION"],
          [[d.ref, d.sample_count, d.format, "yes" if d.site_ready else "no", _terms(d.terms), d.description]
           for d in items])


@models_app.command("list")
def models_list(ctx: typer.Context, name_contains: Annotated[str, typer.Argument(help="filter on the id")] = ""):
    """Catalog models with their versions, resource hints and parameters."""
    items = models_sdk.list_models(name_contains, session=ctx.obj.session)
    _emit(ctx, items, ["MODEL", "VERSION", "CLIENT RESOURCES", "PARAMETERS", "DESCRIPTION"],
          [[m.id, m.version, json.dumps((m.resources or {}).get("client") or {}),
            ", ".join(sorted(m.parameters.get("properties") or {})), m.description] for m in items])


def _compute_rows(items: list[compute_sdk.ComputeStatus]) -> list[list[Any]]:
    return [[c.name, c.phase, c.ready_clients, "yes" if c.active else "no",
             ", ".join(f"{s.org}: {s.decision}" for s in c.sites), c.message] for c in items]


COMPUTE_COLUMNS = ["NAME", "PHASE", "CLIENTS", "ACTIVE", "ORGS", "MESSAGE"]


def _show_compute(ctx: typer.Context, st: compute_sdk.ComputeStatus) -> None:
    _emit(ctx, st, COMPUTE_COLUMNS, _compute_rows([st]))


@compute_app.command("create")
def compute_create(ctx: typer.Context, name: str,
                   model: Annotated[str, typer.Option(help="catalog model as id@version, e.g. esm2-finetune@1.0.0")],
                   dataset: Annotated[list[str], typer.Option("-d", "--dataset", help="org/id, repeat per dataset")],
                   client_cpu: str = "2", client_memory: str = "8Gi", client_gpu: int = 0,
                   server_cpu: str = "1", server_memory: str = "2Gi",
                   inactive: Annotated[bool, typer.Option(help="create it deactivated")] = False):
    """Create a federation over datasets of several orgs; each org decides on its part."""
    model_id, _, version = model.partition("@")
    spec = compute_sdk.ComputeSpec(name=name, model={"id": model_id, "version": version}, dataset_ids=dataset,
                                   client_n_cpu=client_cpu, client_memory=client_memory, client_n_gpu=client_gpu,
                                   server_n_cpu=server_cpu, server_memory=server_memory, active=not inactive)
    _show_compute(ctx, compute_sdk.create(spec, session=ctx.obj.session))


@compute_app.command("activate")
def compute_activate(ctx: typer.Context, name: str):
    """Bring the federation's server and clients back."""
    _show_compute(ctx, compute_sdk.activate(name, session=ctx.obj.session))


@compute_app.command("deactivate")
def compute_deactivate(ctx: typer.Context, name: str):
    """Scale the federation's server and clients to zero (releases GPUs)."""
    _show_compute(ctx, compute_sdk.deactivate(name, session=ctx.obj.session))


@compute_app.command("status")
def compute_status(ctx: typer.Context, name: Annotated[str | None, typer.Argument()] = None):
    """One federation's status, or every federation in the namespace."""
    items = ([compute_sdk.get_status(name, session=ctx.obj.session)] if name
             else compute_sdk.list_compute(session=ctx.obj.session))
    _emit(ctx, items if name is None else items[0], COMPUTE_COLUMNS, _compute_rows(items))


@compute_app.command("delete")
def compute_delete(ctx: typer.Context, name: str):
    """Delete the federation (server, clients, credentials)."""
    compute_sdk.delete(name, session=ctx.obj.session)
    console.print(f"deleted ComputeSpec {name}")


JOB_COLUMNS = ["JOB", "PHASE", "ROUND", "GLOBAL ACC", "APPROVALS", "MESSAGE"]


def _job_rows(items: list[job_sdk.JobStatus]) -> list[list[Any]]:
    return [[j.name, j.phase, f"{j.current_round}/{j.rounds}", "" if j.accuracy is None else f"{j.accuracy:.3f}",
             ", ".join(f"{a.org}: {a.decision}" for a in j.approvals), j.message] for j in items]


def _show_job(ctx: typer.Context, st: job_sdk.JobStatus) -> None:
    _emit(ctx, st, JOB_COLUMNS, _job_rows([st]))


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r}: write key=value (the value is read as YAML: 8, 0.003, true, tiny)")
    return key, yaml.safe_load(value)


@job_app.command("submit")
def job_submit(ctx: typer.Context, compute: Annotated[str, typer.Argument(help="the ComputeSpec (federation)")],
               rounds: Annotated[int, typer.Option(help="federated rounds")],
               param: Annotated[list[str] | None, typer.Option("-p", "--param", help="app parameter key=value")] = None,
               params_file: Annotated[Path | None, typer.Option(help="app parameters as YAML/JSON")] = None,
               epsilon: Annotated[float | None, typer.Option(help="train under differential privacy")] = None,
               dp_level: Annotated[str, typer.Option(help="Sample (DP-SGD at each site) or Client")] = "Sample",
               name: Annotated[str | None, typer.Option(help="job name (default: COMPUTE-random)")] = None,
               wait: Annotated[bool, typer.Option(help="follow it to the end with a progress bar")] = False,
               timeout: Annotated[float | None, typer.Option(help="with --wait: give up after this many s")] = None):
    """Submit a job; the data owners decide, then it runs."""
    params = dict(yaml.safe_load(params_file.read_text()) or {}) if params_file else {}
    params.update(dict(_param(p) for p in param or []))
    job_id = job_sdk.submit(compute, params, rounds=rounds, epsilon=epsilon, dp_level=dp_level, name=name,
                            session=ctx.obj.session)
    if wait:
        st = job_sdk.wait_until_job_finished(job_id, timeout, session=ctx.obj.session,
                                             progress=ctx.obj.output == Output.table)
        _show_job(ctx, st)
    elif ctx.obj.output == Output.table:
        console.print(f"submitted job {job_id}; follow it with `flareop job wait {job_id}`")
    else:
        _emit(ctx, {"job": job_id}, [], [])


@job_app.command("status")
def job_status(ctx: typer.Context, job: str):
    """The job's phase, round, metrics and each org's decision."""
    st = job_sdk.status(job, session=ctx.obj.session)
    _emit(ctx, st, JOB_COLUMNS, _job_rows([st]))
    if ctx.obj.output == Output.table and st.site_metrics:
        _emit(ctx, st.site_metrics, ["SITE", "ACCURACY", "EPSILON SPENT"],
              [[s, m.get("val_accuracy"), m.get("epsilon_spent")] for s, m in sorted(st.site_metrics.items())])


@job_app.command("list")
def job_list(ctx: typer.Context):
    """Every job in the namespace."""
    items = job_sdk.list_jobs(session=ctx.obj.session)
    _emit(ctx, items, JOB_COLUMNS, _job_rows(items))


@job_app.command("wait")
def job_wait(ctx: typer.Context, job: str,
             timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None):
    """Follow the job to its end with a progress bar (round k/n, global accuracy)."""
    st = job_sdk.wait_until_job_finished(job, timeout, session=ctx.obj.session, progress=ctx.obj.output == Output.table)
    _emit(ctx, st, JOB_COLUMNS, _job_rows([st]))


@job_app.command("logs")
def job_logs(ctx: typer.Context, job: str,
             participant: Annotated[str | None, typer.Option(help="server or a site's client name")] = None):
    """The finished job's logs (server and each site)."""
    logs = job_sdk.logs(job, session=ctx.obj.session)
    for who, text in sorted(logs.items()):
        if participant in (None, who):
            print(f"==> {who} <==\n{text}")


@job_app.command("download")
def job_download(ctx: typer.Context, job: str, to: Annotated[Path, typer.Option(help="folder to download into")],
                 endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint of s3:// results")] = None):
    """Download the job's results, each file checked against its sha256 in the job's status."""
    paths = job_sdk.download_results(job, to, endpoint_url=endpoint_url, session=ctx.obj.session)
    _emit(ctx, [str(p) for p in paths], ["FILE", "BYTES"], [[str(p), p.stat().st_size] for p in paths],
          title=f"{len(paths)} files, each checked against its sha256")


@job_app.command("abort")
def job_abort(ctx: typer.Context, job: str):
    """Stop the job cleanly (it keeps its last checkpoint; `job resume` continues)."""
    _show_job(ctx, job_sdk.abort(job, session=ctx.obj.session))


@job_app.command("resume")
def job_resume(ctx: typer.Context, job: str):
    """Continue a stopped job from its last checkpoint."""
    _show_job(ctx, job_sdk.resume(job, session=ctx.obj.session))


@job_app.command("delete")
def job_delete(ctx: typer.Context, job: str):
    """Delete the job (its results stay in the store)."""
    job_sdk.delete(job, session=ctx.obj.session)
    console.print(f"deleted FederatedJob {job}")


REQUEST_COLUMNS = ["JOB", "DECISION", "DATASETS", "ROUNDS", "DP", "CODE", "MESSAGE"]


def _request_rows(items: list[owner.JobRequest]) -> list[list[Any]]:
    return [[r.job, r.decision, ", ".join(r.datasets), r.rounds, r.dp, f"{r.model} {r.code_digest[:19]}", r.message]
            for r in items]


def _hub(hub_kubeconfig: Path | None, hub_namespace: str | None, ctx: typer.Context) -> Session | None:
    return Session(hub_kubeconfig, None, hub_namespace or ctx.obj.session.namespace) if hub_kubeconfig else None


HubKubeconfig = Annotated[Path | None, typer.Option(help="the hub's kubeconfig, where the site runs on its own cluster")]
HubNamespace = Annotated[str | None, typer.Option(help="your org's namespace on the hub (default: -n)")]


@app.command("pending")
def pending(ctx: typer.Context, hub_kubeconfig: HubKubeconfig = None, hub_namespace: HubNamespace = None,
            all_requests: Annotated[bool, typer.Option("--all", help="decided ones too")] = False):
    """Jobs waiting for your org's decision, with what each asks."""
    hub = _hub(hub_kubeconfig, hub_namespace, ctx)
    items = (owner.job_requests if all_requests else owner.pending)(session=ctx.obj.session, hub=hub)
    _emit(ctx, items, REQUEST_COLUMNS, _request_rows(items))


def _decide(ctx: typer.Context, job: str, decision: str, reason: str, yes: bool, hub: Session | None) -> None:
    req = owner.request(job, session=ctx.obj.session, hub=hub)
    if ctx.obj.output == Output.table:
        _emit(ctx, req, REQUEST_COLUMNS, _request_rows([req]), title=f"{decision} this job?")
        if req.failed_rules:
            console.print("rules it fails: " + "; ".join(req.failed_rules))
    if not yes and sys.stdin.isatty() and not typer.confirm(f"{decision} {req.job} (content {req.content_hash})?"):
        raise typer.Exit(1)
    fn = owner.approve if decision == "Approve" else owner.reject
    obj = fn(job, reason, session=ctx.obj.session, hub=hub)
    console.print(f"JobApproval {obj['metadata']['name']}: {decision} {req.job} at content {req.content_hash}")


@app.command("approve")
def approve(ctx: typer.Context, job: Annotated[str, typer.Argument(help="namespace/name (or name) of the job")],
            reason: str = "", yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
            hub_kubeconfig: HubKubeconfig = None, hub_namespace: HubNamespace = None):
    """Approve a job as it is now (its current content hash), after showing what it asks."""
    _decide(ctx, job, "Approve", reason, yes, _hub(hub_kubeconfig, hub_namespace, ctx))


@app.command("reject")
def reject(ctx: typer.Context, job: Annotated[str, typer.Argument(help="namespace/name (or name) of the job")],
           reason: Annotated[str, typer.Option(help="what the modeller should change (required)")],
           yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
           hub_kubeconfig: HubKubeconfig = None, hub_namespace: HubNamespace = None):
    """Reject a job; the modeller sees your reason."""
    _decide(ctx, job, "Reject", reason, yes, _hub(hub_kubeconfig, hub_namespace, ctx))


@app.command("budget")
def budget(ctx: typer.Context):
    """Epsilon per grant of your org: budget, reserved, spent, used (composed), left."""
    items = owner.budget(session=ctx.obj.session)
    _emit(ctx, [{**dataclasses.asdict(b), "left": b.left} for b in items],
          ["GRANT", "DATASET", "BUDGET", "RESERVED", "SPENT", "USED", "LEFT", "JOBS"],
          [[b.grant, b.dataset, b.budget if b.budget is not None else "none", f"{b.reserved:.3f}", f"{b.spent:.3f}",
            f"{b.used:.3f}", "" if b.left is None else f"{b.left:.3f}", b.jobs] for b in items])


@app.command("validate")
def validate(ctx: typer.Context, file: Annotated[list[Path], typer.Option("-f", "--file", help="manifest(s), YAML")]):
    """Check flareop.io manifests offline, with the models and rules the API server uses."""
    results = check_manifests(file)
    _emit(ctx, results, ["FILE", "OBJECT", "VALID"],
          [[r["file"], r["object"], "yes" if r["valid"] else "NO"] for r in results])
    if ctx.obj.output == Output.table:
        for r in results:
            if not r["valid"]:
                console.print(f"{r['file']}: {r['object']}: {r['error']}", markup=False, highlight=False, soft_wrap=True)
    if not all(r["valid"] for r in results):
        raise typer.Exit(2)


def main() -> None:
    try:
        app()
    except FlareError as err:
        Console(stderr=True).print(f"error: {err}", style="red", markup=False, highlight=False)
        sys.exit(err.exit_code)
    except pydantic.ValidationError as err:  # a ComputeSpec built from flags
        Console(stderr=True).print(f"error: {err}", style="red", markup=False, highlight=False)
        sys.exit(InvalidSpec.exit_code)


if __name__ == "__main__":
    main()
