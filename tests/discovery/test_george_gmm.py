"""George's Gaussian mixtures survive a collapsed UMAP component (seen on benchmark settings with UMAP)."""

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from ravl.discovery import baselines as B


def test_fit_gmm_retries_with_a_larger_reg_covar(monkeypatch):
    real_fit = GaussianMixture.fit
    tried = []

    def fit(self, X, y=None):
        tried.append(self.reg_covar)
        if self.reg_covar < 1e-4:  # what scikit-learn raises when a component collapses onto a point
            raise ValueError("Fitting the mixture model failed because some components have ill-defined empirical "
                             "covariance (for instance caused by singleton or collapsed samples).")
        return real_fit(self, X, y)

    monkeypatch.setattr(GaussianMixture, "fit", fit)
    z = np.random.default_rng(0).normal(size=(40, 2))
    gm = B._fit_gmm(2, z, seed=0)
    assert tried == [1e-6, 1e-4] and gm.reg_covar == 1e-4 and gm.means_.shape == (2, 2)


def test_fit_gmm_keeps_the_default_when_it_works_and_reraises_other_errors():
    z = np.random.default_rng(0).normal(size=(40, 2))
    assert B._fit_gmm(2, z, seed=0).reg_covar == 1e-6
    with pytest.raises(ValueError, match="n_components"):
        B._fit_gmm(41, z, seed=0)
