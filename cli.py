"""Command-line plumbing shared by every command of the repository.

Bad input is an InputError whose message is one line naming the file, row or flag and what was expected;
`run_cli` prints it as `error: ...` with exit status 2 and no traceback. `write_atomically` makes a
command's output files appear together or not at all.
"""
import argparse
import os
import sys


class InputError(Exception):
    """Bad input: the message is one line naming the file, row or flag and what was expected."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are InputErrors: one line naming the flag (run_cli prints it), not usage."""

    def error(self, message):
        raise InputError(f'{message} (see {self.prog} --help)')


def run_cli(main):
    """Run a command's main(); bad input becomes one line on stderr and exit status 2, no traceback."""
    try:
        main()
    except InputError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:            # output piped into e.g. `head`: stop quietly, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def write_atomically(paths, write):
    """Write several files so that they appear together or not at all.

    write(temporary) receives {final path: temporary path} and must write every temporary file. Only when
    it returned are they renamed into place; on any failure they are removed, and earlier files stay.
    """
    temporary = {path: f'{path}.tmp-{os.getpid()}' for path in paths}
    try:
        try:
            for path in paths:
                os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
            write(temporary)
        except OSError as err:
            raise InputError(f'cannot write {err.filename or ", ".join(paths)}: {err.strerror or err}') from None
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporary.values():
            if os.path.exists(tmp):
                os.remove(tmp)
