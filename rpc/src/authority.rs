//! Accepting etcd clients that send an invalid HTTP/2 `:authority`.
//!
//! etcd's Go clients have sent values that are not authorities: clientv3
//! 3.4 dialing an endpoint given as `http://host:port` (etcdctl's Status,
//! HashKV, Defragment, Snapshot, `--cluster`), clientv3 3.5.0–3.5.9's
//! `#initially=[...]` (the kube-apiserver of that era). etcd's server
//! ignores the header; hyper's h2 answers such requests with PROTOCOL_ERROR
//! and will not relax that (hyperium/h2#525).
//!
//! `ClientConn` sits between a client socket and the server. It reads the
//! first request's header block: a valid authority (the normal case) leaves
//! the rest of the connection untouched, byte for byte. An invalid one
//! switches the connection to rewriting: every header block is decoded
//! (tracking the client's HPACK table) and re-encoded as plain literals,
//! never indexed, so the server's HPACK table stays empty and in sync, with
//! the authority repaired (or dropped if it cannot be). gRPC clients use one
//! authority per connection, so the first request decides.

use crate::tls::Io;
use bytes::{Buf, BytesMut};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a server may have: always safe.
const MAX_FRAME: usize = 16384;

/// The client port's listener: TCP_NODELAY (small responses must not wait
/// out delayed ACKs); `serve` then adds TLS and authority repair.
pub struct ClientListener(pub TcpListener);

impl ClientListener {
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((s, addr)) => {
                    let _ = s.set_nodelay(true);
                    return (s, addr);
                }
                // Out of file descriptors and the like: back off, keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Mode {
    /// Until the first request's headers are seen.
    Inspect,
    /// Everything as it comes.
    Passthrough,
    /// Header blocks re-encoded with a repaired authority.
    Rewrite,
}

struct Block {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
    raw: Vec<u8>,
}

pub struct ClientConn {
    io: Box<dyn Io>,
    mode: Mode,
    preface_seen: bool,
    /// Bytes from the client not yet processed, and bytes ready for the server.
    raw: BytesMut,
    out: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
}

impl ClientConn {
    /// A client connection (plain or TLS, from its first byte) to repair.
    pub fn new(io: Box<dyn Io>) -> Self {
        Self {
            io,
            mode: Mode::Inspect,
            preface_seen: false,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            block: None,
            decoder: loona_hpack::Decoder::new(),
        }
    }

    /// Moves every complete unit from `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        if !self.preface_seen {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw[..n] != PREFACE[..n] {
                self.mode = Mode::Passthrough; // HTTP/1: /metrics, /health
            } else if n == PREFACE.len() {
                self.out.extend_from_slice(&self.raw.split_to(n));
                self.preface_seen = true;
            }
        }
        while self.preface_seen && self.mode != Mode::Passthrough && self.raw.len() >= 9 {
            let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            if self.raw.len() < 9 + len {
                break;
            }
            let frame = self.raw.split_to(9 + len);
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            match kind {
                HEADERS => {
                    let fragment = header_fragment(flags, &frame[9..]).ok_or_else(|| bad("malformed HEADERS frame"))?;
                    self.block = Some(Block { stream, end_stream: flags & END_STREAM != 0, fragment, raw: frame.to_vec() });
                }
                CONTINUATION if self.block.is_some() => {
                    let b = self.block.as_mut().expect("checked");
                    b.fragment.extend_from_slice(&frame[9..]);
                    b.raw.extend_from_slice(&frame);
                }
                _ => {
                    self.out.extend_from_slice(&frame);
                    continue;
                }
            }
            if flags & END_HEADERS != 0 {
                self.finish_block()?;
            }
        }
        if self.mode == Mode::Passthrough {
            let rest = self.raw.split();
            self.out.extend_from_slice(&rest);
        }
        Ok(())
    }

    fn finish_block(&mut self) -> io::Result<()> {
        let b = self.block.take().expect("a block in progress");
        let headers = self.decoder.decode(&b.fragment).map_err(|e| bad(&e.to_string()))?;
        let valid = headers
            .iter()
            .find(|(n, _)| n == b":authority")
            .is_none_or(|(_, v)| http::uri::Authority::try_from(v.as_slice()).is_ok());
        if self.mode == Mode::Inspect && valid {
            self.out.extend_from_slice(&b.raw);
            self.mode = Mode::Passthrough;
            return Ok(());
        }
        self.mode = Mode::Rewrite;
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .filter_map(|(n, v)| if n == b":authority" { repair_authority(&v).map(|v| (n, v)) } else { Some((n, v)) })
            .collect();
        encode_block(&mut self.out, b.stream, b.end_stream, &headers);
        Ok(())
    }
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("http2: {why}"))
}

