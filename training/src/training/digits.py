"""The `digits` job: a small Keras classifier exported as a SavedModel for TF Serving.

The data is scikit-learn's bundled handwritten digits (8x8 images flattened to 64
pixel intensities from 0 to 16, classes 0-9). The SavedModel has two signatures:

- ``serving_default`` (Predict API): input ``pixels`` float32 [-1, 64]; outputs
  ``probabilities`` float32 [-1, 10] and ``class_id`` int64 [-1];
- ``classify`` (Classify API, method ``tensorflow/serving/classify``): input
  ``inputs``, serialized ``tf.Example`` protos with a 64-float ``pixels`` feature;
  outputs ``classes`` (the labels "0".."9") and ``scores``, both [-1, 10].

``assets.extra/tf_serving_warmup_requests`` holds PredictionLog records that TF Serving
(and servekit's model server) replay before the version takes traffic.

TensorFlow is imported inside the functions: the rest of the CLI stays quick to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from modelregistry import Registry
from numpy.typing import NDArray
from rich.progress import Progress

from training.datasets import fingerprint_frame
from training.errors import ExportError, TrainingError
from training.progress import job_steps
from training.published import PublishedModel

PIXELS = "pixels"
PIXEL_COUNT = 64
CLASS_NAMES = tuple(str(digit) for digit in range(10))
SERVING_DEFAULT = "serving_default"
CLASSIFY = "classify"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
EXAMPLE_COUNT = 3
TEST_FRACTION = 0.2
BATCH_SIZE = 32

STEPS = (
    "load data",
    "load TensorFlow",
    "train",
    "evaluate",
    "export SavedModel",
    "write warm-up requests",
)


@dataclass(frozen=True)
class DigitsOptions:
    """What `servekit train digits` can be asked for."""

    name: str = "digits"
    version: int | None = None
    seed: int = 42
    epochs: int = 10


@dataclass(frozen=True)
class DigitsData:
    """The digits split once, so training and evaluation see the same rows."""

    x_train: NDArray[np.float32]
    x_test: NDArray[np.float32]
    y_train: NDArray[np.int64]
    y_test: NDArray[np.int64]
    fingerprint: dict[str, Any]


def load_digits_data(seed: int) -> DigitsData:
    """Split the bundled digits 80/20, stratified by class."""
    # Imported here so that refusals (bad registry, taken version) come back before
    # scikit-learn's multi-second import.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.asarray(bunch.data, dtype=np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    frame = pd.DataFrame(pixels, columns=[f"pixel_{i}" for i in range(PIXEL_COUNT)])
    frame["digit"] = labels
    x_train, x_test, y_train, y_test = train_test_split(
        pixels, labels, test_size=TEST_FRACTION, random_state=seed, stratify=labels
    )
    return DigitsData(x_train, x_test, y_train, y_test, fingerprint_frame(frame))


def build_model(keras: Any) -> Any:
    """A small dense network; pixel scaling is inside, so clients send raw 0-16 values."""
    return keras.Sequential(
        [
            keras.Input(shape=(PIXEL_COUNT,), name=PIXELS, dtype="float32"),
            keras.layers.Rescaling(1.0 / 16.0),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits",
    )


def progress_callback(
    keras: Any, progress: Progress, epochs: int, steps_per_epoch: int
) -> Any:
    """A Keras callback that drives a rich bar over every batch of every epoch."""
    total = epochs * steps_per_epoch

    class RichProgress(keras.callbacks.Callback):  # type: ignore[misc]
        # Keras's hook signatures pass `logs` whether or not a hook reads them.
        def on_train_begin(
            self,
            logs: dict[str, float] | None = None,  # noqa: ARG002
        ) -> None:
            self.task = progress.add_task("epoch 1", total=total)
            self.epoch = 0

        def on_epoch_begin(
            self,
            epoch: int,
            logs: dict[str, float] | None = None,  # noqa: ARG002
        ) -> None:
            self.epoch = epoch

        def on_train_batch_end(
            self, batch: int, logs: dict[str, float] | None = None
        ) -> None:
            values = logs or {}
            progress.update(
                self.task,
                completed=self.epoch * steps_per_epoch + batch + 1,
                description=(
                    f"epoch {self.epoch + 1}/{epochs} "
                    f"loss {values.get('loss', float('nan')):.3f} "
                    f"accuracy {values.get('accuracy', float('nan')):.3f}"
                ),
            )

        def on_train_end(
            self,
            logs: dict[str, float] | None = None,  # noqa: ARG002
        ) -> None:
            progress.update(self.task, completed=total)

    return RichProgress()


def build_serving_module(tf: Any, model: Any) -> Any:
    """A ``tf.Module`` whose functions become the SavedModel's signatures."""
    module = tf.Module()
    class_names = tf.constant([list(CLASS_NAMES)])

    # tf is imported lazily, so mypy sees its decorator as untyped.
    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, PIXEL_COUNT], tf.float32, name=PIXELS)]
    )
    def serve(pixels: Any) -> dict[str, Any]:
        probabilities = model(pixels, training=False)
        return {
            "probabilities": probabilities,
            "class_id": tf.argmax(probabilities, axis=1, output_type=tf.int64),
        }

    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
    )
    def classify(inputs: Any) -> dict[str, Any]:
        parsed = tf.io.parse_example(
            inputs, {PIXELS: tf.io.FixedLenFeature([PIXEL_COUNT], tf.float32)}
        )
        scores = model(parsed[PIXELS], training=False)
        # tile (not broadcast_to) keeps the static shape [None, 10] in the signature.
        classes = tf.tile(class_names, [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}

    module.serve = serve
    module.classify = classify
    # Track the tf.Variables the traced functions capture, as Keras's ExportArchive
    # does. With only the Keras model tracked, tf.saved_model.load copes but a TF1
    # session load (what TF Serving's C++ loader does) fails on missing variables.
    captured: dict[int, Any] = {}
    for function in (serve, classify):
        for variable in function.get_concrete_function().variables:
            captured.setdefault(id(variable), variable)
    module.serving_variables = list(captured.values())
    return module


def export_saved_model(tf: Any, module: Any, export_dir: Path) -> None:
    """Save the module with both signatures, then mark ``classify`` for the Classify API.

    ``tf.saved_model.save`` gives every signature the Predict method name; TF Serving's
    Classify API refuses a signature unless its method name is
    ``tensorflow/serving/classify``, so the saved proto is rewritten, and the
    fingerprint (a checksum of ``saved_model.pb``) regenerated to match.
    """
    tf.saved_model.save(
        module,
        str(export_dir),
        signatures={
            SERVING_DEFAULT: module.serve.get_concrete_function(),
            CLASSIFY: module.classify.get_concrete_function(),
        },
    )
    from tensorflow.core.protobuf import saved_model_pb2

    proto_path = export_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(proto_path.read_bytes())
    signature_defs = saved_model.meta_graphs[0].signature_def
    if CLASSIFY not in signature_defs:
        raise ExportError(f"{export_dir}: the {CLASSIFY} signature was not saved")
    signature_defs[CLASSIFY].method_name = CLASSIFY_METHOD_NAME
    proto_path.write_bytes(saved_model.SerializeToString())
    rewrite_fingerprint(export_dir)


def rewrite_fingerprint(export_dir: Path) -> None:
    """Regenerate ``fingerprint.pb`` after ``saved_model.pb`` changed."""
    fingerprint_path = export_dir / "fingerprint.pb"
    try:
        from tensorflow.python.saved_model.pywrap_saved_model import (
            fingerprinting as fingerprinting_pywrap,
        )
    except ImportError:
        # Without TensorFlow's writer, no fingerprint beats a stale one: loaders
        # treat a missing fingerprint as an older SavedModel.
        fingerprint_path.unlink(missing_ok=True)
        return
    fingerprint_path.write_bytes(
        fingerprinting_pywrap.CreateFingerprintDef(str(export_dir))
    )


def signatures_from_saved_model(tf: Any, export_dir: Path) -> dict[str, Any]:
    """Read the signature defs back from ``saved_model.pb``, in the manifest's terms."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((export_dir / "saved_model.pb").read_bytes())
    signatures: dict[str, Any] = {}
    for key, signature_def in sorted(saved_model.meta_graphs[0].signature_def.items()):
        if key.startswith("__"):
            continue  # TensorFlow's own entries, e.g. __saved_model_init_op

        def describe(tensors: Any) -> dict[str, Any]:
            return {
                name: {
                    "dtype": tf.dtypes.as_dtype(info.dtype).name,
                    "shape": [dim.size for dim in info.tensor_shape.dim],
                }
                for name, info in sorted(tensors.items())
            }

        signatures[key] = {
            "method": signature_def.method_name.rsplit("/", 1)[-1],
            "inputs": describe(signature_def.inputs),
            "outputs": describe(signature_def.outputs),
        }
    return signatures


def write_warmup_requests(
    tf: Any, export_dir: Path, model_name: str, rows: NDArray[np.float32]
) -> int:
    """Write TF Serving's warm-up file: Predict and Classify requests as PredictionLogs.

    Returns:
        The number of records written.
    """
    from tensorflow_serving.apis import (
        classification_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    logs = []
    for batch in (rows[:1], rows):
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = model_name
        predict.model_spec.signature_name = SERVING_DEFAULT
        predict.inputs[PIXELS].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.float32))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=predict)
            )
        )
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = model_name
    classify.model_spec.signature_name = CLASSIFY
    for row in rows:
        example = classify.input.example_list.examples.add()
        example.features.feature[PIXELS].float_list.value.extend(row.tolist())
    logs.append(
        prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=classify)
        )
    )
    warmup_path = export_dir / WARMUP_FILE
    warmup_path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(warmup_path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return len(logs)


def evaluate(module: Any, tf: Any, data: DigitsData) -> dict[str, float]:
    """Held-out accuracy and cross-entropy, through the function that gets exported."""
    outputs = module.serve(tf.constant(data.x_test))
    probabilities = outputs["probabilities"].numpy()
    predicted = outputs["class_id"].numpy()
    chosen = probabilities[np.arange(len(data.y_test)), data.y_test]
    return {
        "accuracy": float(np.mean(predicted == data.y_test)),
        "loss": float(-np.mean(np.log(np.clip(chosen, 1e-7, 1.0)))),
    }


def train_digits(
    registry: Registry, options: DigitsOptions, show_progress: bool = True
) -> PublishedModel:
    """Train, evaluate, export and publish the digits classifier.

    Raises:
        TrainingError: training or export failed.
        modelregistry.RegistryError: the registry refused the version.
    """
    if options.epochs < 1:
        raise TrainingError(f"--epochs must be at least 1, got {options.epochs}")
    # The registry is checked (writable, version free) before TensorFlow loads and
    # before any progress is shown, so refusals are quick and print a single line.
    with (
        registry.publish(
            options.name, framework="tensorflow", version=options.version
        ) as draft,
        job_steps("digits", STEPS, show_progress) as steps,
    ):
        steps.start("load data")
        data = load_digits_data(options.seed)
        steps.start("load TensorFlow")
        import keras
        import tensorflow as tf

        # Same seed, same weights and batch order; deterministic ops make the
        # kernels reproducible too (at some speed cost, irrelevant at this size).
        keras.utils.set_random_seed(options.seed)
        tf.config.experimental.enable_op_determinism()

        steps.start("train")
        model = build_model(keras)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=3e-3),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        steps_per_epoch = -(-len(data.x_train) // BATCH_SIZE)
        model.fit(
            data.x_train,
            data.y_train,
            epochs=options.epochs,
            batch_size=BATCH_SIZE,
            verbose=0,
            callbacks=[
                progress_callback(
                    keras, steps.progress, options.epochs, steps_per_epoch
                )
            ],
        )

        steps.start("evaluate")
        module = build_serving_module(tf, model)
        metrics = evaluate(module, tf, data)

        steps.start("export SavedModel")
        try:
            export_saved_model(tf, module, draft.path)
        except (ValueError, TypeError, OSError) as exc:
            raise ExportError(f"cannot export the SavedModel: {exc}") from exc

        steps.start("write warm-up requests")
        examples = data.x_test[:EXAMPLE_COUNT]
        write_warmup_requests(tf, draft.path, options.name, examples)
        draft.manifest.update(
            artifact="saved_model.pb",
            task="classification",
            classes=list(CLASS_NAMES),
            signatures=signatures_from_saved_model(tf, draft.path),
            examples=[{PIXELS: [float(v) for v in row]} for row in examples],
            metrics=metrics,
            data_fingerprint=data.fingerprint,
        )
        steps.finish()
    if draft.version is None:
        raise TrainingError(f"publishing {options.name} returned no version")
    return PublishedModel(
        name=options.name,
        version=draft.version,
        path=registry.version_dir(options.name, draft.version),
        framework="tensorflow",
        task="classification",
        metrics=metrics,
    )
