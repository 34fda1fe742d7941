"""ROS 2 nodes: the only modules in wmpc that import rclpy."""
