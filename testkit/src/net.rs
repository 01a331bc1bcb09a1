//! Loopback addresses for tests.

use std::net::TcpListener;

/// A loopback address of its own for one test cluster (all of 127.0.0.0/8
/// is loopback on Linux), so parallel tests never race for ports.
pub fn fresh_host() -> String {
    loop {
        let n: u32 = rand::random::<u32>() % (250 * 256 * 256);
        let host = format!("127.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, 1 + n % 250);
        if TcpListener::bind(format!("{host}:0")).is_ok() {
            return host;
        }
    }
}
