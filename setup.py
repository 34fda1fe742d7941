"""ament_python package setup for wmpc (also pip-installable on hosts without ROS)."""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "wmpc"
ROOT = Path(__file__).resolve().parent


def share_files(folder: str) -> list[tuple[str, list[str]]]:
    """Every file under `folder`, grouped by directory, installed into share/wmpc/<folder>."""
    entries: dict[str, list[str]] = {}
    for path in sorted((ROOT / folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(ROOT)
            entries.setdefault(str(Path("share", PACKAGE, rel.parent)), []).append(str(rel))
    return sorted(entries.items())


# Node executables, installed into lib/wmpc so `ros2 run wmpc <name>` finds them.
NODE_SCRIPTS = [
    "wmpc = wmpc.cli:main",
    "runtime_node = wmpc.nodes.runtime:main",
    "sim_node = wmpc.nodes.sim:main",
    "replay_node = wmpc.nodes.replay:main",
    "record_node = wmpc.nodes.record:main",
    "tactile_node = wmpc.nodes.tactile:main",
    "microphone_node = wmpc.nodes.microphone:main",
    "camera_node = wmpc.nodes.camera:main",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        *share_files("launch"),
        *share_files("config"),
        *share_files("urdf"),
        *share_files("models"),
    ],
    # ROS packages (rclpy, messages) are not pip requirements: they come from the ROS
    # install on a robot, and from requirements/ros.txt on a development machine.
    install_requires=["numpy", "pyyaml"],
    zip_safe=False,
    maintainer="wmpc developers",
    maintainer_email="dev@wmpc.invalid",
    description="On-robot runtime for learned multimodal world models with MPC.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={"console_scripts": NODE_SCRIPTS},
)
