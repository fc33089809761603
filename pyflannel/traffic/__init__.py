"""Traffic rules: masquerade (``--ip-masq``) and FORWARD accept (``--iptables-forward-rules``).

``rules`` builds the rule text (pure), ``iptables`` / ``nftables`` run the tools, ``manager`` is the
daemon's API: one ``TrafficManager`` per process from ``new_traffic_manager``.
"""

from pyflannel.traffic.manager import TrafficError, TrafficManager, new_traffic_manager

__all__ = ["TrafficError", "TrafficManager", "new_traffic_manager"]
