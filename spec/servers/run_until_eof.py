#!/usr/bin/python3
"""Runs a command until our stdin reaches EOF, then stops it.

Usage: /usr/bin/python3 spec/servers/run_until_eof.py [--cleanup-if FILE DIR] STATUSFILE CMD [ARGS...]

spec/servers.lua starts this through io.popen(cmd, "w"): our stdin is its
pipe, so when the spec closes the pipe -- or its process ends in any way --
the command gets SIGTERM (then SIGKILL after 3 s) and we exit once it is
gone; pclose() therefore returns only after the command has stopped.

If the command exits on its own first (nginx could not start, or the starter
killed it by pid to stop it even if someone else still holds a copy of the
pipe), "exited CODE\n" is written to STATUSFILE (atomically) and we exit.

With --cleanup-if FILE DIR: if FILE exists at EOF (servers.lua passes nginx's
pid file, which exists only while nginx runs after binding its port), DIR is
removed (rm -rf) once the command has stopped, so temp files go even when the
starter is killed; a failed start leaves DIR alone (the starter may retry).

Inherited file descriptors beyond stdio are closed first, so neither we nor
the command hold sockets of the process that started us.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading

try:
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
except (ValueError, OSError):
    os.closerange(3, 4096)


def main():
    args = sys.argv[1:]
    cleanup = ready_file = None
    if args[:1] == ["--cleanup-if"]:
        ready_file, cleanup, args = args[1], args[2], args[3:]
    status_file, cmd = args[0], args[1:]
    # The command's stdin is /dev/null: only we watch the pipe.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    eof = threading.Event()
    done = threading.Event()  # EOF or the command exited

    def watch():
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        eof.set()
        done.set()

    threading.Thread(target=watch, daemon=True).start()

    def reap():
        code = proc.wait()
        if not eof.is_set():
            tmp = status_file + ".tmp"
            with open(tmp, "w") as f:
                f.write("exited %d\n" % code)
            os.rename(tmp, status_file)
        done.set()

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    done.wait()
    if not eof.is_set() or not os.path.exists(ready_file or ""):
        cleanup = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reaper.join(1)
    if cleanup:
        shutil.rmtree(cleanup, ignore_errors=True)


if __name__ == "__main__":
    main()
