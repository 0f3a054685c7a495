"""Helpers shared by the proxy benchmarks (bench-proxy, bench-sockmap): free ports, nginx
instances in a scratch directory, three nginx HTTP backends, CPU time from /proc."""
import os, socket, subprocess, tempfile, time

WORK = tempfile.mkdtemp(prefix="bench-proxy-")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def nginx_conf(name, body, modules=""):
    prefix = os.path.join(WORK, name)
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""{modules}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 4096; }}
{body}
""")
    return prefix, conf


def start_backend(i, port, proxy_protocol=False):
    """An nginx HTTP backend; with `proxy_protocol`, its listener expects a PROXY header."""
    pp = " proxy_protocol" if proxy_protocol else ""
    prefix, conf = nginx_conf(f"backend{i}", f"""
http {{
    access_log off;
    client_body_temp_path {WORK}/backend{i}/body;
    proxy_temp_path {WORK}/backend{i}/proxy;
    fastcgi_temp_path {WORK}/backend{i}/fastcgi;
    uwsgi_temp_path {WORK}/backend{i}/uwsgi;
    scgi_temp_path {WORK}/backend{i}/scgi;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{port}{pp}; location / {{ return 200 "backend {i}\\n"; }} }}
}}""")
    p = subprocess.Popen(["nginx", "-p", prefix, "-c", conf], stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def cpu_seconds(pids):
    """(user, system) CPU seconds of `pids`."""
    user = system = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
        except OSError:
            pass
    return user, system


def family(pid):
    """The process and its children (nginx master + worker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [int(p) for p in out]
