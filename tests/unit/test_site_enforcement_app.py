"""Site enforcement of *what runs*: the app digest (policy/site_enforcement.py) and the NVFlare
component's app deployer, launch check and revocation watch (nvflare/enforcement.py), with NVFlare's
own zip and signing code and a stand-in for the client engine."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from flare_operator.policy.site_enforcement import (
    NVFLARE_ADDED_FILES,
    ApprovedJob,
    ApprovedJobs,
    app_digest,
    render,
    zip_app_files,
)

HASH = "sha256:" + "ab" * 32
APP = {
    "config/config_fed_client.json": json.dumps({"format_version": 2, "executors": [
        {"executor": {"path": "x.Y", "args": {"task_script_path": "client.py"}}}]}, indent=2).encode(),
    "custom/client.py": b"print('train')\n",
    "custom/pkg/__init__.py": b"",
    "custom/site_config.json": b'{"site": "site-1", "datasetPath": "dataset:scl"}\n',
}
DIGEST = app_digest(APP)


def meta(uid: str = "uid-1", content_hash: str = HASH, job_id: str = "j-1") -> dict:
    return {"job_id": job_id, "name": "modeller-esm2-run",
            "flareop": {"uid": uid, "contentHash": content_hash, "job": "modeller/esm2-run"}}


def document(digest: str = DIGEST, *jobs: ApprovedJob) -> str:
    return render(ApprovedJobs("org-b", (ApprovedJob("uid-1", HASH, "modeller/esm2-run", digest), *jobs)))


def zipped(files: dict[str, bytes], *, directories: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        if directories:
            z.writestr("config/", b"")
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


# --- the digest --------------------------------------------------------------------------------------


def test_app_digest_leaves_out_only_what_nvflare_adds_when_it_signs():
    signed = {**APP, **{f"{d}{f}": b"sig" for d in ("", "config/", "custom/pkg/") for f in NVFLARE_ADDED_FILES}}
    assert app_digest(signed) == DIGEST
    assert NVFLARE_ADDED_FILES == {".__nvfl_sig.json", ".__nvfl_submitter.crt"}


@pytest.mark.parametrize("extra", [
    "custom/__pycache__/client.cpython-311.pyc",  # Python would run it instead of the approved source
    "custom/client.pyc",
    "custom/.hidden.py",
    "custom/.secret/notes.txt",
    "custom/extra.py",
    "config/config_fed_client.conf",  # a second client config NVFlare could pick
])
def test_app_digest_counts_every_other_file(extra):
    assert app_digest({**APP, extra: b"x = 1\n"}) != DIGEST


def test_app_digest_binds_code_paths_and_json_meaning():
    assert app_digest({**APP, "custom/client.py": b"print('train!')\n"}) != DIGEST
    moved = {("custom/other.py" if k == "custom/client.py" else k): v for k, v in APP.items()}
    assert app_digest(moved) != DIGEST
    config = json.loads(APP["config/config_fed_client.json"])
    assert app_digest({**APP, "config/config_fed_client.json": json.dumps(config, sort_keys=True).encode()}) == DIGEST
    config["executors"][0]["executor"]["args"]["task_script_path"] = "evil.py"
    assert app_digest({**APP, "config/config_fed_client.json": json.dumps(config).encode()}) != DIGEST


def test_zip_app_files_reads_what_nvflare_deploys(tmp_path):
    """NVFlare zips the job's app folder (zip_directory_to_bytes) after the FLARE API signed it
    (sign_folders): the digest of that zip is the digest of the folder the site built."""
    from nvflare.fuel.utils.zip_utils import zip_directory_to_bytes
    from nvflare.lighter.utils import sign_folders

    from flare_operator.nvflare.enforcement import folder_app_files

    folder = write_tree(tmp_path / "app_site-1", APP)
    key_pem = _private_key_pem()
    from nvflare.lighter.utils import load_private_key

    sign_folders(str(folder), load_private_key(key_pem))
    assert (folder / ".__nvfl_sig.json").exists() and (folder / "custom" / "pkg" / ".__nvfl_sig.json").exists()
    data = zip_directory_to_bytes(str(folder), "")
    assert set(zip_app_files(data)) >= set(APP)
    assert app_digest(zip_app_files(data)) == DIGEST
    assert app_digest(folder_app_files(folder)) == DIGEST
    assert zip_app_files(zipped(APP, directories=True)) == APP


def _private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def test_zip_app_files_refuses_what_it_cannot_digest_faithfully():
    with pytest.raises(ValueError, match="not a readable zip"):
        zip_app_files(b"not a zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, pytest.warns(UserWarning):
        z.writestr("custom/client.py", b"print('approved')\n")
        z.writestr("custom/client.py", b"print('other')\n")
    with pytest.raises(ValueError, match="names 'custom/client.py' twice"):
        zip_app_files(buf.getvalue())


def test_folder_app_files_refuses_symbolic_links(tmp_path):
    from flare_operator.nvflare.enforcement import folder_app_files

    folder = write_tree(tmp_path / "app", APP)
    (folder / "custom" / "link.py").symlink_to(folder / "custom" / "client.py")
    with pytest.raises(ValueError, match="symbolic link"):
        folder_app_files(folder)
    with pytest.raises(ValueError, match="not a folder"):
        folder_app_files(tmp_path / "missing")


# --- the component: deployment and launch -------------------------------------------------------------


class FakeDeployer:
    def __init__(self):
        self.calls = []

    def deploy(self, **kwargs):
        self.calls.append(kwargs)
        return ""


def _component(tmp_path, text: str | None = None, **kwargs):
    from flare_operator.nvflare.enforcement import ApprovedJobsOnly

    path = tmp_path / "approved.json"
    path.write_text(document() if text is None else text)
    return ApprovedJobsOnly(approved_file=str(path), org="org-b", **kwargs), path


def _context(**props):
    from nvflare.apis.fl_context import FLContext

    ctx = FLContext()
    for key, value in props.items():
        ctx.set_prop(key, value, private=True, sticky=False)
    return ctx


def _deploy(component, app: dict[str, bytes] | bytes, job_meta=None, deployer=None):
    from nvflare.apis.fl_constant import SystemComponents

    deployer = deployer or FakeDeployer()
    ctx = _context(**{SystemComponents.DEFAULT_APP_DEPLOYER: deployer})
    data = app if isinstance(app, bytes) else zipped(app)
    error = component.deploy(workspace=None, job_id="j-1", job_meta=job_meta or meta(), app_name="app_site-1",
                             app_data=data, fl_ctx=ctx)
    return error, deployer


def test_deploy_hands_the_approved_app_to_nvflares_deployer(tmp_path):
    component, _ = _component(tmp_path)
    error, deployer = _deploy(component, APP)
    assert error == ""
    (call,) = deployer.calls
    assert call["job_id"] == "j-1" and call["app_data"] == zipped(APP)


@pytest.mark.parametrize(("app", "words"), [
    ({**APP, "custom/client.py": b"open('/data/x').read()\n"}, ["digests to", "the hub sent other code"]),
    ({**APP, "custom/__pycache__/client.cpython-311.pyc": b"\x00"}, ["digests to"]),
    (b"garbage", ["the app is not a readable zip"]),
])
def test_deploy_refuses_any_other_app_before_it_is_unpacked(tmp_path, caplog, app, words):
    component, _ = _component(tmp_path)
    with caplog.at_level("ERROR"):
        error, deployer = _deploy(component, app)
    assert deployer.calls == [], "nothing unpacked"
    for w in words:
        assert w in error, (w, error)
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "REFUSED deployment of NVFlare job j-1 (name modeller-esm2-run, FederatedJob modeller/esm2-run, " \
           f"content hash {HASH}) at org org-b" in record.getMessage()


def test_deploy_refuses_an_unapproved_job_even_with_the_approved_app(tmp_path):
    component, path = _component(tmp_path)
    path.write_text(render(ApprovedJobs("org-b")))
    error, deployer = _deploy(component, APP)
    assert "org-b has not approved job modeller/esm2-run" in error and deployer.calls == []


def _launch(component, workspace, job_meta=None):
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey

    ctx = _context(**{FLContextKey.JOB_META: job_meta or meta(), FLContextKey.WORKSPACE_OBJECT: workspace,
                      FLContextKey.JOB_LAUNCHER: ["nvflare's launcher"]})
    component.handle_event(EventType.BEFORE_JOB_LAUNCH, ctx)
    return ctx.get_prop(FLContextKey.JOB_LAUNCHER)


def _workspace(tmp_path, files: dict[str, bytes]):
    from nvflare.apis.workspace import Workspace

    root = tmp_path / "ws"
    for folder in ("startup", "local"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    workspace = Workspace(str(root), site_name="site-1")
    write_tree(Path(workspace.get_app_dir("j-1")), {**files, ".__nvfl_sig.json": b"{}"})
    return workspace


def test_launch_starts_the_approved_app_as_deployed(tmp_path):
    component, _ = _component(tmp_path)
    assert _deploy(component, APP)[0] == ""
    assert _launch(component, _workspace(tmp_path, APP)) == ["nvflare's launcher"]


@pytest.mark.parametrize("change", ["other code on disk", "revoked", "never deployed", "another FederatedJob"])
def test_launch_refuses_and_no_job_process_starts(tmp_path, caplog, change):
    component, path = _component(tmp_path)
    files = APP
    if change != "never deployed":
        assert _deploy(component, APP)[0] == ""
    if change == "other code on disk":
        files = {**APP, "custom/client.py": b"print('changed after deployment')\n"}
    if change == "revoked":
        path.write_text(render(ApprovedJobs("org-b")))
    job_meta = meta(uid="uid-2") if change == "another FederatedJob" else None
    with caplog.at_level("ERROR"):
        launchers = _launch(component, _workspace(tmp_path, files), job_meta)
    (refusing,) = launchers
    with pytest.raises(RuntimeError) as err:
        refusing.launch_job(meta(), _context())
    assert "org-b" in str(err.value)
    assert any("REFUSED launch of NVFlare job j-1" in r.getMessage() for r in caplog.records)


# --- the component: revocation -------------------------------------------------------------------


class FakeHandle:
    def __init__(self):
        self.terminated = 0

    def terminate(self):
        self.terminated += 1


class FakeEngine:
    """What the component uses of NVFlare's ClientEngine (client_engine.py) and its JobExecutor."""

    def __init__(self, workspace: Path):
        from nvflare.apis.fl_constant import RunProcessKey

        self.key = RunProcessKey.JOB_HANDLE
        self.args = SimpleNamespace(workspace=str(workspace))
        self.client_executor = SimpleNamespace(run_processes={})
        self.aborted: list[str] = []

    def run(self, job_id: str) -> FakeHandle:
        handle = FakeHandle()
        self.client_executor.run_processes[job_id] = {self.key: handle}
        (Path(self.args.workspace) / job_id).mkdir(parents=True, exist_ok=True)
        return handle

    def end(self, job_id: str) -> None:
        self.client_executor.run_processes.pop(job_id)

    def get_all_job_ids(self):
        return list(self.client_executor.run_processes)

    def new_context(self):
        return _context()

    def abort_app(self, job_id: str):
        self.aborted.append(job_id)


