"""The model server's warning filters: Python's four defaults and nothing else.

scikit-learn's joblib wrapper (``sklearn.utils.parallel``) re-installs every
warning filter of the calling thread in each task it runs, one ``filterwarnings``
per filter, each scanning the list for duplicates. A RandomForest's ``predict``
runs one task per tree, so the filter count multiplies into every call. numpy,
scipy, urllib3 and TensorFlow add eleven filters when imported; with those
fifteen, one batch-1 call of the bench's ``tabular`` pipeline took 18.5 ms, and
16.1 ms with Python's defaults alone.

So the server owns the filters: Python's default ignores stay, libraries' own
additions go, and any other warning is logged as a JSON line
(``logging.captureWarnings``). The default action would show it once per place,
but every filter change (scikit-learn's and pandas' ``catch_warnings`` blocks)
clears that memory, so a warning raised by each prediction is logged each time.
Imports made while loading a model add filters again, and scikit-learn's
``catch_warnings`` may put back a list saved before :func:`install` ran, so the
scikit-learn runtime calls :func:`ensure` before each call: a length check, and a
reinstall when it differs. The ``own_warning_filters`` setting (on by default)
turns all of this on.
"""

from __future__ import annotations

import warnings

IGNORED: tuple[type[Warning], ...] = (
    DeprecationWarning,
    PendingDeprecationWarning,
    ImportWarning,
    ResourceWarning,
)


def install() -> None:
    """Replace the process's warning filters with the server's."""
    warnings.resetwarnings()
    for category in IGNORED:
        warnings.simplefilter("ignore", category, append=True)


def ensure() -> None:
    """:func:`install` unless the filters in place are already the server's."""
    if len(warnings.filters) != len(IGNORED):
        install()
