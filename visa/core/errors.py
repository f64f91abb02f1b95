class VisaError(Exception):
    """A problem with the user's input or setup.

    The message is one line that names the file, key or value and says what to do; `visa.run` prints it
    without a stack trace and exits with status 1.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a scheduler's stop signal, `signum`) during a run, with what was saved (`str(e)`);
    `visa.run` prints it on one line and exits with the shell's status for that signal (130 for Ctrl-C)."""

    def __init__(self, saved: str, signum: int = 2):  # 2: SIGINT
        super().__init__(saved)
        self.signum = signum