@pytest.mark.parametrize("change", [
    "uid removed",
    "content hash changed",
    "app digest changed",
])
def test_a_withdrawn_approval_stops_the_running_job(tmp_path, caplog, change):
    from nvflare.apis.fl_constant import FLMetaKey

    component, path = _component(tmp_path)
    assert _deploy(component, APP)[0] == ""
    engine = FakeEngine(tmp_path / "ws")
    handle = engine.run("j-1")
    assert component.recheck(engine) == [] and handle.terminated == 0
    path.write_text({
        "uid removed": render(ApprovedJobs("org-b")),
        "content hash changed": render(ApprovedJobs("org-b", (ApprovedJob("uid-1", "sha256:" + "cd" * 32, "m/r",
                                                                          DIGEST),))),
        "app digest changed": document("sha256:" + "00" * 32),
    }[change])
    with caplog.at_level("ERROR"):
        assert component.recheck(engine) == ["j-1"]
    assert handle.terminated == 1, "the job's process is ended through its handle"
    rc = (tmp_path / "ws" / "j-1" / FLMetaKey.PROCESS_RC_FILE).read_text()
    assert int(rc) == 9, "NVFlare reports the job to the server as aborted"
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert ("REVOKED NVFlare job j-1 (name modeller-esm2-run, FederatedJob modeller/esm2-run, "
            f"content hash {HASH}) at org org-b: org-b") in record.getMessage()
    assert record.getMessage().endswith("; stopping the job at this site now")
    assert component.recheck(engine) == [] and handle.terminated == 1, "revoked once"
    engine.end("j-1")
    with caplog.at_level("INFO"):
        component.recheck(engine)
    assert any("revoked NVFlare job j-1 no longer runs at org org-b" in r.getMessage() for r in caplog.records)


