"""Leader-follower teleoperation and scripted demonstrators (imported as apprentice.teleop)."""
