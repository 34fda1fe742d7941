"""The DDS harness itself: a real publish and receive on the isolated domain."""

import pytest
from std_msgs.msg import String

pytestmark = pytest.mark.dds


def test_string_round_trip(ros):
    pub_node = ros.node("talker")
    received = ros.collect(String, "/harness/chatter", qos=10)
    pub = pub_node.create_publisher(String, "/harness/chatter", 10)

    def published_and_received():
        pub.publish(String(data="hello"))
        return bool(received)

    ros.wait_until(published_and_received, 10.0, "a String on /harness/chatter")
    assert received[0].data == "hello"