def test_a_revoked_job_that_keeps_running_is_stopped_again(tmp_path, monkeypatch):
    from flare_operator.nvflare import enforcement

    component, path = _component(tmp_path)
    assert _deploy(component, APP)[0] == ""
    engine = FakeEngine(tmp_path / "ws")
    handle = engine.run("j-1")
    path.write_text(render(ApprovedJobs("org-b")))
    component.recheck(engine)
    monkeypatch.setattr(enforcement, "RESTOP_SECONDS", 0.0)
    component.recheck(engine)
    assert handle.terminated == 2


def test_without_a_handle_nvflare_aborts_the_job(tmp_path):
    component, path = _component(tmp_path)
    assert _deploy(component, APP)[0] == ""
    engine = FakeEngine(tmp_path / "ws")
    engine.run("j-1")
    engine.client_executor.run_processes["j-1"] = {}
    path.write_text(render(ApprovedJobs("org-b")))
    component.recheck(engine)
    deadline = time.time() + 5
    while not engine.aborted and time.time() < deadline:
        time.sleep(0.01)
    assert engine.aborted == ["j-1"]


def test_a_running_job_the_component_never_deployed_is_stopped(tmp_path):
    component, _ = _component(tmp_path)
    engine = FakeEngine(tmp_path / "ws")
    handle = engine.run("j-9")
    assert component.recheck(engine) == ["j-9"] and handle.terminated == 1


