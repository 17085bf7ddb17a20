"""Runnable Beam jobs built from the transforms package."""
