//! `hbws-server [--port N] [--interval-ms N] [--timeout-ms N] [--max-missed N]`
//!
//! Runs the reference heartbeat server on 127.0.0.1 and prints every event as a line until
//! killed. `--interval-ms 0` disables server pings.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbws_server::{Server, ServerConfig};

const USAGE: &str =
    "usage: hbws-server [--port N] [--interval-ms N] [--timeout-ms N] [--max-missed N]";

fn parse<T: std::str::FromStr>(flag: &str, value: Option<String>) -> T {
    let Some(value) = value else {
        eprintln!("{flag} needs a value\n{USAGE}");
        std::process::exit(2);
    };
    value.parse().unwrap_or_else(|_| {
        eprintln!("bad value for {flag}: {value:?}\n{USAGE}");
        std::process::exit(2);
    })
}

fn main() {
    let mut port: u16 = 0;
    let mut cfg = ServerConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = parse(&arg, args.next()),
            "--interval-ms" => {
                let ms: u64 = parse(&arg, args.next());
                cfg.ping_interval = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--timeout-ms" => cfg.pong_timeout = Duration::from_millis(parse(&arg, args.next())),
            "--max-missed" => cfg.max_missed = parse(&arg, args.next()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }

    let t0 = Instant::now();
    cfg.on_event = Some(Arc::new(move |ev| {
        let t = t0.elapsed();
        println!("{:>6}.{:03} {ev:?}", t.as_secs(), t.subsec_millis());
    }));
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let server = match Server::start_on(addr, cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", server.url());
    loop {
        std::thread::park();
    }
}
