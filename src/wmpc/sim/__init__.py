"""MuJoCo world without ROS: scene, sensors, impedance controller, tasks and reference controllers."""
