"""rosbag2 reading, writing, replay and offline evaluation through `rosbags` (no ROS needed)."""
