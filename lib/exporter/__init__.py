"""The multi-target Prometheus exporter: `/probe?target=HOST` samples one hypervisor (sample.py, with
monitor's reads and parsers), renders it with prometheus_client (metrics.py); server.py serves it."""
