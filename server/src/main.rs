//! `hbws-server [--port N] [--interval-ms N] [--timeout-ms N] [--max-missed N] [--log-level L]`
//!
//! Runs the reference heartbeat server on 127.0.0.1 and prints its side of every connection as
//! log lines until killed: `seconds LEVEL conn N: what happened`. `--interval-ms 0` disables
//! server pings. `--log-level` is error, warn, info or debug (the default: every ping and pong).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbws_server::{LogLevel, Server, ServerConfig};

const USAGE: &str = "usage: hbws-server [--port N] [--interval-ms N] [--timeout-ms N] [--max-missed N] [--log-level error|warn|info|debug]";

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
    let mut level = LogLevel::Debug;
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
            "--log-level" => level = parse(&arg, args.next()),
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
        if ev.level() <= level {
            let t = t0.elapsed();
            let l = ev.level().as_str();
            println!("{:>6}.{:03} {l:<5} {ev}", t.as_secs(), t.subsec_millis());
        }
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
