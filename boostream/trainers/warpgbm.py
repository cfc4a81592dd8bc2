"""WarpGBM on an NVIDIA GPU.

WarpGBM has no callback API; it calls `compute_eval(i)` (`compute_eval_multiclass(i)` for
classifiers) once per round, and ends training after a round in which `self.stop` was set. A
subclass overrides both to report the round, to compute validation metrics incrementally (one
new tree per class against the binned validation rows, instead of WarpGBM's re-prediction of the
whole forest), to stop early and to stop on cancellation. The fitted model is exported to a
`Forest`, which predicts on the CPU; the CUDA training state is dropped with the estimator.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from boostream.progress import finite_or_none
from boostream.trainers.base import (
    OBJECTIVE_METRICS,
    Availability,
    FitResult,
    InvalidData,
    MemoryTerm,
    ModelShape,
    ParamSpec,
    Reporter,
    RoundHistory,
    TrainingData,
    check_early_stopping,
)
from boostream.trainers.forest import Forest

log = logging.getLogger("boostream.warpgbm")

# WarpGBM builds its CUDA extension against the torch already installed, so it cannot come with the
# other packages in one `pip install` (build isolation would hide torch from it).
INSTALL_RECIPE = (
    "to train on an NVIDIA GPU, install a CUDA build of PyTorch and "
    "what WarpGBM needs (the gpu extra: pip install -e '.[gpu]'), "
    "then WarpGBM against it, with nvcc on the PATH: TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation "
    "--no-deps warpgbm==2.2.0 (9.0 is Hopper: use your GPU's); see 'WarpGBM on a GPU' in the README"
)


@functools.cache
def _library() -> Any:
    """Import torch and WarpGBM once; raise ImportError saying why they cannot train here."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"PyTorch is not installed ({error}); {INSTALL_RECIPE}") from None
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise ImportError(f"no CUDA GPU is visible to PyTorch {torch.__version__} ({build})")
    try:
        import warpgbm.core as core
        from warpgbm.cuda import node_kernel
    except ImportError as error:
        raise ImportError(f"WarpGBM or its CUDA extension is not installed ({error}); {INSTALL_RECIPE}") from None
    # WarpGBM prints while it fits; keep that out of the server's output.
    core.print = lambda *args, **kwargs: log.debug(" ".join(map(str, args)))
    return torch, core, node_kernel


