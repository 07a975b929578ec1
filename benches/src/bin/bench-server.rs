//! The reference server (`hbws-server` library), configured lean for benchmarks: small
//! tungstenite buffers, no event printing, the event log cleared continuously, server pings off
//! unless `--interval-ms N`. Prints `PORT n` once, then obeys stdin lines: `silent`, `unsilent`,
//! `rst`, `fin`, `quit` (EOF on stdin ends it, unless `--detached`).
//!
//! `bench-server [--port N] [--interval-ms N] [--buf N] [--detached]`

use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use hbws_server::{DropKind, Server, ServerConfig};

fn main() {
    let mut port = 0u16;
    let mut interval = 0u64;
    let mut buf = 1024usize;
    let mut detached = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--detached" {
            detached = true;
            continue;
        }
        let v = args.next().expect("flag value");
        match a.as_str() {
            "--port" => port = v.parse().unwrap(),
            "--interval-ms" => interval = v.parse().unwrap(),
            "--buf" => buf = v.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    let cfg = ServerConfig {
        ping_interval: (interval > 0).then(|| Duration::from_millis(interval)),
        send_protocol_pings: false,
        echo: true,
        max_message_size: 1 << 20,
        read_buffer_size: buf,
        write_buffer_size: 0,
        on_event: None,
        ..Default::default()
    };
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let server = match Server::start_on(addr, cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-server: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("PORT {}", server.addr().port());
    let server = std::sync::Arc::new(server);
    let s2 = server.clone();
    // The server keeps every event in memory; a long benchmark must not grow it.
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        s2.clear_events();
    });
    if detached {
        // Run until killed; stdin is not a control channel.
        loop {
            std::thread::park();
        }
    }
    for line in std::io::stdin().lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("silent") => server.set_silent(true),
            Ok("unsilent") => server.set_silent(false),
            Ok("rst") => server.drop_all(DropKind::Rst),
            Ok("fin") => server.drop_all(DropKind::Fin),
            Ok("quit") | Err(_) => break,
            Ok(_) => {}
        }
    }
    // stdin closed (parent gone) or quit: exit without a slow graceful stop.
    std::process::exit(0);
}
