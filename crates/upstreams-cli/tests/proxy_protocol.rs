//! The PROXY protocol (issue #18) against real peers on loopback: a real nginx with
//! `listen … proxy_protocol` must see the real client address behind `send_proxy` (v1 and
//! v2), and a real HAProxy with `send-proxy-v2` in front of an `accept_proxy` listener must
//! hand that listener the client's address, which it passes on. A client without a valid
//! header is closed before anything is forwarded, and counted.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// nginx answering every request with `$proxy_protocol_addr` read from a PROXY protocol
/// header, and logging it.
async fn nginx(dir: &Path) -> (Server, SocketAddr) {
    let port = free_port();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off; master_process off; worker_processes 1;\n\
             error_log {d}/error.log; pid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{ client_body_temp_path {d}; proxy_temp_path {d};\n\
               fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               log_format pp '$proxy_protocol_addr';\n\
               access_log {d}/access.log pp;\n\
               server {{ listen {port} proxy_protocol;\n\
                 location / {{ return 200 \"$proxy_protocol_addr\\n\"; }} }} }}\n"
        ),
    )
    .unwrap();
    let server = Server(
        Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian: apt-get install nginx-light)"),
    );
    listening(port, "nginx").await;
    (server, port)
}

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 7));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sees_the_real_client_behind_send_proxy_v1_and_v2() {
    let dir = scratch("pp-nginx");
    let (_nginx, port) = nginx(&dir).await;
    for version in ["v1", "v2"] {
        let p = proxy(&port.to_string(), &["--send-proxy", version]);
        let got = request_from(Some(CLIENT), p.addrs[0]).await.unwrap();
        assert_eq!(got, "127.0.0.7", "{version}");
    }
    let log = std::fs::read_to_string(dir.join("access.log")).unwrap();
    assert_eq!(log.lines().collect::<Vec<_>>(), ["127.0.0.7", "127.0.0.7"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_in_front_of_accept_proxy() {
    let dir = scratch("pp-haproxy");
    let (_nginx, nginx_port) = nginx(&dir).await;
    // Ours: accepts HAProxy's v2 header, passes the client on to nginx in v1.
    let ours = proxy(
        &nginx_port.to_string(),
        &["--accept-proxy", "--send-proxy", "v1"],
    );
    let front = free_port();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  maxconn 64\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
             frontend f\n  bind {front}\n  default_backend b\n\
             backend b\n  server ours {} send-proxy-v2\n",
            ours.addrs[0]
        ),
    )
    .unwrap();
    let _haproxy = Server(
        Command::new("haproxy")
            .args(["-db", "-f", dir.join("haproxy.cfg").to_str().unwrap()])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("haproxy (Debian: apt-get install haproxy)"),
    );
    listening(front, "haproxy").await;
    for _ in 0..3 {
        assert_eq!(
            request_from(Some(CLIENT), front).await.unwrap(),
            "127.0.0.7"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_valid_header_is_closed_and_counted() {
    let b = backend("b", "127.0.0.1:0");
    let p = proxy(
        &b.addrs[0].to_string(),
        &["--accept-proxy", "--proxy-protocol-timeout", "300ms"],
    );
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    // No header: closed, and nothing reached the backend.
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
    // Silent: closed at the deadline.
    let mut s = TcpStream::connect(listen).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(listener_figure(admin, "proxy_protocol_rejected").await, 2);
    assert_eq!(listener_figure(admin, "refused").await, 0);
    let metrics = admin_get(admin, "/metrics").await;
    assert!(metrics.contains("upstreams_listener_proxy_protocol_rejected_total"));
    // A valid v1 header from a client that then speaks in the same segment: the request goes
    // through whole.
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 5000 80\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
