"""Triggers: what starts runs on its own. Pure logic per kind here; the wiring is in ../triggering.py."""
