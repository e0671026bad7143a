"""Custom scikit-learn transformers that tabular pipelines pickle by reference.

This file is the single source. The tabular job copies it into each published version
as ``code/servekit_tabular_features.py`` and imports it under the top-level name
``servekit_tabular_features``, so a pickle only needs the version folder (with its
``code`` directory on ``sys.path``) to load: never the ``training`` package.

Keep it self-contained: standard library, numpy and scikit-learn imports only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.utils.validation import check_array, check_is_fitted

__all__ = ["ClusterSimilarity"]


class ClusterSimilarity(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Similarity of each row to cluster centres found by k-means.

    The idea of *Hands-On Machine Learning*, chapter 2: k-means on a few numeric
    columns (latitude and longitude in the book), then a Gaussian RBF similarity of
    every row to every centre, so a downstream model sees "how close to each dense
    region" as smooth features.

    Args:
        n_clusters: Number of centres; reduced to the number of training rows when
            there are fewer rows than that.
        gamma: Width of the RBF kernel; inputs are expected to be standardised.
        random_state: Seed for k-means, so the same seed gives the same centres.
    """

    def __init__(
        self, n_clusters: int = 8, gamma: float = 1.0, random_state: int | None = None
    ) -> None:
        self.n_clusters = n_clusters
        self.gamma = gamma
        self.random_state = random_state

    def fit(
        self,
        X: Any,
        y: Any = None,  # noqa: ARG002  (scikit-learn's fit signature)
        sample_weight: Any = None,
    ) -> ClusterSimilarity:
        """Find the cluster centres on ``X`` (``y`` is ignored)."""
        values = check_array(X, dtype=np.float64)
        self.n_features_in_ = values.shape[1]
        self.n_clusters_ = max(1, min(self.n_clusters, values.shape[0]))
        # n_init is explicit so results do not depend on scikit-learn's default.
        self.kmeans_ = KMeans(
            n_clusters=self.n_clusters_, n_init=10, random_state=self.random_state
        )
        self.kmeans_.fit(values, sample_weight=sample_weight)
        return self

    def transform(self, X: Any) -> NDArray[np.float64]:
        """Return one similarity column per centre, each in (0, 1]."""
        check_is_fitted(self, "kmeans_")
        values = check_array(X, dtype=np.float64)
        if values.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {values.shape[1]} features, but ClusterSimilarity "
                f"is expecting {self.n_features_in_} features as input"
            )
        similarity: NDArray[np.float64] = rbf_kernel(
            values, self.kmeans_.cluster_centers_, gamma=self.gamma
        )
        return similarity

    def get_feature_names_out(
        self,
        input_features: Any = None,  # noqa: ARG002  (scikit-learn's signature)
    ) -> NDArray[np.object_]:
        """Name the output columns ``cluster_<i>_similarity``."""
        check_is_fitted(self, "kmeans_")
        return np.asarray(
            [f"cluster_{index}_similarity" for index in range(self.n_clusters_)],
            dtype=object,
        )
