"""The ``neurotwin`` command line: one entry point whose groups come from each package."""

from __future__ import annotations

import errno
import logging
import os
import sys

import click

from acquisition.cli import session_group
from acquisition.session import SessionError
from hardware.cli import present_cmd, rig_group
from hardware.errors import BridgeFileError, EndpointError
from kit.cli import UserError
from simulation.cli import SIMULATED_RIGS
from stimulus_synthesis.cli import corpus_group, synthesize_cmd
from stimulus_synthesis.constraints import ConstraintError
from stimulus_synthesis.pool import PoolError
from twin.cli import twin_group
from twin.errors import TwinError

from .commands import protocol_group, report_cmd, simulate_cmd
from .protocol import ProtocolError

log = logging.getLogger("neurotwin")
# each package's errors for bad input: said in one line, exit status 2
USER_ERRORS = (TwinError, SessionError, PoolError, ConstraintError, ProtocolError, EndpointError, BridgeFileError)


# errors of the storage itself, said in one line even where the error names no file
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


class _Root(click.Group):
    """Turns every package's user-facing error into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:  # a folder that does not exist or may not be written, a full disk
            if exc.filename is None and exc.errno not in STORAGE_ERRNOS:
                raise
            log.debug("file system error", exc_info=True)  # -vv: where it happened
            where = f"'{exc.filename}'" + (f" -> '{exc.filename2}'" if exc.filename2 else "")
            raise UserError(f"{where if exc.filename else 'a write failed'}: {exc.strerror or exc}") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="neurotwin")
def cli(verbose: int) -> None:
    """NeuroTwin: closed-loop control of brain activity with a digital twin."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # its thread count, said on import, is not ours to say
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


cli.add_command(twin_group)
cli.add_command(session_group)
for command in SIMULATED_RIGS:
    rig_group.add_command(command)
cli.add_command(rig_group)
cli.add_command(present_cmd)
cli.add_command(corpus_group)
cli.add_command(synthesize_cmd)
cli.add_command(simulate_cmd)
cli.add_command(protocol_group)
cli.add_command(report_cmd)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="neurotwin")


if __name__ == "__main__":
    main()
