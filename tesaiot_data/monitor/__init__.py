"""Monitors over the live stream: device health and alert rules (no files)."""
