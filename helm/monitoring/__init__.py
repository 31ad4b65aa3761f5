"""Monitoring as code: `alerts` (Prometheus rules), `dashboards` (Grafana) and `embedfleet_monitoring`,
which writes both into helm/embedfleet/files/.

A package under the `helm` namespace so that its modules import each other plainly and tests import
them as `helm.monitoring.*` from the repository root, as they import `tests.*`: no path edits. Run
`python -m helm.monitoring.embedfleet_monitoring [--check]` from the repository root.
"""
