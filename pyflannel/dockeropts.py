"""`mk-docker-opts`: flannel's dist/mk-docker-opts.sh as a Python console script.

Why a re-implementation and not a thin wrapper: hosts that run Docker on a flannel network call the shell
script from a systemd unit (``ExecStartPost=mk-docker-opts -d /run/docker_opts.env``) and source its
output as ``EnvironmentFile=``. The output must therefore be *byte-identical* to what the script writes
under ``/bin/sh`` (dash on Debian), including its quirks:

* the env file is *sourced*, so any variable in the environment or in the file whose ``set`` line
  contains ``DOCKER_OPT_`` ends up in the output (the script greps ``set``), sorted the way dash sorts
  ``set``, word-split the way an unquoted ``$(...)`` is;
* the combined key's existing value (``$DOCKER_OPTS`` from the environment) is prepended;
* ``echo`` is dash's, which interprets backslash escapes;
* a bare file name given to ``-f`` is looked up in ``$PATH`` by ``.`` (exit 2 when absent there);
* a failed output write is reported but does not change the exit status (the script's last command
  wins); the ``ip route`` "via" check runs *after* the file is written and then exits 1.

We model the shell's variable table as a dict (environment, then the script's own variables, then the
sourced assignments) and replay the script's steps on it. Deliberate limits: the sourced file is read as
plain ``NAME=value`` assignments (with ``export``, comments and sh quoting; no ``$`` expansion or other
commands), and unquoted expansions are not glob-expanded. Error texts follow dash, with the script's
line numbers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_FLANNEL_ENV = "/run/flannel/subnet.env"
DEFAULT_DOCKER_ENV = "/run/docker_opts.env"
DEFAULT_COMBINED_KEY = "DOCKER_OPTS"
_DASH_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OPTSTRING = "f:d:icmk:?h"
_IFS_WS = " \t\n"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

USAGE = """\
{0} [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)

"""

# Line numbers of the original script, used in dash-style error messages ("<argv0>: <line>: ...").
_LINE_SOURCE = 58
_LINE_TRUNCATE = 86
_LINE_INDIVIDUAL = 94
_LINE_COMBINED = 102
_LINE_ARITH = 107
_LINE_ROUTE = 111

RouteLister = Callable[[], str]


class ScriptExit(Exception):
    """The script stopped with this status after writing its message to stderr."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class Options:
    """The script's variables set from the command line (getopts loop)."""

    flannel_env: str = DEFAULT_FLANNEL_ENV
    docker_env: str = DEFAULT_DOCKER_ENV
    combined_opts_key: str = DEFAULT_COMBINED_KEY
    indiv_opts: bool = False
    combined_opts: bool = False
    ipmasq: bool = True
    optarg: str | None = None  # dash leaves OPTARG set to the last option's argument ("" for flags)


def parse_args(args: Sequence[str], err: Callable[[str], object]) -> Options | None:
    """dash ``getopts "f:d:icmk:?h"``: clustered flags, attached or separate arguments, stop at the
    first non-option or ``--``. Returns None where the script calls ``usage`` (``-h``, ``-?``, an
    unknown option or a missing argument, after dash's own message)."""
    opts = Options()
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            break
        i += 1
        j = 1
        while j < len(word):
            c = word[j]
            j += 1
            pos = _OPTSTRING.find(c) if c != ":" else -1
            if pos < 0:
                err(f"Illegal option -{c}\n")
                return None
            arg: str | None = None
            if _OPTSTRING[pos + 1 : pos + 2] == ":":
                if j < len(word):
                    arg, j = word[j:], len(word)
                elif i < len(args):
                    arg = args[i]
                    i += 1
                else:
                    err(f"No arg for -{c} option\n")
                    return None
            opts.optarg = arg if arg is not None else ""
            if c in "?h":
                return None
            if c == "f":
                opts.flannel_env = arg or ""
            elif c == "d":
                opts.docker_env = arg or ""
            elif c == "i":
                opts.indiv_opts = True
            elif c == "c":
                opts.combined_opts = True
            elif c == "m":
                opts.ipmasq = False
            elif c == "k":
                opts.combined_opts_key = arg or ""
    return opts


# --- small models of dash behaviour -------------------------------------------------------------


