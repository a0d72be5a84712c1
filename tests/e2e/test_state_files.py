"""Files and sockets: the state dir lets others pass through to the socket but not list it
(0711, only while the socket is in it and open to them; else 0700); everything else in it is
0700/0600, the store and its WAL included, also when an older hangard left them wider; a user
cannot open the store. --socket-mode and --socket-group set the socket's mode and group."""
import errno
import os
import shutil
import stat
import subprocess
import tempfile
import unittest

import harness
from harness import Daemon, DaemonTest

USER = 1001
ADMIN_GROUP, ADMIN_GID = "adm", 4  # exists on Debian; only used as a socket group


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def as_user(fn):
    """Runs fn() in a child as USER (no groups); returns the errno it raised, or 0."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(USER)
            os.setuid(USER)
            fn()
        except OSError as e:
            code = e.errno
        finally:
            os.write(w, str(code).encode())
            os._exit(0)
    os.close(w)
    out = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return int(out)


class StateFiles(DaemonTest):
    qemu = harness.FAKE_QEMU

    def test_modes_of_everything_in_the_state_dir(self):
        self.create("f1")
        sock = self.daemon.socket
        self.assertEqual(mode(self.state_dir), 0o711)
        self.assertEqual(mode(sock), 0o666)  # every request is authorized by the peer's uid
        db = os.path.join(self.state_dir, "hangar.db")
        for name in ["hangar.db", "hangar.db-wal", "hangar.db-shm", "hangard.log",
                     "hangard.lock"]:
            self.assertEqual(mode(os.path.join(self.state_dir, name)), 0o600, name)
        for entry in os.listdir(self.state_dir):
            path = os.path.join(self.state_dir, entry)
            if path == sock or entry.startswith("sanitizer."):
                continue
            want = 0o700 if os.path.isdir(path) else 0o600
            self.assertEqual(mode(path), want, entry)
        self.assertEqual(mode(os.path.join(self.state_dir, "machines")), 0o700)

        # Another user reaches the socket, but cannot list the dir nor open the store.
        self.assertEqual(as_user(lambda: os.listdir(self.state_dir)), errno.EACCES)
        self.assertEqual(as_user(lambda: open(db, "rb")), errno.EACCES)
        self.assertEqual(as_user(lambda: open(db + "-wal", "rb")), errno.EACCES)
        self.assertEqual(as_user(lambda: open(os.path.join(self.state_dir, "hangard.log"))),
                         errno.EACCES)

        def connect():
            import socket
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.close()
        self.assertEqual(as_user(connect), 0)


class SocketOptions(unittest.TestCase):
    def start(self, *extra, prepare=None):
        state_dir = tempfile.mkdtemp(prefix="hangar-e2e-")
        self.addCleanup(shutil.rmtree, state_dir, ignore_errors=True)
        if prepare:
            prepare(state_dir)
        d = Daemon(state_dir, harness.FAKE_QEMU, extra)
        d.start()
        self.addCleanup(lambda: self.assertEqual(d.sanitizer_reports(), ""))
        self.addCleanup(d.stop)
        return d

    def test_socket_mode_and_group(self):
        d = self.start("--socket-mode", "0660", "--socket-group", ADMIN_GROUP)
        st = os.stat(d.socket)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_gid), (0o660, ADMIN_GID))
        self.assertEqual(mode(d.state_dir), 0o711)  # the group must reach it
        status, _ = d.request("GET", "/v1/machines")
        self.assertEqual(status, 200)

        # A socket for its owner alone: the state dir is closed to everyone else.
        d = self.start("--socket-mode", "0600")
        self.assertEqual(mode(d.socket), 0o600)
        self.assertEqual(mode(d.state_dir), 0o700)

    def test_socket_elsewhere_closes_the_state_dir(self):
        run = tempfile.mkdtemp(prefix="hangar-run-")
        self.addCleanup(shutil.rmtree, run, ignore_errors=True)
        d = self.start("--socket", os.path.join(run, "api.sock"))
        d.socket = os.path.join(run, "api.sock")
        self.assertEqual(mode(d.socket), 0o666)
        self.assertEqual(mode(d.state_dir), 0o700)
        status, _ = d.request("GET", "/v1/machines")
        self.assertEqual(status, 200)

    def test_files_left_wider_are_tightened(self):
        def older(state_dir):
            os.chmod(state_dir, 0o755)
            for name in ["hangar.db", "hangard.log", "hangard.1.log"]:
                open(os.path.join(state_dir, name), "w").close()
                os.chmod(os.path.join(state_dir, name), 0o644)
        d = self.start(prepare=older)
        for name in ["hangar.db", "hangar.db-wal", "hangard.log", "hangard.1.log"]:
            self.assertEqual(mode(os.path.join(d.state_dir, name)), 0o600, name)
        self.assertEqual(mode(d.state_dir), 0o711)

    def test_bad_socket_options_are_refused(self):
        for extra, what in [(["--socket-mode", "0400"], "--socket-mode"),
                            (["--socket-mode", "666x"], "--socket-mode"),
                            (["--socket-group", "no-such-group-hangar"], "no such group")]:
            state_dir = tempfile.mkdtemp(prefix="hangar-e2e-")
            self.addCleanup(shutil.rmtree, state_dir, ignore_errors=True)
            out = subprocess.run([harness.HANGARD, "--state-dir", state_dir, "--listen", "none",
                                  "--foreground", "--accel", harness.ACCEL, *extra],
                                 capture_output=True, text=True, timeout=30)
            self.assertNotEqual(out.returncode, 0, extra)
            self.assertIn(what, out.stderr, extra)


if __name__ == "__main__":
    harness.main()
