"""Compatibility path: the scikit-learn estimator lives in :mod:`daelab.estimator`.

``from daelab.sklearn import DenoisingAutoencoder`` keeps working; new code imports
``daelab.estimator`` (a module named ``sklearn`` inside the package reads as the library itself).
"""
from daelab.estimator import DenoisingAutoencoder

__all__ = ["DenoisingAutoencoder"]
