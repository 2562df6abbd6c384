"""Arm and camera calibration cores and CLIs (imported as apprentice.calibration)."""