class WarpGBMTrainer:
    name = "warpgbm"
    title = "WarpGBM"
    device = "gpu"
    # Trained on the GPU, exported to a Forest that predicts on the CPU; its portable JSON is data.
    native_media_type = "application/json"
    native_extension = "json"
    takes_era = True
    takes_weights = False
    takes_categories = False
    params: Sequence[ParamSpec] = (
        ParamSpec("n_estimators", int, 100, "Boosting rounds.", minimum=1, maximum=100_000),
        ParamSpec(
            "learning_rate", float, 0.1, "Shrinkage per round.", minimum=0.0, maximum=1.0, exclusive_minimum=True
        ),
        ParamSpec("max_depth", int, 6, "Tree depth.", minimum=1, maximum=16),
        ParamSpec("num_bins", int, 63, "Quantile bins per feature.", minimum=2, maximum=127),
        ParamSpec("min_child_weight", int, 20, "Minimum rows in a child.", minimum=1, maximum=10**9),
        ParamSpec("min_split_gain", float, 0.0, "Minimum gain to make a split.", minimum=0.0),
        ParamSpec("L2_reg", float, 1e-6, "L2 regularisation of leaf values.", minimum=0.0),
        ParamSpec(
            "colsample_bytree", float, 1.0, "Share of features tried per tree.", minimum=0.0, maximum=1.0,
            exclusive_minimum=True,
        ),
        ParamSpec(
            "early_stopping_rounds", int, 0,
            "Stop when the validation metric has not improved for this many rounds; 0 disables.", minimum=0,
            maximum=100_000,
        ),
        ParamSpec("seed", int, 0, "Random seed.", minimum=0, maximum=2**31 - 1),
        ParamSpec("threads_per_block", int, 64, "CUDA threads per block.", minimum=32, maximum=1024, multiple_of=32),
        ParamSpec("rows_per_thread", int, 4, "Rows each CUDA thread accumulates.", minimum=1, maximum=16),
    )

    def rounds(self, params: Mapping[str, Any]) -> int:
        return int(params["n_estimators"])

    def availability(self) -> Availability:
        try:
            torch, _, _ = _library()
        except ImportError as error:
            return Availability(False, reason=str(error))
        return Availability(True, device_name=torch.cuda.get_device_name(0))

    def check(self, data: TrainingData, objective: str, params: Mapping[str, Any]) -> None:
        check_early_stopping(data, params)
        for field, X in (("X", data.X), ("X_valid", data.X_valid)):
            if X is not None and np.isnan(X).any():
                row = int(np.flatnonzero(np.isnan(X).any(axis=1))[0])
                raise InvalidData(
                    field, f"row {row} has a missing value (null); WarpGBM cannot train on missing values"
                )

    def memory(
        self, data: TrainingData, objective: str, params: Mapping[str, Any], look: bool = False
    ) -> list[MemoryTerm]:
        return []  # what it needs is the GPU's memory, and its trees are bounded by max_depth 16

    def fit(self, data: TrainingData, objective: str, params: Mapping[str, Any], reporter: Reporter) -> FitResult:
        torch, core, node_kernel = _library()
        model = _reporting_class(core)(**estimator_arguments(objective, params))
        hook = _RoundHook(torch, node_kernel, data, objective, params["early_stopping_rounds"], reporter)
        model.round_hook = hook
        X = np.asfortranarray(data.X, dtype=np.float32)  # WarpGBM bins one feature column at a time
        era = None if data.era is None else data.era.astype(np.int32)
        try:
            with torch.no_grad():
                model.fit(X, data.y, era_id=era)
            best_iteration, metrics = hook.history.final(early_stopped=hook.early_stopped)
            forest = _export(model, best_iteration, objective, hook.init_score, data)
        finally:
            # Free the GPU for the next job now: the estimator holds its CUDA training state.
            hook.release()
            del model
            torch.cuda.empty_cache()
        return FitResult(
            forest,
            len(hook.history.rounds),
            best_iteration,
            metrics,
            cancelled=reporter.cancelled,
            curve=hook.history.rounds,
        )

    # Prediction: a Forest, numpy only, on the CPU.

    def recognizes(self, blob: bytes) -> bool:
        return blob.lstrip()[:1] == b"{"  # a Forest's portable format is a JSON object

    def owns(self, model: Any) -> bool:
        return isinstance(model, Forest)

    def to_native(self, model: Forest) -> bytes:
        return model.to_json()

    def from_native(self, blob: bytes, trusted: bool = False) -> Forest:
        return Forest.from_json(blob)  # validates everything, trusted or not

    def describe(self, model: Forest) -> ModelShape:
        n_classes = 1 if model.objective == "regression" else len(model.init_score)
        return ModelShape(model.objective, model.bin_edges.shape[0], n_classes, model.classes)

    def scores(self, model: Forest, X: np.ndarray) -> np.ndarray:
        return model.predict(X) if model.objective == "regression" else model.predict_proba(X)


