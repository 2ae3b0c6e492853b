"""The application: Hydra entry points, the ask/tell search loop, results and reports.

Deployment (real EENNs, evaluate, export) lives in :mod:`search.deploy`; nothing else in
this package imports it.
"""
