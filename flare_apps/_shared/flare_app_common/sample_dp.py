"""Sample-level differential privacy at one site: DP-SGD for the whole job, with Opacus.

Each local optimizer step draws a Poisson sample of the site's records (rate q = 1 / batches per
epoch, the expected batch the app's ``batchSize``), clips every record's gradient to ``clip_norm``
and adds Gaussian noise (std = noise_multiplier * clip_norm) to their sum (Opacus' per-sample
gradients and DPOptimizer; its Poisson DataLoader). The noise multiplier is calibrated once, before
the first step, for every step the job will take at this site (rounds x local steps, ``dp.py``),
so the epsilon reported after each round never exceeds the target. One engine per site for the
whole job: the model, optimizer and sampler are made private once and kept from round to round.

What leaves the site is a function of the noised steps only, so the app needs no client-level
filter on top. A resumed job passes ``prior_releases`` (rounds this site may already have trained
in earlier attempts): their steps are counted before the first step of this attempt.

Needs torch and opacus (the ``train`` extra). DP-SGD trains in fp32 (Opacus does not support bf16
autocast, opacus#740); callers turn bf16 off.
"""

from __future__ import annotations

import math
import os
import warnings

from .dp import calibrate_sample_noise_multiplier, sample_epsilon_spent, sample_event, write_privacy_record


class SampleDP:
    def __init__(
        self,
        epsilon: float,
        delta: float = 1e-5,
        clip_norm: float = 1.0,
        accountant: str = "rdp",
        rounds: int = 1,
        prior_releases: int = 0,
    ):
        if epsilon is None or float(epsilon) <= 0:
            raise ValueError("sample-level DP needs a target epsilon > 0")
        if float(clip_norm) <= 0:
            raise ValueError("clip_norm must be > 0")
        self.target_epsilon = float(epsilon)
        self.delta = float(delta)
        self.clip_norm = float(clip_norm)
        self.accountant = accountant
        self.rounds = int(rounds)
        self.prior_rounds = int(prior_releases)
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self.steps_per_round = 0
        self.steps = 0  # steps counted so far (prior attempts included)
        self.model = self.optimizer = None
        self._loader = self._it = None

    @staticmethod
    def sample_rate_for(records: int, batch_size: int) -> float:
        """Opacus' Poisson rate for a loader of ``records`` in batches of ``batch_size``."""
        return 1.0 / max(1, math.ceil(records / max(1, batch_size)))

    def make_private(self, model, optimizer, records: list, batch_size: int, collate_fn, steps_per_round: int):
        """Wrap ``model`` and ``optimizer`` (Opacus) and calibrate the noise for the whole job.
        ``records``: the site's training records, each a tuple of tensors; ``collate_fn`` pads a list
        of them into a batch. The private model and optimizer are then ``self.model`` and ``self.optimizer``."""
        import torch
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader

        if not records:
            raise ValueError("sample-level DP needs training records at this site")
        self.steps_per_round = int(steps_per_round)
        self.sample_rate = self.sample_rate_for(len(records), batch_size)
        total = max(1, self.rounds) * self.steps_per_round
        self.noise_multiplier = calibrate_sample_noise_multiplier(
            self.target_epsilon, self.sample_rate, total, self.delta, self.accountant)
        self.steps = self.prior_rounds * self.steps_per_round
        loader = DataLoader(records, batch_size=batch_size, collate_fn=collate_fn)
        # Opacus' hooks on a first layer whose input (token ids) needs no gradient: harmless, once per step.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        with warnings.catch_warnings():  # "Secure RNG turned off": see _secret_generator
            warnings.simplefilter("ignore", UserWarning)
            engine = PrivacyEngine(accountant="rdp")
        model.train()  # Opacus validates a model in training mode (the site may just have evaluated it)
        self.model, self.optimizer, self._loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.clip_norm, poisson_sampling=True, noise_generator=_secret_generator(torch))
        self._loader.batch_sampler.generator = _secret_generator(torch)

    def next(self):
        """The next Poisson batch (ids, mask, labels); an empty draw (probability about e^-batch) is
        drawn again — it would add noise only."""
        for _ in range(1000):
            if self._it is None:
                self._it = iter(self._loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            if len(batch) == 3 and len(batch[2]) > 0:
                return batch
        raise RuntimeError("sample-level DP: 1000 empty Poisson batches in a row")

    def round_done(self) -> dict:
        """Count one round of steps; the metrics a round reports (epsilon so far at this site)."""
        self.steps += self.steps_per_round
        return {
            "dp_level": "sample",
            "dp_epsilon": self.epsilon(),
            "dp_target_epsilon": self.target_epsilon,
            "dp_delta": self.delta,
            "dp_noise_multiplier": self.noise_multiplier,
            "dp_clip_norm": self.clip_norm,
            "dp_sample_rate": self.sample_rate,
            "dp_steps": self.steps,
            "dp_accountant": self.accountant,
        }

    def write_record(self, path: str) -> None:
        """Before a round's first step: this attempt's privacy event, counted to the end of that round
        (dp.PRIVACY_RECORD; a client killed mid-round has used no more than it says). Earlier attempts
        of a resumed job wrote theirs into their own job folders. Replaced atomically."""
        own = self.steps - self.prior_rounds * self.steps_per_round + self.steps_per_round
        write_privacy_record(path, "sample", self.delta, self.target_epsilon,
                             [sample_event(self.noise_multiplier, self.sample_rate, own)])

    def epsilon(self) -> float:
        return sample_epsilon_spent(self.noise_multiplier, self.sample_rate, self.steps, self.delta, self.accountant)


def _secret_generator(torch):
    """A torch generator seeded from the OS's entropy. The noise and the Poisson draws must not be
    reproducible from anything public (the job's ``seed`` parameter is in its spec): the noise could
    be subtracted, and subsampling amplifies privacy only while the sample stays secret. Opacus'
    ``secure_mode`` would use torchcsprng, which has no builds for current torch."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big"))
