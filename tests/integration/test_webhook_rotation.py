"""The webhook certificate is rotated by the operator: its liveness probe fails once a third of the
certificate's lifetime is left (a Pod's kubelet then restarts it), and the restarted operator serves
and registers a new one. Here with a certificate of 20 seconds."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from tests.operator_harness import (
    OperatorProcess,
    create_org_namespace,
    free_port,
    gateway_config,
    health,
    install_crds,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


def registered_ca(cp, site: str) -> bytes:
    """The CA the site's validating webhook configuration tells the API server to trust."""
    out = json.loads(cp.kubectl("get", "validatingwebhookconfiguration", f"{site}.site.flareop.io", "-o", "json").stdout)
    (webhook,) = out["webhooks"]
    return base64.b64decode(webhook["clientConfig"]["caBundle"])


def test_liveness_fails_when_the_webhook_certificate_is_due_and_a_restart_renews_it(control_plane, tmp_path):
    cp = control_plane
    install_crds(cp)
    org = f"org-rot-{uuid.uuid4().hex[:5]}"
    create_org_namespace(cp, org, org)
    site = {**gateway_config(org, org), "webhookPort": free_port()}
    config = {"mode": "gateway", "workdir": str(tmp_path / "work"), "resyncSeconds": 2, "heartbeatSeconds": 5}
    port = free_port()
    liveness = ("--liveness", f"http://127.0.0.1:{port}/healthz")
    # A certificate of 20 seconds: renewal is due after about 13 s, before the operator is fully up
    # on a loaded machine, so the probe is unhealthy whenever it first answers.
    short = {**config, "gateways": [{**site, "webhookCertDays": 20 / 86400}]}
    operator = OperatorProcess(cp, tmp_path, short, args=liveness).start()
    restarted = None
    try:
        first = wait_for(lambda: registered_ca(cp, org), timeout=120, message="the webhook registered")
        wait_for(lambda: health(port)[0] == 500, timeout=120, interval=1, message="liveness failing: renewal due")
        assert "restart the operator to renew it" in health(port)[1] or "renew it" in operator.tail(200), \
            operator.tail(60)

        operator.stop()  # what the kubelet does when liveness fails
        # The restarted operator (a year's certificate, the default) is healthy and has registered a new CA.
        restarted = OperatorProcess(cp, tmp_path, {**config, "gateways": [site]}, name="restarted",
                                    args=liveness).start()
        wait_for(lambda: health(port)[0] == 200, timeout=120, message="the restarted operator healthy")
        second = wait_for(lambda: (ca := registered_ca(cp, org)) != first and ca, timeout=60,
                          message="a new CA registered")
        assert second.startswith(b"-----BEGIN CERTIFICATE-----")
    except BaseException:
        print(f"--- operator log\n{operator.tail(80)}")
        if restarted:
            print(f"--- restarted operator log\n{restarted.tail(80)}")
        raise
    finally:
        operator.stop()
        if restarted:
            restarted.stop()
        cp.kubectl("delete", "namespace", org, "--wait=false")
        cp.kubectl("delete", "validatingwebhookconfiguration,mutatingwebhookconfiguration",
                   f"{org}.site.flareop.io", "--ignore-not-found")
