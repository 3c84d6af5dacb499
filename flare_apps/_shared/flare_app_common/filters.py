"""NVFlare client output filter: Gaussian client-level DP on WEIGHT_DIFF results."""

from __future__ import annotations

import os

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from .dp import PRIVACY_RECORD, clip_and_noise, epsilon_spent, gaussian_event, write_privacy_record


class GaussianDPFilter(DXOFilter):
    """Clip each site's update to ``clip_norm`` and add Gaussian noise (std = noise_multiplier * clip_norm).

    Adds to the result's DXO meta: ``dp_epsilon`` (cumulative, this site, after this round),
    ``dp_delta``, ``dp_rounds``, ``dp_noise_multiplier``, ``dp_clip_norm``, ``dp_update_norm``.
    Only WEIGHT_DIFF results are accepted: a full-weights result cannot be clipped as an update.
    """

    def __init__(
        self,
        clip_norm: float = 1.0,
        noise_multiplier: float = 1.0,
        delta: float = 1e-5,
        accountant: str = "rdp",
        prior_releases: int = 0,
    ):
        """``prior_releases``: updates this site already released for the same job in earlier
        attempts (a job resumed after suspend or a server failure), so epsilon keeps counting."""
        super().__init__(
            supported_data_kinds=[DataKind.WEIGHT_DIFF], data_kinds_to_filter=[DataKind.WEIGHT_DIFF]
        )
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.accountant = accountant
        self.releases = int(prior_releases)
        self.prior_releases = int(prior_releases)
        self._rng = np.random.default_rng()  # OS entropy: DP noise must not be reproducible

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        # fail closed: anything that is not a parameter difference never leaves the site un-noised
        try:
            dxo = from_shareable(shareable)
        except Exception:
            dxo = None
        if dxo is None or dxo.data_kind != DataKind.WEIGHT_DIFF:
            kind = getattr(dxo, "data_kind", None)
            self.log_error(
                fl_ctx, f"GaussianDPFilter: refusing to release a {kind} result (needs WEIGHT_DIFF)"
            )
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        return super().process(shareable, fl_ctx)

    def process_dxo(self, dxo, shareable: Shareable, fl_ctx: FLContext):
        if not isinstance(dxo.data, dict):
            self.log_error(fl_ctx, "GaussianDPFilter expects a dict of arrays")
            return None
        noised, norm = clip_and_noise(dxo.data, self.clip_norm, self.noise_multiplier, self._rng)
        self.releases += 1
        self._record(fl_ctx)
        eps = epsilon_spent(self.noise_multiplier, self.releases, self.delta, self.accountant)
        dxo.data = noised
        dxo.meta.update(
            {
                "dp_epsilon": eps,
                "dp_delta": self.delta,
                "dp_rounds": self.releases,
                "dp_noise_multiplier": self.noise_multiplier,
                "dp_clip_norm": self.clip_norm,
                "dp_update_norm": norm,
                "dp_accountant": self.accountant,
            }
        )
        self.log_info(
            fl_ctx, f"DP: update norm {norm:.4f} clipped to {self.clip_norm}, epsilon so far {eps:.4f}"
        )
        return dxo

    def _record(self, fl_ctx: FLContext) -> None:
        """This attempt's releases, in the job folder (dp.PRIVACY_RECORD) before the update leaves."""
        try:
            run_dir = fl_ctx.get_workspace().get_run_dir(fl_ctx.get_job_id())
        except Exception:  # no engine/workspace (unit use): nothing to record into
            return
        if run_dir and os.path.isdir(run_dir):
            write_privacy_record(os.path.join(run_dir, PRIVACY_RECORD), "client", self.delta, None,
                                 [gaussian_event(self.noise_multiplier, self.releases - self.prior_releases)])


__all__ = ["GaussianDPFilter", "from_shareable"]
