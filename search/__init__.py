"""The application: Hydra entry points, the ask/tell search loop, results and reports."""
