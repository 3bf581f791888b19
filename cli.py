"""Command-line plumbing shared by every command of the repository.

Bad input is an InputError whose message is one line naming the file, row or flag and what was expected;
`run_cli` prints it as `error: ...` with exit status 2 and no traceback. `write_atomically` makes a
command's output files appear together or not at all.
"""
import argparse
import errno
import os
import shutil
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


def write_atomically(paths, write, what=None, size=None):
    """Write several files so that they appear together or not at all.

    write(temporary) receives {final path: temporary path} and must write every temporary file. Only when
    it returned are they renamed into place; on any failure they are removed, and earlier files stay.
    A failed write (an OSError) is an InputError naming the file; when the disk is full (or a file-size or
    quota limit is hit) it also gives the free space on that disk, beside `size` bytes of `what` if given.
    """
    temporary = {path: f'{path}.tmp-{os.getpid()}' for path in paths}

    def discard():
        for tmp in temporary.values():
            if os.path.exists(tmp):
                os.remove(tmp)
    try:
        try:
            for path in paths:
                os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
            write(temporary)
        except OSError as err:
            discard()                           # first, so that the free space below is the disk's own
            failed = next((path for path, tmp in temporary.items() if err.filename == tmp), err.filename)
            message = f'cannot write {failed or ", ".join(paths)}: {err.strerror or err}'
            if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                try:
                    free = shutil.disk_usage(os.path.dirname(failed or paths[0]) or '.').free
                except OSError:
                    free = None
                if free is not None:
                    needed = f'{what or "the file"} takes {size_text(size)}, ' if size is not None else ''
                    limit = ': a file-size limit (ulimit -f) or a quota?' if size is not None and size < free else ''
                    message += f' ({needed}{size_text(free)} free on that disk{limit})'
            raise InputError(message) from None
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    finally:
        discard()


def size_text(n):
    """A byte count for people: 812 B, 40.2 kB, 124.0 MB, 3.1 GB."""
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if n >= scale:
            return f'{n / scale:,.1f} {unit}'
    return f'{n} B'
