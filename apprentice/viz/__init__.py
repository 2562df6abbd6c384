"""Seeing episodes in Rerun: the shared layout (`layout`), the scene's robot model posed from
joint states (`robot_model`), a bag or an eval rollout drawn in that layout (`episode`,
`rollout`) and `apprentice view` (`cli`). Needs the `view` extra (rerun-sdk); no rclpy."""
