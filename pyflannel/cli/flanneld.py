"""The ``flanneld`` console script: flags and environment, logging, then the daemon."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Sequence

from pyflannel import __version__

log = logging.getLogger("pyflannel.flanneld")


def main(argv: Sequence[str] | None = None) -> int:
    from pyflannel.cli.flags import HelpRequested, UsageError, parse_args_with_warnings, usage, validate
    from pyflannel.log import setup_logging

    args = list(sys.argv[1:] if argv is None else argv)
    import os

    try:
        settings, warnings = parse_args_with_warnings(args, os.environ)
    except HelpRequested:
        sys.stderr.write(usage())
        return 0
    except UsageError as e:
        sys.stderr.write(f"{e}\n{usage()}")
        return 2
    if settings.version:
        # flannel prints its version on stderr.
        sys.stderr.write(f"{__version__}\n")
        return 0
    setup_logging(settings.log.verbosity)
    if argv is None and settings.etcd.password:
        # flannel leaves the password readable by every user in `ps`; we mask it, first thing.
        from pyflannel.cli.argv import hide_password_in_cmdline

        hide_password_in_cmdline()
    for w in warnings:
        log.warning("%s", w)
    try:
        validate(settings)
    except ValueError as e:
        log.error("%s", e)
        return 1
    log.info("pyflannel %s starting: %r", __version__, settings)

    import asyncio  # here, not at the top: the password above is masked before this import

    from pyflannel.daemon import Daemon, FatalError

    # The objects of the imports are never garbage: out of the collector's way. And a collection
    # per 50000 new container objects, not 700: a listing of 5000 leases allocates ~100000 and
    # the default thresholds would run the cycle collector over all of them again and again
    # (start-up time, issue 6). The daemon makes few cycles; reference counting frees the rest.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        asyncio.run(Daemon(settings).run())
    except FatalError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # a bug: one line, the traceback only at -v 1 and above
        log.error("fatal: %s: %s", type(e).__name__, e, exc_info=settings.log.verbosity >= 1)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
