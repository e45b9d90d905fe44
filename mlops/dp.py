"""Training the titration model: DP-SGD (Opacus) and two non-private baselines.

`train_dp` trains `TitrationModel` with DP-SGD: per-sample gradients clipped to
`max_grad_norm`, Gaussian noise, Poisson sampling of each batch (expected size
`batch_size`), and the noise multiplier chosen by Opacus for (`target_epsilon`, `delta`)
over the planned epochs. The epsilon reported is the one the engine's accountant says was
spent, for the steps actually taken. `train_baseline` trains the same architecture with the
same optimizer, data and hyper-parameters minus clipping and noise, so the cost of privacy
is visible; `train_sklearn_baseline` fits scikit-learn's multinomial logistic regression as
an independent reference.

Privacy notes a reviewer needs:

* The unit of privacy is one training row. Training sets hold several rows per patient (one
  per snapshot, `mlops.dataset`), and a patient with k rows is protected only by group
  privacy: roughly k * epsilon, with delta growing too. Patient-level DP needs at most one
  row per patient (or user-level DP-SGD, which this module does not implement), and then n
  below counts patients. `privacy_unit` in the record says "row".
* delta: refused above 1/(10 n) for n training rows (the project's rule): a delta near 1/n
  allows a mechanism that publishes one whole record.
* secure_mode stays off and is refused. Opacus's secure_mode draws noise and batches from
  torchcsprng, which does not install here (no distribution for this Python and torch), so
  noise and sampling use torch's seeded PRNG, which is not cryptographically secure, and the
  floating-point noise attack mitigations are not applied. The epsilon is that of the
  idealised mechanism. Opacus says so with a "Secure RNG turned off" UserWarning on every
  run; it is deliberately not silenced here.
* Standardization: a `standardizer` computed from the private training data (the default,
  `Standardizer.fit(X)`) is itself a release of per-feature means and SDs that epsilon does
  NOT cover. A DP deployment must pass public scales (clinically fixed centres and spreads,
  e.g. SBP centre 135 mmHg, scale 15 mmHg) fixed before seeing the data.
  `TrainResult.scales_from_training_data` and the model metadata record which was used.
* Temperature scaling (`TitrationModel.calibrate`) fits one scalar on a calibration split;
  if that split is private data, it too is outside epsilon: calibrate on held-out data that
  may be used non-privately, or account for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import torch
from opacus import PrivacyEngine  # type: ignore[import-untyped]
from opacus import __version__ as opacus_version
from opacus.accountants.rdp import RDPAccountant  # type: ignore[import-untyped]
from sklearn import __version__ as sklearn_version  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlops.model import (
    N_CLASSES,
    MetaValue,
    Standardizer,
    TitrationModel,
    as_features,
    as_labels,
    centred,
    linear_from,
)

Accountant = Literal["rdp", "prv"]
# What one unit of the DP guarantee protects (see the module docstring).
PRIVACY_UNIT: Final = "row"
ACCOUNTANTS: Final[frozenset[str]] = frozenset({"rdp", "prv"})
# Opacus's default RDP orders stop at 63; small sampling rates or few steps put the optimal
# order above that (Opacus then warns and the bound is loose), so larger orders are added.
# Extra orders can only tighten the bound: epsilon is a minimum over the orders.
RDP_ORDERS: Final[tuple[float, ...]] = (
    *(float(a) for a in RDPAccountant.DEFAULT_ALPHAS),
    80.0,
    96.0,
    128.0,
    192.0,
    256.0,
    384.0,
    512.0,
    768.0,
    1024.0,
)


@dataclass(frozen=True)
class TrainResult:
    """A trained model and how it was trained; epsilon is inf when training was not private."""

    model: TitrationModel
    trainer: str  # "dp-sgd", "sgd" or "sklearn-lbfgs"
    epsilon: float
    delta: float
    target_epsilon: float | None
    noise_multiplier: float
    max_grad_norm: float | None
    sample_rate: float
    steps: int
    epochs: int
    accountant: str | None  # "rdp" or "prv" for DP training, else None
    scales_from_training_data: bool

    @property
    def private(self) -> bool:
        """True when the model carries a differential-privacy guarantee."""
        return self.accountant is not None and math.isfinite(self.epsilon)

    def privacy_record(self) -> dict[str, str | int | float | bool | None]:
        """The privacy facts as JSON-ready values (epsilon None when not private)."""
        return {
            "private": self.private,
            "trainer": self.trainer,
            "privacy_unit": PRIVACY_UNIT,
            "epsilon": self.epsilon if math.isfinite(self.epsilon) else None,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "epochs": self.epochs,
            "poisson_sampling": self.private,
            "secure_mode": False,
            "scales_from_training_data": self.scales_from_training_data,
        }


def max_delta(n: int) -> float:
    """The largest delta the project allows for n training rows: 1/(10 n)."""
    if n <= 0:
        raise ValueError("n must be positive")
    return 1.0 / (10.0 * n)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and positive, got {value}")


def _prepare(
    X: np.ndarray,
    y: np.ndarray,
    feature_names: tuple[str, ...],
    standardizer: Standardizer | None,
) -> tuple[TitrationModel, torch.Tensor, torch.Tensor]:
    arr = as_features(X, len(feature_names))
    labels = as_labels(y, arr.shape[0])
    if arr.shape[0] == 0:
        raise ValueError("no training rows")
    model = TitrationModel(feature_names, standardizer or Standardizer.fit(arr))
    z = torch.from_numpy(model.standardize(arr))
    return model, z, torch.from_numpy(labels)


def _run_epochs(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    epochs: int,
) -> int:
    steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            # The input does not need a gradient, but without one torch warns that Opacus's
            # full backward hooks fire on output gradients only; asking for it keeps torch
            # on its normal hook path, and costs one [batch, d] product for this model.
            xb.requires_grad_(True)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(module(xb), yb)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            steps += 1
    return steps


@contextmanager
def _prv_domain_warning_silenced(accountant: str) -> Iterator[None]:
    """Hide one Opacus warning that the PRV accountant raises and no caller can act on."""
    with warnings.catch_warnings():
        if accountant == "prv":
            # Opacus's PRV accountant sizes its discretisation domain with an internal RDP
            # bound over the default orders (at delta_error / (8 * steps) for one step), whose
            # optimum lies beyond them. That only widens the domain, which is conservative, and
            # the orders cannot be passed in. The RDP accountant gets wider orders instead
            # (RDP_ORDERS), so there this warning still shows. Not thread-safe (as
            # warnings.catch_warnings never is): training is a batch job.
            warnings.filterwarnings(
                "ignore",
                message="Optimal order is the largest alpha",
                category=UserWarning,
                module=r"opacus\.accountants\.analysis\.rdp",
            )
        yield


def _check_schedule(epochs: int, batch_size: int, n: int) -> None:
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n}")


def train_dp(
    X: np.ndarray,
    y: np.ndarray,
    *,
    feature_names: tuple[str, ...],
    target_epsilon: float,
    delta: float,
    max_grad_norm: float,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    accountant: Accountant = "rdp",
    standardizer: Standardizer | None = None,
    secure_mode: bool = False,
) -> TrainResult:
    """Train with DP-SGD to (target_epsilon, delta); report the epsilon actually spent.

    `batch_size` is the expected batch size under Poisson sampling (sample rate
    1/ceil(n / batch_size)). Pass a public `standardizer` for a DP deployment; the default
    fits one on X, which epsilon does not cover (see the module docstring).
    """
    if secure_mode:
        raise ValueError(
            "secure_mode is not supported: it needs torchcsprng, which does not install "
            "in this environment (see mlops.dp's module docstring)"
        )
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {sorted(ACCOUNTANTS)}")
    _check_positive(target_epsilon=target_epsilon, max_grad_norm=max_grad_norm, lr=lr)
    n = int(np.asarray(X).shape[0])
    if not (0.0 < delta <= max_delta(n)):
        raise ValueError(
            f"delta must be in (0, 1/(10 n)] = (0, {max_delta(n):.3g}] for n = {n}, got {delta}"
        )
    _check_schedule(epochs, batch_size, n)
    model, z, labels = _prepare(X, y, feature_names, standardizer)
    module = model.linear
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    loader = DataLoader(
        TensorDataset(z, labels),
        batch_size=batch_size,
        shuffle=True,  # replaced by Poisson sampling below; this generator seeds it
        generator=torch.Generator().manual_seed(seed),
    )
    order_kwargs: dict[str, Any] = {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}
    engine = PrivacyEngine(accountant=accountant, secure_mode=False)
    with _prv_domain_warning_silenced(accountant):
        dp_module, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            target_epsilon=target_epsilon,
            target_delta=delta,
            epochs=epochs,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(seed + 1),
            grad_sample_mode="hooks",
            **order_kwargs,
        )
    _run_epochs(dp_module, dp_optimizer, dp_loader, epochs)
    with _prv_domain_warning_silenced(accountant):
        epsilon = float(engine.accountant.get_epsilon(delta, **order_kwargs))
    history = list(engine.accountant.history)  # [(noise_multiplier, sample_rate, steps)]
    steps = sum(int(h[2]) for h in history)
    noise_multiplier = float(dp_optimizer.noise_multiplier)
    sample_rate = float(history[-1][1]) if history else 1.0 / len(loader)
    # A fresh layer: the trained one still carries Opacus's hooks and grad_sample buffers.
    linear = linear_from(*centred(model.weight, model.bias))
    scales_from_data = standardizer is None
    metadata: dict[str, MetaValue] = {
        "trainer": "dp-sgd",
        "epsilon": epsilon,
        "delta": delta,
        "target_epsilon": target_epsilon,
        "accountant": accountant,
        "noise_multiplier": noise_multiplier,
        "sample_rate": sample_rate,
        "steps": steps,
        "max_grad_norm": max_grad_norm,
        "secure_mode": False,
        "privacy_unit": PRIVACY_UNIT,
        "scales_from_training_data": scales_from_data,
        "opacus_version": str(opacus_version),
        "torch_version": torch.__version__,
    }
    trained = TitrationModel(
        model.feature_names, model.standardizer, linear=linear, metadata=metadata
    )
    return TrainResult(
        model=trained,
        trainer="dp-sgd",
        epsilon=epsilon,
        delta=delta,
        target_epsilon=target_epsilon,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        sample_rate=sample_rate,
        steps=steps,
        epochs=epochs,
        accountant=accountant,
        scales_from_training_data=scales_from_data,
    )


def train_baseline(
    X: np.ndarray,
    y: np.ndarray,
    *,
    feature_names: tuple[str, ...],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    standardizer: Standardizer | None = None,
) -> TrainResult:
    """Train the same model with plain mini-batch SGD: no clipping, no noise, no privacy."""
    _check_positive(lr=lr)
    n = int(np.asarray(X).shape[0])
    _check_schedule(epochs, batch_size, n)
    model, z, labels = _prepare(X, y, feature_names, standardizer)
    loader = DataLoader(
        TensorDataset(z, labels),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    steps = _run_epochs(
        model.linear, torch.optim.SGD(model.linear.parameters(), lr=lr), loader, epochs
    )
    trained = TitrationModel(
        model.feature_names,
        model.standardizer,
        linear=linear_from(*centred(model.weight, model.bias)),
        metadata={
            "trainer": "sgd",
            "steps": steps,
            "scales_from_training_data": standardizer is None,
            "torch_version": torch.__version__,
        },
    )
    return TrainResult(
        model=trained,
        trainer="sgd",
        epsilon=math.inf,
        delta=0.0,
        target_epsilon=None,
        noise_multiplier=0.0,
        max_grad_norm=None,
        sample_rate=1.0 / len(loader),
        steps=steps,
        epochs=epochs,
        accountant=None,
        scales_from_training_data=standardizer is None,
    )


def train_sklearn_baseline(
    X: np.ndarray,
    y: np.ndarray,
    *,
    feature_names: tuple[str, ...],
    standardizer: Standardizer | None = None,
    C: float = 1.0,
    max_iter: int = 1000,
) -> TrainResult:
    """Fit scikit-learn's multinomial logistic regression (L-BFGS, L2) as a TitrationModel."""
    _check_positive(C=C)
    model, z, labels = _prepare(X, y, feature_names, standardizer)
    present = set(labels.tolist())
    if present != set(range(N_CLASSES)):
        raise ValueError("the scikit-learn baseline needs all three classes in y")
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(z.numpy(), labels.numpy())
    # With three classes and lbfgs scikit-learn fits the multinomial (softmax) model, whose
    # coef_ [3, d] and intercept_ [3] are exactly this model's weight and bias.
    weight = np.asarray(clf.coef_, dtype=np.float64)
    bias = np.asarray(clf.intercept_, dtype=np.float64)
    iterations = int(np.max(clf.n_iter_))
    fitted = TitrationModel(
        model.feature_names,
        model.standardizer,
        linear=linear_from(*centred(weight, bias)),
        metadata={
            "trainer": "sklearn-lbfgs",
            "C": C,
            "steps": iterations,
            "scales_from_training_data": standardizer is None,
            "sklearn_version": str(sklearn_version),
        },
    )
    return TrainResult(
        model=fitted,
        trainer="sklearn-lbfgs",
        epsilon=math.inf,
        delta=0.0,
        target_epsilon=None,
        noise_multiplier=0.0,
        max_grad_norm=None,
        sample_rate=1.0,
        steps=iterations,
        epochs=0,
        accountant=None,
        scales_from_training_data=standardizer is None,
    )
