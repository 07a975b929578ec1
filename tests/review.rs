//! Review findings on the session loop (issue 9): each test shows one defect over real
//! loopback sockets, on tokio's paused clock where time is the point.

use std::sync::Arc;
use std::time::Duration;

use hbws::{Client, Config, Event, EventSink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A server that completes the handshake, writes `raw` (server frames, unmasked) in one write,
/// then reads the client's next frame. Returns its address and a receiver of what it read:
/// `Some((opcode, payload unmasked, when))`, or `None` on EOF.
async fn raw_after_handshake(
    raw: Vec<u8>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<Option<(u8, Vec<u8>, Instant)>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let mut tcp = ws.into_inner();
        tcp.write_all(&raw).await.unwrap();
        let _ = tx.send(read_frame(&mut tcp).await);
        // Hold the socket open: the client ends the connection, not us.
        std::future::pending::<()>().await;
    });
    (addr, rx)
}

/// Reads one masked client frame (small payload) or EOF.
async fn read_frame(tcp: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>, Instant)> {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await.ok()?;
    let len = (head[1] & 0x7f) as usize;
    assert!(len < 126, "small frames only");
    let mut key = [0u8; 4];
    tcp.read_exact(&mut key).await.ok()?;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    Some((head[0] & 0x0f, payload, Instant::now()))
}

/// The client waits for a sink before it connects; this one ignores everything.
struct Nop;

impl EventSink for Nop {
    fn event(&mut self, _: &Event<'_>) {}
}

fn quiet() -> Config {
    Config {
        ping_interval: Duration::from_secs(60),
        pong_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// The server's Close arrives with more bytes behind it in the same read (a frame after its
/// Close). The client stops reading once the Close is in, so those bytes stay buffered; the
/// write step must still write our answer to the Close at once, not leave it until
/// `close_timeout` drops the socket (the server then sees no Close at all).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn review_server_close_with_trailing_bytes_is_answered() {
    // Close 1000, then a text frame "x".
    let raw = vec![0x88, 0x02, 0x03, 0xE8, 0x81, 0x01, b'x'];
    let (addr, rx) = raw_after_handshake(raw).await;
    let start = Instant::now();
    let c = Client::connect_on(
        &tokio::runtime::Handle::current(),
        &format!("ws://{addr}/"),
        Arc::new(quiet()),
        Some(Box::new(Nop)),
    )
    .unwrap();
    let got = rx.await.unwrap();
    let (op, payload, at) = got.expect("the client dropped the link without answering our Close");
    assert_eq!(op, 0x8, "the client's first frame answers our Close");
    assert_eq!(payload, vec![0x03, 0xE8]);
    assert!(
        at - start < Duration::from_millis(500),
        "answer took {:?}",
        at - start
    );
    c.close(false);
}

/// A protocol error (a reserved opcode) with write batching on: our Close 1002 is queued in the
/// wire while the bad frame's bytes stay buffered. It must be written at once, not left until
/// `close_timeout` drops the socket without it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn review_protocol_error_close_sent_with_write_batching() {
    let raw = vec![0x83, 0x00];
    let (addr, rx) = raw_after_handshake(raw).await;
    let start = Instant::now();
    let cfg = Config {
        write_buffer_size: 1024,
        ..quiet()
    };
    let c = Client::connect_on(
        &tokio::runtime::Handle::current(),
        &format!("ws://{addr}/"),
        Arc::new(cfg),
        Some(Box::new(Nop)),
    )
    .unwrap();
    let got = rx.await.unwrap();
    let (op, payload, at) = got.expect("the client dropped the link without its Close 1002");
    assert_eq!(op, 0x8);
    assert_eq!(&payload[..2], &1002u16.to_be_bytes());
    assert!(
        at - start < Duration::from_millis(500),
        "Close took {:?}",
        at - start
    );
    c.close(false);
}