def dash_echo(args: Sequence[str]) -> str:
    """Output of dash's ``echo``: ``-n`` only as first argument, backslash escapes always interpreted,
    ``\\c`` ends the output (including the newline)."""
    newline = True
    if args and args[0] == "-n":
        newline, args = False, args[1:]
    text = " ".join(args)
    out: list[str] = []
    k = 0
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
    while k < len(text):
        ch = text[k]
        if ch != "\\" or k + 1 >= len(text):
            out.append(ch)
            k += 1
            continue
        nxt = text[k + 1]
        if nxt == "c":
            return "".join(out)
        if nxt in simple:
            out.append(simple[nxt])
            k += 2
        elif nxt == "0":
            digits = re.match(r"[0-7]{0,3}", text[k + 2 :])
            octal = digits.group(0) if digits else ""
            out.append(chr(int(octal or "0", 8) & 0xFF))
            k += 2 + len(octal)
        else:
            out.append("\\")
            k += 1
    return "".join(out) + ("\n" if newline else "")


def command_substitution(output: str) -> str:
    """``$(...)`` strips trailing newlines."""
    return output.rstrip("\n")


def field_split(value: str) -> list[str]:
    """Unquoted expansion with the default IFS (no globbing: see the module docstring)."""
    return value.split() if value.strip(_IFS_WS) else []


def single_quote(value: str) -> str:
    """dash's quoting in ``set`` output: always single quotes, ``'`` as ``'"'"'``."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def parse_env_file(text: str) -> list[tuple[str, str]]:
    """The assignments a sourced env file makes, in order (``NAME=value``, optional ``export``,
    sh single/double quotes and backslashes, ``#`` comments)."""
    result: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.lstrip(" \t")
        if line.startswith("export "):
            line = line[len("export ") :].lstrip(" \t")
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)=", line)
        if not m:
            continue
        rest = line[m.end() :]
        value: list[str] = []
        k = 0
        while k < len(rest):
            ch = rest[k]
            if ch in " \t":
                break
            if ch == "'":
                end = rest.find("'", k + 1)
                end = len(rest) if end < 0 else end
                value.append(rest[k + 1 : end])
                k = end + 1
            elif ch == '"':
                k += 1
                while k < len(rest) and rest[k] != '"':
                    if rest[k] == "\\" and k + 1 < len(rest) and rest[k + 1] in '$`"\\':
                        k += 1
                    value.append(rest[k])
                    k += 1
                k += 1
            elif ch == "\\" and k + 1 < len(rest):
                value.append(rest[k + 1])
                k += 2
            else:
                value.append(ch)
                k += 1
        result.append((m.group(1), "".join(value)))
    return result


def expand_dollar(expr: str, shell_vars: Mapping[str, str]) -> str:
    """``eval x="$<expr>"`` / ``eval echo "$<expr>"`` for what the script builds: a name (its value),
    a name followed by literal text, or nothing after ``$`` (a literal ``$``)."""
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", expr)
    if not m:
        return "$" + expr
    return shell_vars.get(m.group(0), "") + expr[m.end() :]


def _cut(line: str, delim: str, fields: Sequence[int]) -> str:
    """``cut -d<delim> -f<fields>`` on one line (a line without the delimiter passes unchanged)."""
    if delim not in line:
        return line
    parts = line.split(delim)
    return delim.join(parts[f - 1] for f in fields if f - 1 < len(parts))


