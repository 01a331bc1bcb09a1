//! A bare HTTP/1.0 client for etcd's JSON gateway in tests: HTTP/1.0 so
//! servers stream a response body unchunked until they close, which lets a
//! test read a watch stream line by line. Shared by the shard-node and
//! federation tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn send(endpoint: &str, path: &str, body: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(endpoint).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    BufReader::new(s)
}

/// Reads the status line and headers; returns the status code.
fn read_head(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status =
        line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            return status;
        }
    }
}

/// `POST path` with a JSON body: the status and the parsed JSON answer.
pub fn post(endpoint: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut r = send(endpoint, path, body);
    let status = read_head(&mut r);
    let mut text = String::new();
    r.read_to_string(&mut text).unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}"));
    (status, json)
}

/// A streaming call (watch, keepalive): the status and the response lines as
/// they arrive, each parsed as JSON. Dropping it closes the connection.
pub struct Stream {
    pub status: u16,
    reader: BufReader<TcpStream>,
}

impl Stream {
    pub fn open(endpoint: &str, path: &str, body: &str) -> Stream {
        let mut reader = send(endpoint, path, body);
        let status = read_head(&mut reader);
        Stream { status, reader }
    }

    /// The next line, or None when the server ended the stream.
    pub fn next_line(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("stream line not JSON ({e}): {line:?}")))
    }
}

/// etcd's base64 of a string (the gateway's encoding of bytes fields).
pub fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
