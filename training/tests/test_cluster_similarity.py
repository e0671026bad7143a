"""ClusterSimilarity, the custom transformer shipped with every tabular version."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from training.servekit_tabular_features import ClusterSimilarity


def blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    return np.vstack([centre + rng.normal(0, 0.2, (30, 2)) for centre in centres])


def test_one_similarity_column_per_centre() -> None:
    data = blobs()
    transformer = ClusterSimilarity(n_clusters=3, gamma=1.0, random_state=0).fit(data)
    similarity = transformer.transform(data)
    assert similarity.shape == (90, 3)
    assert np.all((similarity > 0) & (similarity <= 1))
    # Each blob sits next to exactly one centre.
    assert np.all(similarity.max(axis=1) > 0.5)
    assert list(transformer.get_feature_names_out()) == [
        "cluster_0_similarity",
        "cluster_1_similarity",
        "cluster_2_similarity",
    ]


def test_same_seed_same_centres() -> None:
    data = blobs()
    first = ClusterSimilarity(n_clusters=5, random_state=3).fit(data)
    second = clone(first).fit(data)
    np.testing.assert_array_equal(
        first.kmeans_.cluster_centers_, second.kmeans_.cluster_centers_
    )


def test_fewer_rows_than_clusters() -> None:
    transformer = ClusterSimilarity(n_clusters=8, random_state=0).fit(blobs()[:3])
    assert transformer.transform(blobs()[:4]).shape == (4, 3)
    assert len(transformer.get_feature_names_out()) == 3


def test_wrong_width_is_refused() -> None:
    transformer = ClusterSimilarity(n_clusters=2, random_state=0).fit(blobs())
    with pytest.raises(ValueError, match="expecting 2 features"):
        transformer.transform(np.zeros((2, 3)))