def _dash_number(text: str) -> int | None:
    """An integer constant as dash's arithmetic reads it (C syntax: 0x hex, leading-0 octal)."""
    m = re.fullmatch(r"(-?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if not m:
        return None
    digits = m.group(2)
    if digits[:2].lower() == "0x":
        n = int(digits, 16)
    elif digits.startswith("0"):
        n = int(digits, 8)
    else:
        n = int(digits)
    return -n if m.group(1) else n


def _arith_minus_one(operand: str, shell_vars: Mapping[str, str]) -> int:
    """``$((operand-1))`` in dash for what ``cut`` can yield; raises ValueError with dash's message."""
    expr = f"{operand}-1"
    text = operand.strip(_IFS_WS)
    if text == "":
        return -1
    number = _dash_number(text)
    if number is not None and not text.startswith("-"):
        return number - 1
    if _NAME_RE.match(text):
        value = shell_vars.get(text, "").strip(_IFS_WS)
        if value == "":
            return -1
        from_var = _dash_number(value)
        if from_var is None:
            raise ValueError(f"Illegal number: {value}")
        return from_var - 1
    if text[0].isdigit():
        raise ValueError(f'arithmetic expression: expecting EOF: "{expr}"')
    raise ValueError(f'arithmetic expression: expecting primary: "{expr}"')


def _bre_to_regex(pattern: str) -> re.Pattern[str]:
    """grep's basic regular expression for what a subnet can contain: ``.`` is any character, ``*``
    repeats, ``^``/``$`` anchor, backslash quotes; everything else is literal."""
    out: list[str] = []
    k = 0
    while k < len(pattern):
        ch = pattern[k]
        if ch == "\\" and k + 1 < len(pattern):
            out.append(re.escape(pattern[k + 1]))
            k += 2
            continue
        if ch == "." or (ch == "*" and out):
            out.append(ch)
        elif ch == "^" and k == 0:
            out.append("^")
        elif ch == "$" and k == len(pattern) - 1:
            out.append("$")
        else:
            out.append(re.escape(ch))
        k += 1
    return re.compile("".join(out))


def route_conflict(subnet: str, routes: str, shell_vars: Mapping[str, str] | None = None) -> str:
    """The script's check for an existing route to the subnet ``via`` a gateway: the text of
    ``ip route show|grep <network>/<len>|grep via`` (empty when none). ``subnet`` is FLANNEL_SUBNET
    (``10.1.74.1/24`` -> network ``10.1.74.0/24`` by subtracting 1 from the last octet, as the script
    does). Raises ValueError for an operand dash cannot do arithmetic on."""
    line = command_substitution(dash_echo(field_split(subnet))).split("\n")[0]
    dot_four = _cut(_cut(line, ".", [4]), "/", [1])
    last = _arith_minus_one(dot_four, shell_vars or {})
    pre = _cut(line, ".", [1, 2, 3])
    length = _cut(line, "/", [2])
    words = field_split(f"{pre}.{last}/{length}")
    if not words:
        return ""
    rx = _bre_to_regex(words[0])
    hits = [r for r in routes.split("\n") if rx.search(r) and "via" in r]
    return "\n".join(hits).rstrip("\n")


def ip_route_show() -> str:
    """`ip route show` in the current namespace, as the script runs it (its stderr passes through)."""
    return subprocess.run(["ip", "route", "show"], stdout=subprocess.PIPE, text=True, check=False).stdout


# --- the script ----------------------------------------------------------------------------------


def _open_fail_reason(exc: OSError) -> str:
    """dash's wording for a failed ``>``/``>>`` redirection."""
    if exc.errno == 2:
        return "Directory nonexistent"
    return exc.strerror or str(exc)


def _find_dot_file(name: str, shell_vars: Mapping[str, str]) -> str | None:
    """dash's ``.``: a name without ``/`` is searched in ``$PATH`` only (not the current directory)."""
    if "/" in name:
        return name
    for directory in shell_vars.get("PATH", _DASH_DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _stderr_write(text: str) -> None:
    """Looked up at call time so a replaced sys.stderr (tests) is honoured."""
    sys.stderr.write(text)
    sys.stderr.flush()


def run(
    argv0: str,
    args: Sequence[str],
    environ: Mapping[str, str],
    route_lister: RouteLister = ip_route_show,
    err: Callable[[str], object] | None = None,
) -> int:
    """Replay mk-docker-opts.sh; returns the exit status (output file written as a side effect)."""
    if err is None:
        err = _stderr_write
    opts = parse_args(args, err)
    if opts is None:
        err(USAGE.format(argv0))
        return 1
    if not opts.indiv_opts and not opts.combined_opts:
        opts.indiv_opts = opts.combined_opts = True

    # The shell's variable table: environment, then the script's assignments.
    shell_vars: dict[str, str] = {"PATH": _DASH_DEFAULT_PATH, **environ}
    shell_vars.update(
        flannel_env=opts.flannel_env,
        docker_env=opts.docker_env,
        combined_opts_key=opts.combined_opts_key,
        indiv_opts="true" if opts.indiv_opts else "false",
        combined_opts="true" if opts.combined_opts else "false",
        ipmasq="true" if opts.ipmasq else "false",
        opt="?",
        OPTIND=str(len(args) + 1),
    )
    if opts.optarg is not None:
        shell_vars["OPTARG"] = opts.optarg

    if os.path.isfile(opts.flannel_env):
        dot_name = " ".join(field_split(opts.flannel_env))
        path = _find_dot_file(dot_name, shell_vars)
        if path is None:
            err(f"{argv0}: {_LINE_SOURCE}: .: {dot_name}: not found\n")
            return 2
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as exc:
            err(f"{argv0}: {_LINE_SOURCE}: .: cannot open {dot_name}: {exc.strerror}\n")
            return 2
        shell_vars.update(parse_env_file(text))

    subnet = shell_vars.get("FLANNEL_SUBNET", "")
    if subnet:
        shell_vars["DOCKER_OPT_BIP"] = f"--bip={subnet}"
    if shell_vars.get("FLANNEL_MTU", ""):
        shell_vars["DOCKER_OPT_MTU"] = f"--mtu={shell_vars['FLANNEL_MTU']}"
    ipmasq_value = shell_vars.get("FLANNEL_IPMASQ", "")
    if ipmasq_value and shell_vars["ipmasq"] == "true":
        if ipmasq_value == "true":
            shell_vars["DOCKER_OPT_IPMASQ"] = "--ip-masq=false"
        elif ipmasq_value == "false":
            shell_vars["DOCKER_OPT_IPMASQ"] = "--ip-masq=true"
        else:
            err(dash_echo([f"Invalid value of FLANNEL_IPMASQ: {ipmasq_value}"]))
            return 1

    key = shell_vars["combined_opts_key"]
    docker_opts = expand_dollar(key, shell_vars)
    if docker_opts:
        docker_opts += " "
    shell_vars["docker_opts"] = docker_opts

    # `for opt in $(set | grep "DOCKER_OPT_")`: dash lists variables sorted by name, single-quoted.
    set_lines: list[str] = []
    for name in sorted(shell_vars, key=lambda n: n.encode("utf-8", "surrogateescape")):
        set_lines.extend(f"{name}={single_quote(shell_vars[name])}".split("\n"))
    words = field_split("\n".join(line for line in set_lines if "DOCKER_OPT_" in line))

    output: list[tuple[int, str]] = []
    for word in words:
        opt_name = command_substitution(dash_echo([word])).split("\n")[0].split("=", 1)[0]
        if "'" in opt_name or '"' in opt_name:
            err(f"{argv0}: 1: eval: Syntax error: Unterminated quoted string\n")
            opt_value = ""
        else:
            opt_value = command_substitution(dash_echo(field_split(expand_dollar(opt_name, shell_vars))))
        if shell_vars["indiv_opts"] == "true":
            output.append((_LINE_INDIVIDUAL, dash_echo([f'{opt_name}="{opt_value}"'])))
        docker_opts = f"{docker_opts} {opt_value}"
    if shell_vars["combined_opts"] == "true":
        output.append((_LINE_COMBINED, dash_echo([f'{key}="{docker_opts}"'])))

    _write_like_the_script(shell_vars["docker_env"], output, argv0, err)

    if subnet:
        try:
            conflict = route_conflict(subnet, route_lister(), shell_vars)
        except ValueError as exc:
            err(f"{argv0}: {_LINE_ARITH}: {exc}\n")
            return 2
        except FileNotFoundError:
            err(f"{argv0}: {_LINE_ROUTE}: ip: not found\n")
            conflict = ""
        if conflict:
            err(dash_echo([f"Your routing table already contains the subnet: {conflict}"]))
            return 1
    return 0


def _write_like_the_script(path: str, lines: Sequence[tuple[int, str]], argv0: str,
                           err: Callable[[str], object]) -> None:
    """``echo -n "" >file`` then one ``echo ... >>file`` per line: a failed open is reported per
    attempt and does not stop the script."""
    try:
        with open(path, "w", encoding="utf-8", errors="surrogateescape"):
            pass
    except OSError as exc:
        err(f"{argv0}: {_LINE_TRUNCATE}: cannot create {path}: {_open_fail_reason(exc)}\n")
    for line_no, text in lines:
        try:
            with open(path, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
        except OSError as exc:
            err(f"{argv0}: {line_no}: cannot create {path}: {_open_fail_reason(exc)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point (`mk-docker-opts`)."""
    args = list(sys.argv if argv is None else argv)
    argv0 = args[0] if args else "mk-docker-opts"
    return run(argv0, args[1:], os.environ)


if __name__ == "__main__":
    sys.exit(main())
