"""The ``flannel`` CNI meta-plugin: subnet.env + network config -> a delegate (bridge) config.

Same contract as flannel-io/cni-plugin (``flannel.go``, ``flannel_linux.go``) on top of the CNI
library's ``skel`` dispatcher:

* ADD reads ``subnetFile`` (default /run/flannel/subnet.env), builds the delegate config (type
  ``bridge`` unless the config's ``delegate`` says otherwise, ``name`` = network name, ``mtu`` =
  FLANNEL_MTU, ``ipMasq`` = !FLANNEL_IPMASQ, ``isGateway`` for bridge, ``cniVersion``, ``ipam`` =
  the config's top-level ``ipam`` completed with type host-local, ``ranges`` [[{subnet}]] per family
  and a route to each FLANNEL_NETWORK), saves it as ``<dataDir>/<containerID>`` (default dataDir
  /var/lib/cni/flannel) and execs the delegate found in CNI_PATH; the delegate's result is passed
  through unchanged.
* DEL execs the delegate with the saved config and removes it; no saved config -> success.

Deliberate differences from flannel, each because flannel's behaviour loses information:

* The generated routes carry ``gw`` (the subnet's first address, host-local's default gateway).
  The kernel state is the same (the bridge/ipam code routes a gw-less route via the gateway anyway),
  but the containernetworking plugins' CHECK compares the result's routes literally and fails on a
  gw-less one; with ``gw`` CHECK works.
* CHECK is delegated (saved config + the runtime's ``prevResult``) instead of being a no-op.
* DEL keeps the saved config when the delegate's DEL fails, so the runtime's retry still releases the
  address (flannel removes it whatever the outcome, due to a shadowed ``err``).
* Error output carries ``cniVersion`` as the CNI spec asks (Go's ``types.Error`` omits it).
* skel's post-ADD/DEL "plugin netns equals CNI_NETNS" check is not done.

Start-up cost matters (one process per pod and command): the module imports only json, os and sys at
load time, subprocess when a delegate is run, and ipaddress only for IPv6 subnets.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

SUPPORTED_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
CURRENT_VERSION = "1.0.0"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"

# CNI error codes (SPEC.md "Error").
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODING = 6
ERR_INVALID_CONFIG = 7
ERR_INTERNAL = 999

_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_REST = _NAME_FIRST | frozenset("_.-")


class CNIError(Exception):
    """A CNI error result: printed as JSON on stdout, exit status 1."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def error_json(cni_version: str, err: CNIError) -> str:
    """The error document, indented like Go's ``types.Error.Print`` (details omitted when empty)."""
    doc: dict[str, Any] = {"cniVersion": cni_version, "code": err.code, "msg": err.msg}
    if err.details:
        doc["details"] = err.details
    return json.dumps(doc, indent=4, ensure_ascii=False)


def go_json(obj: Any) -> str:
    """Serialise like Go's ``json.Marshal`` of a map: sorted keys, compact, HTML-safe escapes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _go_quote_list(items: Sequence[str]) -> str:
    """Go's ``%q`` of a []string, used in version error details."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


def _go_errno_text(exc: OSError) -> str:
    """Go spells errno texts in lower case (``no such file or directory``)."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


# --- subnet.env -----------------------------------------------------------------------------------


class SubnetEnv:
    """What flanneld wrote: networks (deduplicated), subnets as networks, MTU and ipmasq."""

    def __init__(self) -> None:
        self.networks: list[str] = []
        self.subnet: str | None = None
        self.ipv6_networks: list[str] = []
        self.ipv6_subnet: str | None = None
        self.mtu: int | None = None
        self.ipmasq: bool | None = None

    def missing(self) -> str:
        """The variables flannel reports as missing, in its order."""
        m: list[str] = []
        if not self.networks and not self.ipv6_networks:
            m += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
        if self.subnet is None and self.ipv6_subnet is None:
            m += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
        if self.mtu is None:
            m.append("FLANNEL_MTU")
        if self.ipmasq is None:
            m.append("FLANNEL_IPMASQ")
        return ", ".join(m)


def _parse_ipv4(text: str) -> int | None:
    """Dotted quad as Go accepts it (no leading zeros), or None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for p in parts:
        if not p.isdigit() or not p.isascii() or (len(p) > 1 and p[0] == "0") or int(p) > 255:
            return None
        value = value << 8 | int(p)
    return value


