"""RLRegressor: the rlreg pipeline behind scikit-learn's fit / predict / score (`from rlreg import
RLRegressor`; the module is not named after scikit-learn, which it wraps).

fit hands X, y to the in-memory `array:` data source and runs `rlreg train`'s own pipeline
(run_train: data → model → supervised stage → optional RL → sampled evaluation) into a run
directory; predict reads new rows through the same checkpoint code as `rlreg predict`."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from rlreg import console
from rlreg.actors.rollout import RolloutGroup
from rlreg.actors.session import ensure_ray
from rlreg.config import load_config
from rlreg.data.memory import drop_arrays, put_arrays
from rlreg.data.rows import rows_from_arrays
from rlreg.data.splits import split_indices
from rlreg.errors import DataError
from rlreg.evaluate.aggregate import aggregate
from rlreg.evaluate.calibration import check_alpha, prediction_interval, stored_calibration
from rlreg.evaluate.sampling import sample_values
from rlreg.model.checkpoint import load_checkpoint
from rlreg.train.pipeline import run_train
from rlreg.train.task import PREDICT, task_for_rows


class RLRegressor(RegressorMixin, BaseEstimator):
    """A small language model that writes the target as number tokens, trained by rlreg.

    Parameters
    ----------
    config : str or None
        A YAML run config (model, numbers, sft, rl, engine, ray, ... sections); None = defaults.
        Its data section is replaced by the arrays given to fit.
    overrides : tuple of str
        `section.key=value` settings applied after `config`, e.g. ("model.layers=1",).
    sft_steps : int or None
        Supervised steps (None: the config's sft.steps).
    rl_steps : int
        RL steps after the supervised stage; 0 = supervised only.
    samples : int or None
        K samples per input, in the run's evaluation and in predict (None: the config's eval.samples).
    validation_fraction : float
        Share of the rows held out from training for early stopping and for choosing how the K
        samples are aggregated (mean / median / trimmed mean).
    test_fraction : float
        Share of the rows held out for the run's own report (metrics.json: test metrics beside
        HistGradientBoosting and Ridge). The pipeline evaluates a test split, so it is > 0.
    run_dir : str or None
        Folder that receives one fresh run directory per fit; None = a new temporary folder.
        Run directories are kept: they hold the checkpoint predict reads.
    random_state : int or None
        Seeds the splits, the model initialisation, training and the sampling engine;
        None = the config's seeds.
    verbose : int
        0 (default): quiet, like scikit-learn's estimators (what the actors print goes to the run
        directory's logs/); 1: rlreg's own lines, progress bars and results table; 2: also what
        the engines, learner ranks and Ray print.

    Attributes
    ----------
    n_features_in_, feature_names_in_ (when X has string column names),
    run_dir_ (the fit's run directory), checkpoint_ (its model directory), config_ (the RunConfig),
    aggregation_ (chosen on validation), metrics_ ({"val", "test", "baselines"} of the fit's run).

    Notes
    -----
    Each fit starts Ray actors (a DeepSpeed learner, a vLLM engine) and trains: about a minute
    for a tiny model on two cores. predict keeps one vLLM rollout actor alive between calls
    (`close()` stops it); repeated calls draw fresh samples, so predictions vary a little
    between calls (the `non_deterministic` tag).

    scikit-learn's estimator checks: tests/commands/test_sklearn.py runs the ones that need no
    successful fit — the API and input-validation checks (tags, repr, init/get/set_params,
    default construction, unfitted predict, 1-D / complex / empty / sparse / 1-sample X,
    NaN or inf y, y=None). The others are skipped: each fits at least once and most fit
    several times (e.g. check_fit_idempotent, check_regressors_train, check_estimators_dtypes),
    which means dozens of minute-long fits on this machine; and subset / sample-order invariance
    of predictions cannot hold exactly for a model whose predictions are sampled. The test
    module covers fit / predict / score / predict_interval, pickling and refit by one fit.
    """

    def __init__(self, config: str | None = None, overrides: Sequence[str] = (), sft_steps: int | None = None,
                 rl_steps: int = 0, samples: int | None = None, validation_fraction: float = 0.1,
                 test_fraction: float = 0.1, run_dir: str | None = None, random_state: int | None = None,
                 verbose: int = 0):
        self.config = config
        self.overrides = overrides
        self.sft_steps = sft_steps
        self.rl_steps = rl_steps
        self.samples = samples
        self.validation_fraction = validation_fraction
        self.test_fraction = test_fraction
        self.run_dir = run_dir
        self.random_state = random_state
        self.verbose = verbose

    # --- fit ---

    def fit(self, X, y) -> "RLRegressor":
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        self._check_fit_inputs(len(y), y)
        self.close()  # an engine still serving the previous fit's model
        names = [str(n) for n in getattr(self, "feature_names_in_", [])] or [f"x{j}" for j in range(X.shape[1])]
        key = put_arrays(X, y, names)
        try:
            cfg = self._run_config(key)
            if self.verbose >= 2:
                console.set_verbose(True)
            console.hush_libraries()
            with console.quiet(self.verbose < 1):
                payload = run_train(cfg)
        finally:
            drop_arrays(key)  # run_train has loaded them; the checkpoint holds what predict needs
        self.config_ = cfg
        self.run_dir_ = Path(cfg.run_dir)
        self.checkpoint_ = Path(payload["checkpoint"])
        self.aggregation_ = payload["val"]["aggregation"]
        self.metrics_ = {"val": payload["val"], "test": payload["test"], "baselines": payload["baselines"]}
        self.feature_names_ = names
        return self

    def _check_fit_inputs(self, n: int, y: np.ndarray) -> None:
        """Refuse cheaply what the pipeline would refuse only after starting Ray actors."""
        if isinstance(self.overrides, str):
            raise ValueError(f"overrides must be a sequence of 'section.key=value' strings, got the string "
                             f"{self.overrides!r}")
        if not isinstance(self.rl_steps, (int, np.integer)) or self.rl_steps < 0:
            raise ValueError(f"rl_steps must be an integer >= 0, got {self.rl_steps!r}")
        try:
            sizes = split_indices(n, self.validation_fraction, self.test_fraction, 0).sizes()
        except DataError:
            sizes = {"train": 0}
        if min(sizes.values()) < 1:
            raise ValueError(f"RLRegressor needs rows for non-empty train, validation and test parts "
                             f"(validation_fraction={self.validation_fraction}, test_fraction="
                             f"{self.test_fraction}); got {n} sample{'' if n == 1 else 's'}")
        if np.ptp(y) == 0:
            raise ValueError("y is constant: there is nothing to regress")

    def _run_config(self, key: str):
        if self.run_dir is None:
            run_dir = tempfile.mkdtemp(prefix="rlreg-fit-")
        else:  # a fresh folder per fit: an existing run dir would be resumed, not refitted
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            run_dir = tempfile.mkdtemp(prefix="fit-", dir=self.run_dir)
        given = [
            f"data.source=array:{key}", "data.target=null", "data.max_rows=null",
            f"data.val_fraction={self.validation_fraction}", f"data.test_fraction={self.test_fraction}",
            f"run_dir={run_dir}", f"rl.enabled={'true' if self.rl_steps else 'false'}",
        ]
        if self.rl_steps:
            given.append(f"rl.steps={int(self.rl_steps)}")
        if self.sft_steps is not None:
            given.append(f"sft.steps={int(self.sft_steps)}")
        if self.samples is not None:
            given.append(f"eval.samples={int(self.samples)}")
        if self.random_state is not None:
            seed = int(self.random_state)
            given += [f"seed={seed}", f"data.seed={seed}", f"model.seed={seed}", f"engine.seed={seed}"]
        return load_config(self.config, [*self.overrides, *given])  # the estimator's own settings win

    # --- predict ---

    def _draw(self, X) -> tuple[np.ndarray, np.ndarray]:
        """values [N, K] and validity [N, K] for the rows of X."""
        check_is_fitted(self, "checkpoint_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if getattr(self, "_checkpoint", None) is None:
            self._checkpoint = load_checkpoint(self.checkpoint_)
        task = task_for_rows(self._checkpoint, rows_from_arrays(X, self.feature_names_))
        eval_cfg = self.config_.eval
        k = int(self.samples) if self.samples is not None else eval_cfg.samples
        return sample_values(self._rollout_group(), task, PREDICT, k, eval_cfg.temperature, eval_cfg.chunk_inputs)

    def _rollout_group(self):
        if getattr(self, "_rollout", None) is None:
            cfg = self.config_
            ensure_ray(cfg.ray)
            self._rollout = RolloutGroup(self.checkpoint_, cfg.engine, cfg.model.max_positions, cfg.ray)
        return self._rollout

    def predict(self, X) -> np.ndarray:
        """Aggregate of K samples per row (the aggregation chosen on validation); NaN where no
        sample decoded."""
        return aggregate(*self._draw(X), self.aggregation_)

    def predict_interval(self, X, alpha: float = 0.1, calibrated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) per row at level 1 − alpha: split-conformal calibrated on the fit's validation
        split when the checkpoint holds a calibration (and `calibrated`), else the alpha/2 and
        1 − alpha/2 quantiles of each row's K samples. `interval_kind_` says which was used."""
        alpha = check_alpha(alpha)
        draws = self._draw(X)  # also loads the checkpoint
        calibration = stored_calibration(self._checkpoint) if calibrated else None
        self.interval_kind_ = "calibrated" if calibration is not None else "sample"
        return prediction_interval(*draws, alpha, calibration)


    # --- lifecycle ---

    def close(self) -> None:
        """Stop the rollout actor predict started (it is restarted on the next predict)."""
        rollout, self._rollout = getattr(self, "_rollout", None), None
        self._checkpoint = None
        if rollout is not None:
            try:
                rollout.shutdown()
            except Exception:  # Ray already shut down: the actor is gone with it
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # an actor handle and a loaded checkpoint do not travel
        state.pop("_rollout", None)
        state.pop("_checkpoint", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True  # sampled predictions
        tags.regressor_tags.poor_score = True  # short default training runs do not reach sklearn's bar
        return tags
