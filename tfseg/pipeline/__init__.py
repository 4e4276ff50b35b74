"""Stages that turn a run directory into a run directory."""
