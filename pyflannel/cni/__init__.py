"""flannel's CNI plugin (flannel-io/cni-plugin) re-implemented in Python.

Kept empty on purpose: the plugin is executed once per pod ADD/DEL/CHECK, so importing
``pyflannel.cni.plugin`` must not pull in anything beyond the standard library modules it names.
"""
