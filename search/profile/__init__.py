"""Measured costs: device profiles of an EENN's pieces on real runtimes.

``python -m search.profile`` (same config groups as ``python -m search``) measures one on
this machine; with ``+profile.kit=true`` it also writes the portable kit that measures one
on another device (:mod:`search.profile.kit`). This package belongs to the deployment wing
(it times the deployed runtime's pieces); the search side reaches it only through
:func:`search.pipeline.prepare`, for a device that is profiled on the fly
(``platform=host``). :func:`price_platform` attaches profiles to a platform's devices. The
file format, its checks and path pricing live in :mod:`evaluators.device_profile`.
"""

from __future__ import annotations

from search.profile._subject import ProfileSubject, subject_of
from search.profile.measure import ProfileSettings, host_profile, measure_profile, price_platform

__all__ = ["ProfileSettings", "ProfileSubject", "host_profile", "measure_profile",
           "price_platform", "subject_of"]
