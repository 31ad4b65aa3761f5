"""Model upgrades without downtime: drift compensation on read (drift.py), lifecycle and backfill."""
