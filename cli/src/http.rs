//! A minimal HTTP/1.1 JSON client for placement's admin API (one request
//! per connection; the admin API is small and local).

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn call(base: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport).await.with_context(|| format!("connecting to placement at {base}"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![];
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, rest) = text.split_once("\r\n\r\n").context("bad HTTP response from placement")?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("bad HTTP status line")?;
    let payload = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    let v: serde_json::Value = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload.clone()));
    if status >= 300 {
        let msg = v.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or(payload);
        bail!("placement: {msg}");
    }
    Ok(v)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
