"""Device protocols without ROS: tactile serial frames, audio and camera capture."""
