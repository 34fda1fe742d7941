"""MuJoCo world without ROS: scene, sensors, impedance controller, tasks, reference controllers."""
