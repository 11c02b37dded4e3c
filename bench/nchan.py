"""nginx + nchan for the benchmark: installed from Debian when missing, run from a config
of the bench's own in a temporary directory (never the system's), one worker process.

    location /events/<channel>   nchan_subscriber (EventSource: clients send
                                 ``Accept: text/event-stream``)
    location /pub/<channel>      nchan_publisher: ``POST`` the event's data as the body;
                                 ``GET`` with ``Accept: text/json`` answers the channel's
                                 info, including its subscriber count (loadgen's
                                 ``--ready nchan`` waits on it)

Messages are kept in nchan's buffer as little as nchan allows (``nchan_message_buffer_length
1``, 10 s): sserelay's non-durable channels keep none, and a deep buffer would only cost
nchan memory that the comparison does not ask of it.

    python bench/nchan.py --port 8090     # serve until Ctrl-C (for trying it by hand)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NGINX = "/usr/sbin/nginx"
MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
PACKAGES = ("nginx-light", "libnginx-mod-nchan")

CONFIG = """\
load_module {module};
worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{
    worker_connections {connections};
    multi_accept on;
    use epoll;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    nchan_shared_memory_size {shm};

    server {{
        listen {host}:{port} backlog=4096;

        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
            nchan_message_buffer_length 1;
            nchan_message_timeout 10s;
        }}

        location ~ ^/events/(\\w+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
            nchan_subscriber_timeout 0;
        }}
    }}
}}
"""


def installed() -> bool:
    return Path(NGINX).exists() and Path(MODULE).exists()


def ensure_installed(say: object = print) -> bool:
    """Install nginx-light and libnginx-mod-nchan with apt-get when missing (as root)."""
    if installed():
        return True
    tell = say if callable(say) else print
    if os.geteuid() != 0:
        tell(f"nchan: {NGINX} or {MODULE} missing; run: apt-get install -y {' '.join(PACKAGES)}")
        return False
    tell(f"nchan: installing {' '.join(PACKAGES)} from Debian (apt-get), as they are missing")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        tell("$ " + " ".join(cmd))
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=900)
        if done.returncode != 0:
            tell(f"nchan: {' '.join(cmd)} failed: {done.stderr.decode()[-500:]}")
            return False
    # The package may have started the system's nginx; the bench never uses it.
    return installed()


def version() -> str:
    """nginx's and the nchan package's versions, e.g. 'nginx 1.22.1, nchan 1:1.3.6-2'."""
    out = subprocess.run([NGINX, "-v"], capture_output=True, timeout=10).stderr.decode()
    nginx = out.strip().rsplit("/", 1)[-1]
    query = ["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"]
    try:
        nchan = subprocess.run(query, capture_output=True, timeout=10).stdout.decode()
    except OSError:
        nchan = "?"
    return f"nginx {nginx}, nchan {nchan or '?'}"


def write_config(tmp: Path, host: str, port: int, *, shm: str = "256M") -> Path:
    """The bench's own nginx.conf (one worker) in ``tmp``; returns its path.

    The worker may open as many files as the hard ``RLIMIT_NOFILE`` allows (20,000 here):
    nginx raises its own soft limit to ``worker_rlimit_nofile``.
    """
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    tmp.mkdir(parents=True, exist_ok=True)
    user = ""
    if os.geteuid() == 0:
        # As root the master hands the worker to an unprivileged user, who must reach tmp.
        user = "user nobody nogroup;"
        tmp.chmod(0o755)
    text = CONFIG.format(
        module=MODULE,
        nofile=nofile,
        connections=nofile - 100,
        tmp=tmp,
        user=user,
        shm=shm,
        host=host,
        port=port,
    )
    conf = tmp / "nginx.conf"
    conf.write_text(text)
    return conf


def command(conf: Path) -> list[str]:
    """nginx in the foreground with only the bench's config (``-p`` keeps it off /etc)."""
    return [NGINX, "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    if not ensure_installed():
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="sserelay-nchan-"))
    try:
        conf = write_config(tmp, args.host, args.port)
        print(f"{version()}: http://{args.host}:{args.port}/events/CHANNEL, POST /pub/CHANNEL")
        return subprocess.call(command(conf))
    except KeyboardInterrupt:
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