def _ipv4_text(value: int) -> str:
    return ".".join(str(value >> s & 0xFF) for s in (24, 16, 8, 0))


def parse_cidr(text: str) -> str:
    """Go's ``net.ParseCIDR`` network: ``10.244.1.1/24`` -> ``10.244.1.0/24``; ValueError otherwise."""
    addr, sep, plen = text.partition("/")
    if sep and plen.isdigit() and plen.isascii():
        ip4 = _parse_ipv4(addr)
        if ip4 is not None and int(plen) <= 32:
            mask = (0xFFFFFFFF << (32 - int(plen))) & 0xFFFFFFFF
            return f"{_ipv4_text(ip4 & mask)}/{int(plen)}"
        if ip4 is None and ":" in addr and int(plen) <= 128:
            import ipaddress  # only IPv6 needs it; kept off the common path for start-up time

            try:
                return ipaddress.IPv6Network(f"{addr}/{int(plen)}", strict=False).compressed
            except ValueError:
                pass
    raise ValueError(f"invalid CIDR address: {text}")


def first_address(network: str) -> str:
    """The network's first host address (host-local's default gateway)."""
    addr = network.partition("/")[0]
    ip4 = _parse_ipv4(addr)
    if ip4 is not None:
        return _ipv4_text(ip4 + 1)
    import ipaddress

    return str(ipaddress.IPv6Network(network).network_address + 1)


def parse_subnet_env(text: str, filename: str) -> SubnetEnv:
    """flannel's ``loadFlannelSubnetEnv`` on the file's text; ValueError with flannel's message."""
    se = SubnetEnv()
    for raw in text.split("\n"):
        line = raw.removesuffix("\r")
        key, sep, value = line.partition("=")
        if key in ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK") and sep:
            nets: list[str] = []
            for cidr in value.split(","):
                net = parse_cidr(cidr)
                if net not in nets:
                    nets.append(net)
            if key == "FLANNEL_NETWORK":
                se.networks = nets
            else:
                se.ipv6_networks = nets
        elif key == "FLANNEL_SUBNET" and sep:
            se.subnet = parse_cidr(value)
        elif key == "FLANNEL_IPV6_SUBNET" and sep:
            se.ipv6_subnet = parse_cidr(value)
        elif key == "FLANNEL_MTU" and sep:
            if not (value.isdigit() and value.isascii()):
                raise ValueError(f'strconv.ParseUint: parsing "{value}": invalid syntax')
            if int(value) > 0xFFFFFFFF:
                raise ValueError(f'strconv.ParseUint: parsing "{value}": value out of range')
            se.mtu = int(value)
        elif key == "FLANNEL_IPMASQ" and sep:
            se.ipmasq = value == "true"
    missing = se.missing()
    if missing:
        raise ValueError(f"{filename} is missing {missing}")
    return se


