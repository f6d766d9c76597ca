"""``ssa serve`` locked down (issue 18, item 8): a real server on the loopback address, bounded requests.

A request whose ``Host`` header names another site (DNS rebinding) is refused, folders are not listed,
no symbolic link or ``..`` leads out of the folder, and the explorer's own files are served.
"""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import sys
import threading

import pytest

from ssa.cli import main
from ssa.viz.explorer.server import make_server

TIMEOUT = 10  # seconds for any one request: a hung server fails the test instead of hanging it


@pytest.fixture
def site(tmp_path):
    """A folder shaped like `ssa explore --out DIR/` writes, plus links out of it and a link inside it."""
    d = tmp_path / "site"
    (d / "data" / "neurons").mkdir(parents=True)
    (d / "index.html").write_text("<!DOCTYPE html><title>explorer</title>\n")
    (d / "data" / "index.json").write_text('{"format": 1}')
    (d / "data" / "class-0.json").write_text('{"nodes": []}')
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": "outside the served folder"}')
    (d / "data" / "link.json").symlink_to("/etc/passwd")
    (d / "data" / "secret.json").symlink_to(secret)
    (d / "data" / "etc").symlink_to("/etc")
    (d / "data" / "inside.json").symlink_to(d / "data" / "class-0.json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.html").write_text("not the explorer")
    (d / "data" / "other").symlink_to(tmp_path / "other")  # a folder link whose index.html lies outside
    return d


@pytest.fixture
def server(site):
    srv = make_server(site, 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(TIMEOUT)


def get(port: int, path: str, host: str | None = "127.0.0.1:{port}", method: str = "GET",
        address: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One request with exactly the ``Host`` header given (None: none at all)."""
    conn = http.client.HTTPConnection(address, port, timeout=TIMEOUT)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host.format(port=port))
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_the_explorer_files_are_served(server, site):
    port = server.server_address[1]
    for host in ("127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LocalHost:{port}", "127.0.0.1"):
        status, _, body = get(port, "/", host)
        assert (status, body) == (200, (site / "index.html").read_bytes()), host
    status, headers, body = get(port, "/data/index.json")
    assert (status, body) == (200, b'{"format": 1}')
    assert headers["Content-type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
    assert get(port, "/data/class-0.json?v=1")[::2] == (200, b'{"nodes": []}')
    assert get(port, "/data/inside.json")[::2] == (200, b'{"nodes": []}')  # a link that stays inside: fine
    assert get(port, "/data/index.json", method="HEAD")[0] == 200
    assert get(port, "/data/nothere.json")[0] == 404


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "127.0.0.1:1", "localhost:{port}@evil.example", "[::1", "", None])
def test_a_request_for_another_host_is_refused(server, host):
    """DNS rebinding: a page on evil.example re-points its name at 127.0.0.1; the browser then sends
    ``Host: evil.example``. The data must not come back, for GET and HEAD."""
    port = server.server_address[1]
    for method in ("GET", "HEAD"):
        status, _, body = get(port, "/data/index.json", host, method)
        assert status == 421, (host, method, status)
        assert b"format" not in body
    _, _, body = get(port, "/", host)
    assert b"Host header does not name this server" in body


def test_folders_are_not_listed(server):
    port = server.server_address[1]
    status, _, body = get(port, "/data/")
    assert status == 403 and b"no folder listings" in body and b"class-0.json" not in body
    assert get(port, "/data/neurons/")[0] == 403
    assert get(port, "/data")[0] == 301  # the base class's redirect to /data/, which is refused


@pytest.mark.parametrize("path", ["/data/link.json", "/data/secret.json", "/data/etc/passwd", "/data/etc/",
                                  "/data/other/", "/data/other/index.html", "/data/%6cink.json"])
def test_no_link_leads_out_of_the_folder(server, path):
    status, _, body = get(server.server_address[1], path)
    assert status == 403, (path, status)
    assert b"root:" not in body and b"secret" not in body and b"not the explorer" not in body
    assert b"outside the served folder" in body


@pytest.mark.parametrize("path", ["/../secret.json", "/data/../../secret.json", "/%2e%2e/secret.json",
                                  "/..%2fsecret.json", "/data/..%2f..%2fsecret.json", "//etc/passwd",
                                  "/../../../../etc/passwd"])
def test_dot_dot_stays_in_the_folder(server, path):
    status, _, body = get(server.server_address[1], path)
    assert status in (403, 404), (path, status)
    assert b"root:" not in body and b"secret" not in body


def test_host_given_is_accepted_and_bound(site):
    """``--host`` binds that address and adds its name to the accepted ``Host`` values."""
    srv = make_server(site, 0, "127.0.0.2")
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = srv.server_address[1]
        assert srv.server_address[0] == "127.0.0.2"
        assert get(port, "/", "127.0.0.2:{port}", address="127.0.0.2")[0] == 200
        assert get(port, "/", "localhost:{port}", address="127.0.0.2")[0] == 200
        assert get(port, "/", "evil.example:{port}", address="127.0.0.2")[0] == 421
        with pytest.raises(OSError):  # not on 127.0.0.1
            get(port, "/", address="127.0.0.1")
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(TIMEOUT)


def test_the_default_binds_the_loopback_address_only(site):
    srv = make_server(site, 0)
    try:
        assert srv.server_address[0] == "127.0.0.1"
    finally:
        srv.server_close()


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "http://127.0.0.1", "", "a b"])
def test_a_bad_host_option_is_refused(site, host, capsys):
    assert main(["serve", str(site), "--port", "0", "--host", host]) == 2
    err = capsys.readouterr().err
    assert "--host must be an address or a host name" in err and err.count("\n") == 1, err


def test_ssa_serve_in_a_real_process(site):
    """The command itself: prints its URL, serves the files, refuses a foreign Host, stops on Ctrl-C."""
    proc = subprocess.Popen([sys.executable, "-m", "ssa.cli", "serve", str(site), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        port = int(m.group(1))
        assert get(port, "/data/index.json")[::2] == (200, b'{"format": 1}')
        assert get(port, "/data/index.json", "evil.example:{port}")[0] == 421
        assert get(port, "/data/link.json")[0] == 403
        assert get(port, "/data/")[0] == 403
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err and "warning" not in err


def test_a_host_off_the_loopback_is_warned_about(site):
    """Binding another address works but says, on stderr, that others can now read the data."""
    addr = next((a for a in _local_addresses() if not a.startswith("127.")), None)
    if addr is None:
        pytest.skip("this machine has no address besides the loopback one")
    proc = subprocess.Popen([sys.executable, "-m", "ssa.cli", "serve", str(site), "--port", "0", "--host", addr],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://{addr}:" in line, line
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "ssa: warning: --host" in err and "keep the default 127.0.0.1" in err


def _local_addresses() -> list[str]:
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            return [s.getsockname()[0]]
    except OSError:
        return []



def test_ipv6_loopback(site):
    """``--host ::1`` listens on the IPv6 loopback address, prints it in brackets and checks Host the same way."""
    import socket

    from ssa.viz.explorer.server import url_of

    try:
        srv = make_server(site, 0, "::1")
    except ValueError:
        pytest.skip("this machine has no IPv6 loopback address")
    assert srv.address_family == socket.AF_INET6
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = srv.server_address[1]
        assert url_of(srv) == f"http://[::1]:{port}/"
        assert get(port, "/", "[::1]:{port}", address="::1")[0] == 200
        assert get(port, "/", "evil.example:{port}", address="::1")[0] == 421
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(TIMEOUT)
