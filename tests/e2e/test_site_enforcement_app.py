"""Site enforcement inside real NVFlare clients: the code that runs is the code the site approved, and
a withdrawn approval stops the job at that site within seconds.

A provisioned federation (real server, two real clients, real certificates) whose clients carry the
site's enforcement component (``nvflare/enforcement.py``, configured as a site would be by
``builders/federation.enforcement_resources``) and an approved-jobs document written here the way
each site's gateway writes it: the FederatedJob's uid and content hash, and the ``appDigest`` of the
``app_<site>/`` folder the site builds itself from the catalog. The jobs are submitted straight
through the FLARE API with the admin kit, as a compromised hub could.

- Same uid and content hash, different client code (a marker written first thing by the client
  script): every site refuses the deployment before unpacking it; the refusal is in each client's
  log and in the server's job record, the marker never appears and the data is never read. The
  job with exactly the approved app runs.
- A multi-round job whose approval is withdrawn at one site while it trains: that site's job
  process ends within seconds (measured and printed), no further round runs there, and the job
  does not complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BASE_PARAMS, PocFederation, stale_atime, was_read
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e

SITES = ["site-1", "site-2"]
UID = "5b1d2c1e-0000-4000-8000-00000000e2e0"
CONTENT_HASH = "sha256:" + "e2" * 32
FEDERATED_JOB = "modeller/esm2-run"
WORKER = "nvflare.private.fed.app.client.worker_process"


def build(name: str, params: dict, data: dict, tamper_marker: Path | None = None) -> dict[str, bytes]:
    """The job's files (build_job from the catalog); with ``tamper_marker``, each site's client script
    first writes that marker (``<marker>-<site>``): other code under the approved job's identity."""
    from flare_operator.builders.nvflare_job import build_job
    from flare_operator.catalog import load_app

    app = load_app("esm2-finetune")
    files = build_job(app, {**BASE_PARAMS, **params},
                      [{"name": site, "datasetPath": data["sites"][site]["path"]} for site in SITES],
                      job_name=name, metadata={"uid": UID, "contentHash": CONTENT_HASH, "job": FEDERATED_JOB})
    if tamper_marker is not None:
        script = app.nvflare["clientScript"]
        for site in SITES:
            path = f"{name}/app_{site}/custom/{script}"
            injected = f"open({str(tamper_marker)!r} + '-{site}', 'w').write('ran')\n".encode()
            files[path] = injected + files[path]
    return files


def approved_digests(files: dict[str, bytes], name: str) -> dict[str, str]:
    """What each site approves: the app_digest of the app_<site>/ folder it builds itself."""
    from flare_operator.builders.nvflare_job import site_app_files
    from flare_operator.policy.site_enforcement import app_digest

    return {site: app_digest(site_app_files(files, name, site)) for site in SITES}


class EnforcedFederation(PocFederation):
    """A PocFederation whose clients enforce their site's approved-jobs document."""

    def __init__(self, root: Path):
        from flare_operator.builders.federation import ENFORCEMENT_RESOURCES_FILE, enforcement_resources

        super().__init__(root, SITES)
        for site in SITES:
            kit = self.kit(site)
            (kit / "enforcement").mkdir()
            self.write_approved(site, {})
            resources = enforcement_resources(str(self.approved_file(site)), self.info["orgs"][site])
            (kit / "local" / ENFORCEMENT_RESOURCES_FILE).write_text(json.dumps(resources, indent=1))

    def kit(self, site: str) -> Path:
        return self.info["prod"] / site

    def approved_file(self, site: str) -> Path:
        return self.kit(site) / "enforcement" / "approved.json"

    def write_approved(self, site: str, digests: dict[str, str]) -> None:
        """As the gateway does: the whole document, replaced atomically."""
        from flare_operator.policy.site_enforcement import ApprovedJob, ApprovedJobs, render

        doc = ApprovedJobs(self.info["orgs"][site])
        if site in digests:
            doc = doc.with_job(ApprovedJob(UID, CONTENT_HASH, FEDERATED_JOB, digests[site]))
        tmp = self.approved_file(site).with_suffix(".tmp")
        tmp.write_text(render(doc))
        os.replace(tmp, self.approved_file(site))

    def client_log(self, site: str) -> str:
        return (self.root / f"{site}.log").read_text(errors="replace")

    def submit(self, files: dict[str, bytes], name: str) -> str:
        from flare_operator.builders.nvflare_job import write_job

        folder = write_job(files, self.root / "submit" / name)
        return self.session.submit_job(str(folder))

    def meta(self, job_id: str) -> dict:
        return self.session.get_job_meta(job_id)

    def wait_finished(self, job_id: str, timeout: float) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive()
            meta = self.meta(job_id)
            if str(meta.get("status", "")).startswith("FINISHED"):
                return meta
            time.sleep(1)
        raise TimeoutError(f"job {job_id} not finished in {timeout}s: {self.meta(job_id).get('status')}\n{self.logs()}")


@pytest.fixture
def federation(tmp_path):
    fed = EnforcedFederation(tmp_path / "poc")
    try:
        yield fed
    finally:
        fed.stop()


def own_data(e2e_data: dict, tmp: Path) -> dict:
    """A copy of the data (these tests watch when a site's file is read)."""
    sites = {}
    for site in SITES:
        path = tmp / "data" / site / "scl.csv"
        path.parent.mkdir(parents=True)
        shutil.copy(e2e_data["sites"][site]["path"], path)
        sites[site] = {**e2e_data["sites"][site], "path": str(path)}
    return {**e2e_data, "sites": sites}