/// The header block fragment of a HEADERS frame payload (without padding
/// and priority fields).
fn header_fragment(flags: u8, payload: &[u8]) -> Option<Vec<u8>> {
    let (mut start, mut end) = (0, payload.len());
    if flags & PADDED != 0 {
        let pad = *payload.first()? as usize;
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end).map(<[u8]>::to_vec)
}

/// `http://host:port`, `passthrough:///http://host:port`,
/// `#initially=[http://a:1;http://b:2]` → `host:port` (the first endpoint).
pub fn repair_authority(v: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(v).ok()?;
    let s = s.trim_start_matches("#initially=[").trim_end_matches(']');
    let first = s.split(';').next()?;
    let after_scheme = first.rsplit("://").next()?;
    let host = after_scheme.split('/').find(|p| !p.is_empty())?;
    http::uri::Authority::try_from(host).ok().map(|_| host.as_bytes().to_vec())
}

/// HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1).
fn put_int(out: &mut Vec<u8>, high_bits: u8, prefix: u8, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(high_bits | v as u8);
        return;
    }
    out.push(high_bits | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Header fields as "literal without indexing, new name" (RFC 7541 §6.2.2).
pub fn encode_literals(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut block = vec![];
    for (name, value) in headers {
        block.push(0x00);
        put_int(&mut block, 0, 7, name.len());
        block.extend_from_slice(name);
        put_int(&mut block, 0, 7, value.len());
        block.extend_from_slice(value);
    }
    block
}

fn encode_block(out: &mut BytesMut, stream: u32, end_stream: bool, headers: &[(Vec<u8>, Vec<u8>)]) {
    let block = encode_literals(headers);
    let chunks: Vec<&[u8]> = if block.is_empty() { vec![&[][..]] } else { block.chunks(MAX_FRAME).collect() };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut flags = if i == last { END_HEADERS } else { 0 };
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

impl AsyncRead for ClientConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = buf.remaining().min(this.out.len());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Passthrough && this.raw.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // End of stream: hand over whatever is left, then EOF.
                let rest = this.raw.split();
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.out.extend_from_slice(&rest);
                continue;
            }
            this.raw.extend_from_slice(rb.filled());
            this.process()?;
        }
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_what_etcd_clients_send() {
        let r = |s: &str| repair_authority(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(r("http://127.0.0.1:2379").as_deref(), Some("127.0.0.1:2379"));
        assert_eq!(r("passthrough:///http://10.0.0.1:2379").as_deref(), Some("10.0.0.1:2379"));
        assert_eq!(r("#initially=[http://a:1;http://b:2]").as_deref(), Some("a:1"));
        assert_eq!(r("not an authority at all"), None);
    }

    #[test]
    fn literals_decode_back_with_a_real_hpack_decoder() {
        let headers: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":authority".to_vec(), b"127.0.0.1:2379".to_vec()),
            (b"x-long".to_vec(), vec![b'v'; 300]),
        ];
        let block = encode_literals(&headers);
        let mut d = loona_hpack::Decoder::new();
        assert_eq!(d.decode(&block).unwrap(), headers);
    }

    #[test]
    fn strips_padding_and_priority() {
        // PADDED (2 bytes of padding) + PRIORITY (5 bytes) around "abc".
        let payload = [2u8, 0, 0, 0, 0, 16, b'a', b'b', b'c', 0, 0];
        assert_eq!(header_fragment(PADDED | PRIORITY, &payload).unwrap(), b"abc");
        assert!(header_fragment(PADDED, &[9u8, 1]).is_none());
    }
}