def test_an_unreadable_document_stops_jobs_only_when_it_stays_unreadable(tmp_path):
    from flare_operator.nvflare.enforcement import UNREADABLE_CHECKS

    component, path = _component(tmp_path)
    assert _deploy(component, APP)[0] == ""
    engine = FakeEngine(tmp_path / "ws")
    handle = engine.run("j-1")
    path.unlink()
    for _ in range(UNREADABLE_CHECKS - 1):
        assert component.recheck(engine) == []
    path.write_text(document())  # back: the count starts again
    assert component.recheck(engine) == []
    path.write_text("not json")
    results = [component.recheck(engine) for _ in range(UNREADABLE_CHECKS)]
    assert results[-1] == ["j-1"] and handle.terminated == 1


def test_allowed_jobs_keep_running_and_nothing_is_read_when_nothing_runs(tmp_path):
    component, path = _component(tmp_path)
    engine = FakeEngine(tmp_path / "ws")
    path.unlink()
    assert component.recheck(engine) == []  # nothing runs: the document is not even needed
    path.write_text(document())
    assert _deploy(component, APP)[0] == ""
    handle = engine.run("j-1")
    for _ in range(3):
        assert component.recheck(engine) == []
    assert handle.terminated == 0


def test_the_watch_runs_from_system_start_to_system_end(tmp_path):
    from nvflare.apis.event_type import EventType

    component, path = _component(tmp_path, recheck_seconds=0.05)
    assert _deploy(component, APP)[0] == ""
    engine = FakeEngine(tmp_path / "ws")
    handle = engine.run("j-1")
    ctx = _context()
    ctx.get_engine = lambda: engine
    component.handle_event(EventType.SYSTEM_START, ctx)
    path.write_text(render(ApprovedJobs("org-b")))
    deadline = time.time() + 5
    while not handle.terminated and time.time() < deadline:
        time.sleep(0.01)
    assert handle.terminated == 1
    component.handle_event(EventType.SYSTEM_END, ctx)
    component._monitor.join(timeout=5)
    assert not component._monitor.is_alive()