def atime_works(tmp: Path) -> bool:
    probe = tmp / "atime-probe"
    probe.write_text("x")
    stale_atime(probe)
    probe.read_bytes()
    return was_read(probe)


def job_pids(job_id: str, site: str) -> list[int]:
    """The job's processes at a site (the worker NVFlare starts: ``worker_process -n <job> -c <site>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if WORKER in args and job_id in args and site in args:
            pids.append(int(entry.name))
    return pids


def test_sites_refuse_other_code_under_an_approved_identity_and_run_the_approved_app(federation, e2e_data, tmp_path):
    data = own_data(e2e_data, tmp_path)
    params = {"rounds": 1, "localSteps": 2}
    honest = build("esm2-run", params, data)
    digests = approved_digests(honest, "esm2-run")
    for site in SITES:
        federation.write_approved(site, digests)
    federation.start()
    marker = tmp_path / "marker"
    tampered = build("esm2-run", params, data, tamper_marker=marker)
    assert approved_digests(tampered, "esm2-run") != digests, "the tampered app digests differently"
    records_reads = atime_works(tmp_path)
    for site in SITES:
        stale_atime(Path(data["sites"][site]["path"]))

    try:
        job_id = federation.submit(tampered, "tampered")
        meta = federation.wait_finished(job_id, timeout=120)
        detail = "\n".join(meta.get("job_deploy_detail") or [])
        print(f"tampered job {job_id}: {meta['status']}\n{detail}")
        assert meta["status"] == "FINISHED:FAILED_TO_RUN", meta["status"]
        for site in SITES:
            org = federation.info["orgs"][site]
            assert f"{site}: " in detail and f"{org} refuses NVFlare job {job_id} for job {FEDERATED_JOB}" in detail
            assert "the hub sent other code under this job's identity" in detail
            log = federation.client_log(site)
            assert re.search(rf"ERROR.*REFUSED deployment of NVFlare job {job_id} \(.*content hash {CONTENT_HASH}\) "
                             rf"at org {org}: .*digests to sha256:", log), log[-3000:]
            assert not (federation.kit(site) / job_id).exists(), f"{site} unpacked the refused app"
            assert not Path(f"{marker}-{site}").exists(), f"the refused code ran at {site}"
            if records_reads:
                assert not was_read(Path(data["sites"][site]["path"])), f"{site}'s data was read"

        # Exactly the approved app: every site deploys and runs it, and reads its data.
        job_id = federation.submit(honest, "honest")
        meta = federation.wait_finished(job_id, timeout=240)
        assert meta["status"] == "FINISHED:COMPLETED", (meta["status"], federation.logs())
        for site in SITES:
            assert f"starting NVFlare job {job_id}: its app digests to {digests[site][:19]}" in federation.client_log(site)
            if records_reads:
                assert was_read(Path(data["sites"][site]["path"])), f"the approved job read {site}'s data"
    except BaseException:
        print(federation.logs(6000))
        raise


def test_revoking_a_running_job_stops_it_at_that_site_within_seconds(federation, e2e_data, tmp_path):
    data = own_data(e2e_data, tmp_path)
    rounds = 40
    files = build("esm2-long", {"rounds": rounds, "localSteps": 2}, data)
    digests = approved_digests(files, "esm2-long")
    for site in SITES:
        federation.write_approved(site, digests)
    federation.start()
    revoked_site, org = "site-2", federation.info["orgs"]["site-2"]
    round_line = re.compile(rf"\[{revoked_site}\] round (\d+):")

    try:
        job_id = federation.submit(files, "long")
        deadline = time.time() + 180
        while not round_line.findall(federation.client_log(revoked_site)):
            assert time.time() < deadline, f"no round at {revoked_site}\n{federation.logs()}"
            assert not str(federation.meta(job_id).get("status", "")).startswith("FINISHED"), federation.logs()
            time.sleep(0.5)
        assert job_pids(job_id, revoked_site), "the job runs at the site"

        # The site's gateway withdraws the approval (a rejected or revoked JobApproval).
        federation.write_approved(revoked_site, {})
        revoked_at = time.monotonic()
        while job_pids(job_id, revoked_site):
            assert time.monotonic() - revoked_at < 60, "the revoked job still runs at the site"
            time.sleep(0.05)
        stopped_after = time.monotonic() - revoked_at
        rounds_run = len(round_line.findall(federation.client_log(revoked_site)))
        print(f"revocation -> job process ended at {revoked_site}: {stopped_after:.2f}s "
              f"(after {rounds_run} of {rounds} rounds there)")
        assert stopped_after < 10, f"the job ran on for {stopped_after:.1f}s after its approval was withdrawn"

        log = federation.client_log(revoked_site)
        assert re.search(rf"ERROR.*REVOKED NVFlare job {job_id} \(name esm2-long, FederatedJob {FEDERATED_JOB}, "
                         rf"content hash {CONTENT_HASH}\) at org {org}: {org} has not approved job {FEDERATED_JOB}",
                         log), log[-3000:]
        meta = federation.wait_finished(job_id, timeout=120)
        print(f"job {job_id} at the server: {meta['status']}")
        assert meta["status"] != "FINISHED:COMPLETED", "the job completed without the revoked site's data?"
        assert len(round_line.findall(federation.client_log(revoked_site))) == rounds_run, \
            "a round ran at the site after the revocation"
        assert rounds_run < rounds
        # the other site's job process ends too (it may still be shutting down when the server reports)
        wait_for(lambda: not job_pids(job_id, "site-1"), timeout=60, message="the job ended everywhere")
    except BaseException:
        print(federation.logs(6000))
        raise
