"""Tree ensembles to ONNX: ai.onnx.ml ``TreeEnsemble`` (opset 5), run by ONNX Runtime.

Opset 5's ``TreeEnsemble`` takes float64 thresholds, leaves and outputs, which the
older ``TreeEnsembleRegressor`` (float32 outputs only) cannot, so the exact mode is
float64 end to end. scikit-learn compares float32 features with float64 thresholds
(its trees cast ``X`` to float32), so the exact graph casts the features to float32
and back before the ensemble, and the comparisons are the pickle's.

In the approximate mode the graph is float32: features as float32, each threshold
replaced by the largest float32 not above it (so ``x <= t`` decides as before), and
leaf values and sums in float32; the parity gate measures the error that leaves.

Aggregation follows scikit-learn: a forest averages its trees in tree order, a single
tree is summed; a classifier's leaves hold each tree's normalised class fractions,
and one ensemble per class gives the probabilities (opset 5 leaves feed one target).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from modelserver.compiled.errors import CompileError

Mode = Literal["exact", "approximate"]
INPUT = "features"
OUTPUT = "scores"
AVERAGE = 0
SUM = 1
ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 5
ONNX_OPSET = 21
FORESTS = (
    "RandomForestRegressor",
    "RandomForestClassifier",
    "ExtraTreesRegressor",
    "ExtraTreesClassifier",
)
SINGLE_TREES = ("DecisionTreeRegressor", "DecisionTreeClassifier")
TREE_MODELS = FORESTS + SINGLE_TREES


def tree_model_bytes(estimator: Any, n_features: int, mode: Mode, path: str) -> bytes:
    """The serialised ONNX model of a fitted tree estimator.

    Raises:
        CompileError: The estimator is not a supported tree model or has
            several outputs.
    """
    kind = type(estimator).__name__
    if kind not in TREE_MODELS:
        raise CompileError(f"no converter for {kind} at step {path}", step=path)
    if getattr(estimator, "n_outputs_", 1) != 1:
        raise CompileError(f"{kind} at step {path}: several outputs", step=path)
    trees = (
        [e.tree_ for e in estimator.estimators_]
        if kind in FORESTS
        else [estimator.tree_]
    )
    classifier = kind.endswith("Classifier")
    aggregate = AVERAGE if kind in FORESTS else SUM
    dtype = np.float64 if mode == "exact" else np.float32
    onnx_type = TensorProto.DOUBLE if mode == "exact" else TensorProto.FLOAT
    targets = [_leaf_values(tree, classifier) for tree in trees]
    n_targets = targets[0].shape[1]
    nodes: list[Any] = []
    source = INPUT
    if mode == "exact":
        nodes += [
            helper.make_node("Cast", [INPUT], ["features32"], to=TensorProto.FLOAT),
            helper.make_node(
                "Cast", ["features32"], ["features64"], to=TensorProto.DOUBLE
            ),
        ]
        source = "features64"
    outputs = []
    for target in range(n_targets):
        name = f"target{target}"
        nodes.append(
            _ensemble_node(
                trees,
                [values[:, target] for values in targets],
                source,
                name,
                aggregate,
                dtype,
            )
        )
        outputs.append(name)
    if n_targets == 1:
        nodes.append(helper.make_node("Identity", outputs, [OUTPUT]))
    else:
        nodes.append(helper.make_node("Concat", outputs, [OUTPUT], axis=1))
    graph = helper.make_graph(
        nodes,
        "servekit_trees",
        [helper.make_tensor_value_info(INPUT, onnx_type, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT, onnx_type, [None, n_targets])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            helper.make_opsetid(ML_DOMAIN, ML_OPSET),
        ],
        producer_name="servekit",
    )
    return bytes(model.SerializeToString())


def _leaf_values(tree: Any, classifier: bool) -> np.ndarray[Any, Any]:
    """Per node, what a leaf contributes: the value, or the normalised fractions.

    DecisionTreeClassifier.predict_proba divides each leaf's row by its sum (a sum
    of 0 divides by 1); the same numpy operations give the same numbers here.
    """
    values = np.asarray(tree.value, dtype=np.float64)[:, 0, :]
    if not classifier:
        return values.copy()
    normaliser = values.sum(axis=1)[:, np.newaxis]
    normaliser[normaliser == 0.0] = 1.0
    fractions: np.ndarray[Any, Any] = values / normaliser
    return fractions


def _ensemble_node(
    trees: list[Any],
    leaf_values: list[np.ndarray[Any, Any]],
    source: str,
    output: str,
    aggregate: int,
    dtype: type[np.floating[Any]],
) -> Any:
    features: list[int] = []
    splits: list[float] = []
    true_ids: list[int] = []
    true_leaf: list[int] = []
    false_ids: list[int] = []
    false_leaf: list[int] = []
    missing_left: list[int] = []
    roots: list[int] = []
    weights: list[float] = []
    for tree, values in zip(trees, leaf_values, strict=True):
        left, right = tree.children_left, tree.children_right
        inner = np.flatnonzero(left >= 0)
        leaves = np.flatnonzero(left < 0)
        inner_ids = {int(n): len(features) + i for i, n in enumerate(inner)}
        leaf_ids = {int(n): len(weights) + i for i, n in enumerate(leaves)}
        if not len(inner):
            # A stump: one leaf. opset 5 needs a root node, so split on feature 0
            # with both sides ending in the same leaf.
            roots.append(len(features))
            features.append(0)
            splits.append(0.0)
            missing_left.append(0)
            for ids, flags in ((true_ids, true_leaf), (false_ids, false_leaf)):
                ids.append(len(weights))
                flags.append(1)
        else:
            # NaN features go where scikit-learn sends them (the left child is the
            # "true" branch of x <= t).
            go_left = getattr(tree, "missing_go_to_left", np.zeros(len(left)))
            roots.append(inner_ids[0])
            for node in inner:
                features.append(int(tree.feature[node]))
                missing_left.append(int(bool(go_left[node])))
                splits.append(_threshold(float(tree.threshold[node]), dtype))
                for child, ids, flags in (
                    (int(left[node]), true_ids, true_leaf),
                    (int(right[node]), false_ids, false_leaf),
                ):
                    if left[child] < 0:
                        ids.append(leaf_ids[child])
                        flags.append(1)
                    else:
                        ids.append(inner_ids[child])
                        flags.append(0)
        weights.extend(float(values[node]) for node in leaves)
    count = len(features)
    return helper.make_node(
        "TreeEnsemble",
        [source],
        [output],
        domain=ML_DOMAIN,
        aggregate_function=aggregate,
        n_targets=1,
        post_transform=0,
        nodes_featureids=features,
        nodes_splits=numpy_helper.from_array(np.asarray(splits, dtype=dtype)),
        nodes_modes=numpy_helper.from_array(np.zeros(count, dtype=np.uint8)),
        nodes_missing_value_tracks_true=missing_left,
        nodes_truenodeids=true_ids,
        nodes_trueleafs=true_leaf,
        nodes_falsenodeids=false_ids,
        nodes_falseleafs=false_leaf,
        tree_roots=roots,
        leaf_targetids=[0] * len(weights),
        leaf_weights=numpy_helper.from_array(np.asarray(weights, dtype=dtype)),
    )


def _threshold(value: float, dtype: type[np.floating[Any]]) -> float:
    if dtype is np.float64:
        return value
    # The largest float32 not above the threshold decides float32 x <= t alike.
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)
