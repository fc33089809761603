"""A multi-host lab on one machine for tests, the demo and bench/.

- :mod:`pyflannel.lab.netns`: :class:`~pyflannel.lab.netns.Lab` (namespace "hosts" on a bridge) and
  :class:`~pyflannel.lab.netns.Host`
- :mod:`pyflannel.lab.etcd`: :class:`~pyflannel.lab.etcd.EtcdServer`, a real etcd with a temp data dir
- :mod:`pyflannel.lab.cluster`: etcd host + flanneld per host, on top of a Lab
- :mod:`pyflannel.lab.demo`: ``python -m pyflannel.lab.demo`` (``make demo``)
"""