def estimator_arguments(objective: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """WarpGBM's constructor arguments for validated parameters (`seed` is its `random_state`;
    early stopping is ours, not WarpGBM's)."""
    arguments = {name: value for name, value in params.items() if name not in ("seed", "early_stopping_rounds")}
    return {"objective": objective, "random_state": params["seed"], **arguments}


@functools.cache
def _reporting_class(core: Any) -> type:
    class ReportingWarpGBM(core.WarpGBM):  # type: ignore[misc]  # WarpGBM has no type information
        def compute_eval(self, i: int) -> None:
            self.round_hook(self, i)

        def compute_eval_multiclass(self, i: int) -> None:
            self.round_hook(self, i)

    return ReportingWarpGBM


class _RoundHook:
    def __init__(
        self, torch: Any, node_kernel: Any, data: TrainingData, objective: str, patience: int, reporter: Reporter
    ) -> None:
        self.torch = torch
        self.node_kernel = node_kernel
        self.data = data
        self.objective = objective
        self.reporter = reporter
        metric = OBJECTIVE_METRICS[objective]
        self.train_metric = f"train_{metric}"
        self.valid_metric = f"valid_{metric}" if data.has_validation else None
        self.history = RoundHistory(self.valid_metric, patience)
        self.early_stopped = False
        self.init_score = np.zeros(1)
        # (binned rows, labels, running scores) on the GPU, set at round one
        self._valid: tuple[Any, Any, Any] | None = None

    def __call__(self, model: Any, i: int) -> None:
        if i == 0:
            self._start(model)
        metrics = {self.train_metric: finite_or_none(self._loss(model.Y_gpu, model.gradients))}
        if self._valid is not None:
            assert self.valid_metric is not None  # set with the validation data
            metrics[self.valid_metric] = finite_or_none(self._valid_loss(model, i))
        self.history.add(metrics)
        self.reporter.report(i + 1, metrics)
        if self.reporter.cancelled:
            model.stop = True
        elif self.history.should_stop:
            self.early_stopped = model.stop = True

    def release(self) -> None:
        self._valid = None

    def _start(self, model: Any) -> None:
        torch = self.torch
        if self.objective == "regression":
            self.init_score = np.array([model.base_prediction])
        else:
            # The same start as WarpGBM's training: log class priors (+1e-10), per class.
            assert self.data.classes is not None  # a classifier's data has its labels
            counts = np.bincount(self.data.y, minlength=len(self.data.classes))
            self.init_score = np.log(counts / counts.sum() + 1e-10)
        if not self.data.has_validation:
            return
        y_valid = self.data.y_valid
        assert y_valid is not None  # validation data comes in pairs
        bins = model.bin_inference_data(np.asfortranarray(self.data.X_valid, dtype=np.float32))
        labels = torch.as_tensor(y_valid, device=model.device)
        scores = torch.as_tensor(self.init_score, dtype=torch.float32, device=model.device)
        scores = scores.expand(len(y_valid), len(self.init_score)).contiguous()
        self._valid = (bins.contiguous(), labels, scores)

    def _valid_loss(self, model: Any, i: int) -> float:
        assert self._valid is not None  # called only once `_start` has set it
        bins, labels, scores = self._valid
        trees = [model.forest[i]] if self.objective == "regression" else model.forest[i]
        for k, tree in enumerate(trees):
            flat = model.flatten_tree(tree, max_nodes=2 ** (model.max_depth + 1)).to(model.device)
            contribution = self.torch.zeros(len(labels), device=model.device)
            self.node_kernel.predict_forest(bins, flat.unsqueeze(0).contiguous(), model.learning_rate, contribution)
            scores[:, k] += contribution
        return self._loss(labels, scores[:, 0] if self.objective == "regression" else scores)

    def _loss(self, labels: Any, scores: Any) -> float:
        torch = self.torch
        if self.objective == "regression":
            return float(((labels.float() - scores) ** 2).mean().item())
        log_probs = torch.log_softmax(scores, dim=1)
        return float(-log_probs[torch.arange(len(labels), device=labels.device), labels.long()].mean().item())


def _export(model: Any, rounds: int, objective: str, init_score: np.ndarray, data: TrainingData) -> Forest:
    if objective == "regression":
        trees = [(0, tree) for tree in model.forest[:rounds] if tree]
    else:
        trees = [(k, tree) for per_class in model.forest[:rounds] for k, tree in enumerate(per_class)]
    return Forest.from_trees(
        _on_host(trees),
        objective=objective,
        learning_rate=model.learning_rate,
        bin_edges=model.bin_edges.cpu().numpy(),
        init_score=init_score,
        feature_names=data.feature_names,
        classes=data.classes,
    )


def _on_host(trees: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """The same trees with each split's feature as an int. WarpGBM keeps them as 0-d CUDA tensors;
    reading them one by one costs a device synchronisation per node, so read them all at once."""
    import torch

    features: list[Any] = []

    def collect(node: dict[str, Any]) -> None:
        if "leaf_value" not in node:
            features.append(node["feature"])
            collect(node["left"])
            collect(node["right"])

    def rebuild(node: dict[str, Any], values: Any) -> dict[str, Any]:
        if "leaf_value" in node:
            return node
        feature = next(values)
        return {
            "feature": feature,
            "bin": int(node["bin"]),
            "left": rebuild(node["left"], values),
            "right": rebuild(node["right"], values),
        }

    for _, tree in trees:
        collect(tree)
    values = iter(torch.stack([torch.as_tensor(f) for f in features]).tolist() if features else [])
    return [(k, rebuild(tree, values)) for k, tree in trees]
