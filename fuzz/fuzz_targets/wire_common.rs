//! What the two framing targets share: received messages as owned values, the verdict's
//! kind, and a parser for what the client wrote.

use hbws::wire::{In, WireError};

#[derive(Debug, PartialEq)]
pub enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

pub fn own(m: In<'_>) -> Got {
    match m {
        In::Text(t) => Got::Text(t.into()),
        In::Binary(b) => Got::Binary(b.into()),
        In::Ping(p) => Got::Ping(p.into()),
        In::Pong(p) => Got::Pong(p.into()),
        In::Close(c) => Got::Close(c.map(|(c, r)| (c, r.into()))),
    }
}

pub fn verdict(e: WireError) -> String {
    match e {
        WireError::Io(_) => "io".into(),
        WireError::Reset => "reset".into(),
        WireError::Closed => "closed".into(),
        WireError::Protocol(p) => format!("protocol: {p}"),
        WireError::TooBig { size, max } => format!("too big {size} {max}"),
        WireError::Utf8 => "utf8".into(),
    }
}

/// Parses the client's writes into (opcode, unmasked payload); every frame complete.
pub fn client_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 2, "a cut frame header");
        assert_eq!(b[0] & 0xF0, 0x80, "FIN set, no reserved bits");
        assert_eq!(b[1] & 0x80, 0x80, "client frames are masked");
        let (hl, len) = match b[1] & 0x7F {
            126 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
            127 => (10, u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize),
            n => (2, n as usize),
        };
        assert!(b.len() >= hl + 4 + len, "a cut frame");
        let key = &b[hl..hl + 4];
        let p: Vec<u8> = b[hl + 4..hl + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ key[i % 4])
            .collect();
        out.push((b[0] & 0x0F, p));
        b = &b[hl + 4 + len..];
    }
    out
}

