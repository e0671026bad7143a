"""servekit training jobs: train a model, evaluate it on held-out data and publish it
to the registry (`tabular`: a scikit-learn pipeline; `digits`: a Keras SavedModel).

TensorFlow is imported only by `training.digits`, inside its functions."""