def load_subnet_env(filename: str) -> SubnetEnv:
    """Read and parse subnet.env; CNIError with flannel's wording (code 999, as Go's skel reports)."""
    try:
        with open(filename, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
        return parse_subnet_env(text, filename)
    except OSError as exc:
        cause = f"open {filename}: {_go_errno_text(exc)}"
    except ValueError as exc:
        cause = str(exc)
    raise CNIError(ERR_INTERNAL, f"failed to load flannel 'subnet.env' file: {cause}. "
                                 "Check the flannel pod log for this node.")


# --- network config and the delegate ------------------------------------------------------------


def _field(conf: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """One NetConf field with Go's unmarshal rules: absent or null keeps the default, a value of the
    wrong JSON type is an error."""
    value = conf.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        gotype = "string" if kind is str else "map[string]interface {}" if kind is dict else kind.__name__
        raise CNIError(ERR_INTERNAL, f"failed to load netconf: json: cannot unmarshal {_json_kind(value)} "
                                     f"into Go struct field NetConf.{key} of type {gotype}")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def load_netconf(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of flannel's NetConf the plugin uses, defaults applied."""
    return {
        "cniVersion": _field(conf, "cniVersion", str, ""),
        "name": _field(conf, "name", str, ""),
        "ipam": _field(conf, "ipam", dict),
        "subnetFile": _field(conf, "subnetFile", str, DEFAULT_SUBNET_FILE),
        "dataDir": _field(conf, "dataDir", str, DEFAULT_DATA_DIR),
        "delegate": _field(conf, "delegate", dict),
        "runtimeConfig": _field(conf, "runtimeConfig", dict),
    }


def build_delegate(conf: Mapping[str, Any], env: SubnetEnv) -> dict[str, Any]:
    """The delegate network config flannel hands to bridge (pure; CNIError for a bad ``delegate``).

    ``conf`` is the plugin's own network config as parsed JSON; it is not modified.
    """
    nc = load_netconf(conf)
    delegate: dict[str, Any] = dict(nc["delegate"]) if nc["delegate"] is not None else {}
    if nc["delegate"] is not None:
        if "type" in delegate and not isinstance(delegate["type"], str):
            raise CNIError(ERR_INTERNAL, "'delegate' dictionary, if present, must have (string) 'type' field")
        if "name" in delegate:
            raise CNIError(ERR_INTERNAL,
                           "'delegate' dictionary must not have 'name' field, it'll be set by flannel")
        if "ipam" in delegate:
            raise CNIError(ERR_INTERNAL,
                           "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
    if nc["runtimeConfig"] is not None:
        delegate["runtimeConfig"] = nc["runtimeConfig"]

    delegate["name"] = nc["name"]
    delegate.setdefault("type", "bridge")
    if "ipMasq" not in delegate:
        # flanneld masquerades itself when started with --ip-masq; otherwise the bridge should.
        delegate["ipMasq"] = not env.ipmasq
    if "mtu" not in delegate:
        delegate["mtu"] = env.mtu
    if delegate["type"] == "bridge" and "isGateway" not in delegate:
        delegate["isGateway"] = True
    if nc["cniVersion"]:
        delegate["cniVersion"] = nc["cniVersion"]
    delegate["ipam"] = build_ipam(nc["ipam"], env)
    return delegate


def build_ipam(ipam_in: Mapping[str, Any] | None, env: SubnetEnv) -> dict[str, Any]:
    """flannel's ``getDelegateIPAM``: the config's ipam, type host-local by default, ``ranges`` from the
    subnets, configured routes followed by one route per flannel network (with ``gw``, see above)."""
    ipam: dict[str, Any] = dict(ipam_in) if ipam_in is not None else {}
    ipam.setdefault("type", "host-local")
    ranges: list[list[dict[str, str]]] = []
    if env.subnet:
        ranges.append([{"subnet": env.subnet}])
    if env.ipv6_subnet:
        ranges.append([{"subnet": env.ipv6_subnet}])
    ipam["ranges"] = ranges if ranges else None

    routes_in = ipam.get("routes")
    if routes_in is None:
        routes: list[Any] = []
    elif isinstance(routes_in, list) and all(isinstance(r, dict) for r in routes_in):
        routes = list(routes_in)
    else:
        raise CNIError(ERR_INTERNAL, "failed to assemble Delegate IPAM: failed to read IPAM routes: "
                                     "failed to parse ipam.routes: json: cannot unmarshal "
                                     f"{_json_kind(routes_in)} into Go value of type []types.Route")
    for net in env.networks:
        routes.append(_route(net, env.subnet))
    for net in env.ipv6_networks:
        routes.append(_route(net, env.ipv6_subnet))
    ipam["routes"] = routes
    return ipam


def _route(dst: str, subnet: str | None) -> dict[str, str]:
    route = {"dst": dst}
    if subnet:
        route["gw"] = first_address(subnet)
    return route


# --- environment / dispatch (the skel part) -------------------------------------------------------


def _valid_name(name: str) -> bool:
    return bool(name) and name[0] in _NAME_FIRST and all(c in _NAME_REST for c in name[1:])


def _check_ifname(ifname: str) -> None:
    if len(ifname) > 15:
        raise CNIError(ERR_INVALID_ENV, "interface name is too long",
                       "interface name should be less than 16 characters")
    if ifname in (".", ".."):
        raise CNIError(ERR_INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in ifname):
        raise CNIError(ERR_INVALID_ENV, "interface name contains / or : or whitespace characters")


_REQUIRED = {
    "CNI_CONTAINERID": ("ADD", "CHECK", "DEL"),
    "CNI_NETNS": ("ADD", "CHECK"),
    "CNI_IFNAME": ("ADD", "CHECK", "DEL"),
    "CNI_PATH": ("ADD", "CHECK", "DEL", "GC", "STATUS"),
}


def check_environment(environ: Mapping[str, str]) -> str:
    """skel's ``getCmdArgsFromEnv`` checks, in its order; returns CNI_COMMAND."""
    cmd = environ.get("CNI_COMMAND", "")
    missing = [] if cmd else ["CNI_COMMAND"]
    for var, commands in _REQUIRED.items():
        value = environ.get(var, "")
        if not value:
            if cmd in commands:
                missing.append(var)
        elif cmd in commands and var == "CNI_CONTAINERID" and not _valid_name(value):
            raise CNIError(ERR_INVALID_ENV, "invalid characters in containerID", value)
        elif cmd in commands and var == "CNI_IFNAME":
            _check_ifname(value)
    if missing:
        raise CNIError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    return cmd


def _version_tuple(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) > 3 or not all(p.isdigit() for p in parts):
        raise CNIError(ERR_DECODING, f'failed to parse version "{version}"')
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return nums[0], nums[1], nums[2]


def parse_config(stdin: bytes) -> dict[str, Any]:
    """skel's ``validateConfig`` plus ``DecodeVersion``: a JSON object with a valid network name."""
    try:
        conf = json.loads(stdin)
    except ValueError as exc:
        raise CNIError(ERR_DECODING, f"error unmarshall network config: {exc}") from None
    if not isinstance(conf, dict):
        raise CNIError(ERR_DECODING, "error unmarshall network config: json: cannot unmarshal "
                                     f"{_json_kind(conf)} into Go value of type struct")
    name = conf.get("name")
    if name is not None and not isinstance(name, str):
        raise CNIError(ERR_DECODING, "error unmarshall network config: json: cannot unmarshal "
                                     f"{_json_kind(name)} into Go struct field .name of type string")
    if not name:
        raise CNIError(ERR_INVALID_CONFIG, "missing network name")
    if not _valid_name(name):
        raise CNIError(ERR_INVALID_CONFIG, "invalid characters found in network name", name)
    version = conf.get("cniVersion")
    if version is not None and not isinstance(version, str):
        raise CNIError(ERR_DECODING, "decoding version from network config: json: cannot unmarshal "
                                     f"{_json_kind(version)} into Go struct field .cniVersion of type string")
    return conf


def config_version(conf: Mapping[str, Any]) -> str:
    return conf.get("cniVersion") or "0.1.0"


def check_version(version: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{version}", plugin supports {_go_quote_list(SUPPORTED_VERSIONS)}')


# --- delegate execution ---------------------------------------------------------------------------


def find_in_path(plugin: str, cni_path: str) -> str:
    """CNI ``invoke.FindInPath`` with CNI_PATH's directories."""
    paths = [p for p in cni_path.split(":") if p] if cni_path else []
    if not plugin:
        raise CNIError(ERR_INTERNAL, "no plugin name provided")
    if "/" in plugin:
        raise CNIError(ERR_INTERNAL, f"invalid plugin name: {plugin}")
    if not paths:
        raise CNIError(ERR_INTERNAL, "no paths provided")
    for directory in paths:
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate):
            return candidate
    raise CNIError(ERR_INTERNAL, f'failed to find plugin "{plugin}" in path [{" ".join(paths)}]')


def exec_delegate(command: str, plugin: str, netconf: bytes, environ: Mapping[str, str],
                  lookup_prefix: str = "") -> bytes:
    """Run the delegate with CNI_COMMAND=command; its stdout on success, its error as CNIError.

    The delegate's own error passes through untouched; a lookup failure gets ``lookup_prefix``
    (flannel wraps ADD's errors, and Go's skel unwraps only the delegate's own error documents).
    """
    import subprocess

    try:
        path = find_in_path(plugin, environ.get("CNI_PATH", ""))
    except CNIError as exc:
        exc.msg = lookup_prefix + exc.msg
        raise
    env = dict(environ)
    env["CNI_COMMAND"] = command
    for attempt in range(6):
        try:
            proc = subprocess.run([path], input=netconf, env=env, capture_output=True, check=False)
            break
        except OSError as exc:
            if exc.errno == 26 and attempt < 5:  # ETXTBSY: the binary is being replaced, as Go retries
                import time

                time.sleep(1)
                continue
            raise CNIError(ERR_INTERNAL, f"netplugin failed with no error message: fork/exec {path}: "
                                         f"{_go_errno_text(exc)}") from None
    if proc.returncode != 0:
        raise _delegate_error(proc.returncode, proc.stdout, proc.stderr)
    if proc.stderr:
        sys.stderr.buffer.write(proc.stderr)
        sys.stderr.flush()
    return proc.stdout


def _delegate_error(status: int, stdout: bytes, stderr: bytes) -> CNIError:
    """The delegate's own error document passes through (CNI ``RawExec.pluginErr``)."""
    exit_text = f"exit status {status}" if status > 0 else f"signal: {-status}"
    if not stdout:
        if not stderr:
            return CNIError(0, f"netplugin failed with no error message: {exit_text}")
        return CNIError(0, f"netplugin failed: {json.dumps(stderr.decode(errors='replace'))}: {exit_text}")
    try:
        doc = json.loads(stdout)
        if not isinstance(doc, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        text = json.dumps(stdout.decode(errors="replace"))
        return CNIError(0, f"netplugin failed but error parsing its diagnostic message {text}: {exc}")
    code = doc.get("code")
    return CNIError(code if isinstance(code, int) else 0, str(doc.get("msg", "")),
                    str(doc.get("details", "")))


# --- commands -------------------------------------------------------------------------------------


def scratch_path(data_dir: str, container_id: str) -> str:
    return os.path.join(data_dir, container_id)


def save_scratch(path: str, data: bytes) -> None:
    """flannel's ``saveScratchNetConf``: directory 0700, file 0600, fsync before close."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd_add(conf: dict[str, Any], environ: Mapping[str, str]) -> bytes:
    nc = load_netconf(conf)
    env = load_subnet_env(nc["subnetFile"])
    delegate = build_delegate(conf, env)
    data = go_json(delegate).encode()
    sys.stderr.write("delegateAdd: netconf sent to delegate plugin:\n" + data.decode() + "\n")
    path = scratch_path(nc["dataDir"], environ["CNI_CONTAINERID"])
    try:
        save_scratch(path, data)
    except OSError as exc:
        raise CNIError(ERR_INTERNAL, f"open {exc.filename}: {_go_errno_text(exc)}") from None
    return exec_delegate("ADD", delegate["type"], data, environ, lookup_prefix="failed to delegate add: ")


def _read_scratch(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CNIError(ERR_INTERNAL, f"open {path}: {_go_errno_text(exc)}") from None


def cmd_del(conf: dict[str, Any], environ: Mapping[str, str]) -> bytes:
    nc = load_netconf(conf)
    path = scratch_path(nc["dataDir"], environ["CNI_CONTAINERID"])
    data = _read_scratch(path)
    if data is None:
        return b""  # already deleted or never added: success, per the CNI spec
    try:
        saved = json.loads(data)
        plugin = saved.get("type", "") if isinstance(saved, dict) else None
        if not isinstance(plugin, str):
            raise TypeError("no string type")
    except (ValueError, TypeError) as exc:
        # flannel leaves the interface on the bridge (gone at reboot) rather than fail DEL forever.
        sys.stderr.write(f"failed to parse netconf: {exc}")
        return b""
    exec_delegate("DEL", plugin, data, environ)
    try:
        os.remove(path)
    except OSError:
        pass  # per the spec DEL may proceed; a stale file only costs a no-op DEL later
    return b""


def cmd_check(conf: dict[str, Any], environ: Mapping[str, str]) -> bytes:
    nc = load_netconf(conf)
    path = scratch_path(nc["dataDir"], environ["CNI_CONTAINERID"])
    data = _read_scratch(path)
    if data is None:
        raise CNIError(ERR_UNKNOWN_CONTAINER, f"no saved delegate config for container "
                                              f"{environ['CNI_CONTAINERID']}", path)
    try:
        delegate = json.loads(data)
        if not isinstance(delegate, dict) or not isinstance(delegate.get("type"), str):
            raise TypeError("no string type")
    except (ValueError, TypeError) as exc:
        raise CNIError(ERR_DECODING, f"failed to parse saved delegate config {path}: {exc}") from None
    if "prevResult" in conf:
        delegate["prevResult"] = conf["prevResult"]
    if nc["runtimeConfig"] is not None:
        delegate["runtimeConfig"] = nc["runtimeConfig"]
    return exec_delegate("CHECK", delegate["type"], go_json(delegate).encode(), environ)


def _require_at_least(version: str, minimum: str, command: str) -> None:
    """skel's gate for commands newer than the config's version (CHECK >= 0.4.0, GC/STATUS >= 1.1.0)."""
    if _version_tuple(version) < _version_tuple(minimum):
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    if not any(_version_tuple(v) >= _version_tuple(version) for v in SUPPORTED_VERSIONS):
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"plugin version does not allow {command}")


def version_info() -> str:
    return json.dumps({"cniVersion": CURRENT_VERSION, "supportedVersions": SUPPORTED_VERSIONS},
                      separators=(",", ":")) + "\n"


def dispatch(environ: Mapping[str, str], stdin: bytes) -> bytes:
    """One plugin invocation: output bytes on success, CNIError otherwise."""
    cmd = check_environment(environ)
    if cmd == "VERSION":
        return version_info().encode()
    conf = parse_config(stdin)
    version = config_version(conf)
    if cmd in ("ADD", "DEL"):
        check_version(version)
        return (cmd_add if cmd == "ADD" else cmd_del)(conf, environ)
    if cmd == "CHECK":
        _require_at_least(version, "0.4.0", "CHECK")
        check_version(version)
        return cmd_check(conf, environ)
    if cmd in ("GC", "STATUS"):
        _require_at_least(version, "1.1.0", cmd)
    raise CNIError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {cmd}")


def _error_version(stdin: bytes) -> str:
    """cniVersion for an error document: the config's when it can be read, else ours."""
    try:
        conf = json.loads(stdin)
    except ValueError:
        return CURRENT_VERSION
    version = conf.get("cniVersion") if isinstance(conf, dict) else None
    return version if isinstance(version, str) and version else CURRENT_VERSION


def main(environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``flannel`` executable."""
    env = os.environ if environ is None else environ
    if not env.get("CNI_COMMAND"):
        from pyflannel import __version__

        sys.stderr.write(f"CNI Plugin flannel version {__version__} (pyflannel)\n"
                         f"CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
        return 0
    stdin = b"" if env.get("CNI_COMMAND") == "VERSION" else sys.stdin.buffer.read()
    try:
        out = dispatch(env, stdin)
    except CNIError as exc:
        sys.stdout.write(error_json(_error_version(stdin), exc))
        sys.stdout.flush()
        return 1
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
