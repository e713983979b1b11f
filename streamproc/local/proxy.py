"""The secure stack's schema registry endpoint: nginx terminating TLS and checking HTTP basic
auth in front of Apicurio (which cannot do basic auth without an identity server).

nginx comes from the system (Debian: ``apt-get install nginx``); its configuration, the
password file and the certificate (the broker's, from :mod:`streamproc.local.tls`) are made
here. The password file holds an ``$apr1$`` hash (Apache's MD5-based crypt), the one scheme
nginx verifies with its own code on every platform, whatever the C library's ``crypt``
offers.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import secrets
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from streamproc.errors import ServiceStartError
from streamproc.local import process
from streamproc.local.registry import CCOMPAT_PATH
from streamproc.local.tls import BrokerTls

REGISTRY_USER = "registry"
_APR1_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def apr1(password: str, salt: str) -> str:
    """Apache's ``$apr1$`` hash of ``password`` (what ``htpasswd -m`` and ``openssl passwd
    -apr1`` write).

    >>> apr1("password", "salt1234")
    '$apr1$salt1234$k3J5yKYW6TlGmTytnkXbQ0'
    """
    pw, salt_b, magic = password.encode(), salt[:8].encode(), b"$apr1$"
    alt = hashlib.md5(pw + salt_b + pw).digest()
    ctx = pw + magic + salt_b
    n = len(pw)
    while n > 0:
        ctx += alt[: min(16, n)]
        n -= 16
    i = len(pw)
    while i:
        ctx += b"\0" if i & 1 else pw[:1]
        i >>= 1
    final = hashlib.md5(ctx).digest()
    for r in range(1000):
        step = pw if r & 1 else final
        if r % 3:
            step += salt_b
        if r % 7:
            step += pw
        step += final if r & 1 else pw
        final = hashlib.md5(step).digest()
    out = ""
    for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        v = (final[a] << 16) | (final[b] << 8) | final[c]
        for _ in range(4):
            out += _APR1_ALPHABET[v & 0x3F]
            v >>= 6
    v = final[11]
    for _ in range(2):
        out += _APR1_ALPHABET[v & 0x3F]
        v >>= 6
    return f"$apr1${salt[:8]}${out}"


def find_nginx() -> str:
    """The system's nginx; :class:`ServiceStartError` naming the package when there is none."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise ServiceStartError(
            "the secure stack's registry endpoint needs nginx: install it (Debian/Ubuntu: "
            "apt-get install -y nginx; macOS: brew install nginx)"
        )
    return found


_CONF = """\
daemon off;
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {home}/tmp/body;
    proxy_temp_path {home}/tmp/proxy;
    fastcgi_temp_path {home}/tmp/fastcgi;
    uwsgi_temp_path {home}/tmp/uwsgi;
    scgi_temp_path {home}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        auth_basic "streamproc schema registry";
        auth_basic_user_file {htpasswd};
        client_max_body_size 16m;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Authorization "";
            proxy_set_header X-Forwarded-Proto https;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


@dataclass
class RegistryProxy:
    """nginx on ``port`` (TLS, basic auth) forwarding to the registry on ``upstream_port``."""

    home: Path
    port: int
    upstream_port: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def log(self) -> Path:
        return self.home / "nginx.log"

    def password(self) -> str:
        """The registry user's password: made once, kept (mode 0600) in the proxy's home."""
        path = self.home / ".password"
        if path.exists():
            return path.read_text().strip()
        self.home.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password)
        return password

    def start(self, tls: BrokerTls, timeout_s: float = 30.0) -> int:
        process.check_port_free(self.port, "schema registry's TLS endpoint")
        nginx = find_nginx()
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.home / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        salt = "".join(secrets.choice(_APR1_ALPHABET) for _ in range(8))
        htpasswd = self.home / "htpasswd"
        htpasswd.write_text(f"{REGISTRY_USER}:{apr1(self.password(), salt)}\n")
        htpasswd.chmod(0o600)
        # As root, nginx's workers would run as nobody and could not read the password file
        # (mode 0600): they run as the user who started the stack instead.
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
        conf = self.home / "nginx.conf"
        conf.write_text(_CONF.format(home=self.home, user=user, port=self.port,
                                     cert=tls.cert_pem, key=tls.key_pem, htpasswd=htpasswd,
                                     upstream=self.upstream_port))  # fmt: skip
        cmd = [nginx, "-p", str(self.home), "-e", str(self.home / "error.log"), "-c", str(conf)]
        pid = process.spawn(cmd, self.log, self.home)
        process.wait_ready("schema registry's TLS endpoint", pid, self.home / "error.log",
                           lambda: self.ready(tls), timeout_s)  # fmt: skip
        return pid

    def ready(self, tls: BrokerTls) -> bool:
        try:
            r = httpx.get(f"{self.url}/subjects", auth=(REGISTRY_USER, self.password()),
                          verify=ssl.create_default_context(cafile=str(tls.ca_pem)),
                          timeout=1.0)  # fmt: skip
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def client_properties(self, tls: BrokerTls) -> str:
        """The registry lines of the client properties file, as Confluent's clients name
        them (``schema.registry.*``)."""
        return (
            f"schema.registry.url={self.url}\n"
            "schema.registry.basic.auth.credentials.source=USER_INFO\n"
            f"schema.registry.basic.auth.user.info={REGISTRY_USER}:{self.password()}\n"
            f"schema.registry.ssl.ca.location={tls.ca_pem}\n"
        )
