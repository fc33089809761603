"""End-to-end fixtures: a flannel cluster (etcd on its own namespace host) inside the per-test lab."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import DEFAULT_CONFIG, Cluster
from pyflannel.lab.netns import Lab


@pytest.fixture
def cluster(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A Cluster (etcd + flanneld hosts); its daemons and etcd stop at the end.

    The network config is the test module's ``CLUSTER_CONFIG`` if it has one, else the default vxlan
    config on 10.244.0.0/16.
    """
    c = Cluster(lab, getattr(request.module, "CLUSTER_CONFIG", DEFAULT_CONFIG))
    try:
        yield c
    finally:
        c.close()
