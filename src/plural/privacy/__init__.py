"""Differential privacy for federated runs: the ``privacy:`` config section, clipping and
noise in the aggregation chain (client and local levels), DP-SGD (sample level), accounting
with Google's dp-accounting and calibration of the noise to a target epsilon."""

from plural.privacy.settings import AdaptiveClipConfig, PrivacyConfig

__all__ = ["AdaptiveClipConfig", "PrivacyConfig"]
