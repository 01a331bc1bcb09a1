//! A whole federation for a test: `tessera dev` as a process (the README's
//! command) on a random loopback address, plus tonic clients for the router.

#![allow(dead_code)]

#[path = "../../shard-node/tests/common/json_http.rs"]
pub mod json_http;
#[path = "../../shard-node/tests/common/recipes.rs"]
pub mod recipes;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

pub struct Federation {
    pub host: String,
    pub dir: tempfile::TempDir,
    dev: Child,
}

pub fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tessera")).parent().unwrap().join(name)
}

fn fresh_host() -> String {
    let n = rand::random::<u32>();
    format!("127.{}.{}.{}", 1 + n % 250, (n >> 8) % 250, 1 + (n >> 16) % 250)
}

impl Federation {
    pub fn start(groups: usize) -> Self {
        let host = fresh_host();
        let dir = tempfile::tempdir().unwrap();
        let mut dev = Command::new(bin("tessera"))
            .args(["dev", "--groups", &groups.to_string(), "--host", &host, "--client-port", "2379"])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = dev.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("federation ready") => break,
                Some(Ok(_)) => {}
                _ => panic!("tessera dev did not come up; logs in {}", dir.path().join("logs").display()),
            }
        }
        // keep draining stdout so the process never blocks on it
        std::thread::spawn(move || for _ in lines {});
        Federation { host, dir, dev }
    }

    pub fn endpoint(&self) -> String {
        format!("{}:2379", self.host)
    }

    pub fn url(&self) -> String {
        format!("http://{}:2379", self.host)
    }

    pub fn placement(&self) -> String {
        format!("http://{}:12379", self.host)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.unwrap()
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    /// The pid of one of dev's processes (by its data dir or name).
    pub fn pid(&self, name: &str) -> u32 {
        let pat = format!("{}/{name}", self.dir.path().display());
        let out = Command::new("pgrep").args(["-f", "--", &format!("--data-dir={pat}")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_else(|| panic!("no process {name}")).trim().parse().unwrap()
    }

    pub fn pid_of_router(&self) -> u32 {
        let out = Command::new("pgrep")
            .args(["-f", "--", &format!("--listen-client-urls=http://{}:2379", self.host)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().next().expect("no router").trim().parse().unwrap()
    }

    /// kill -9 a process; returns its command line to restart it.
    pub fn kill9(&self, pid: u32) -> Vec<String> {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> =
            cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into()).collect();
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        args
    }

    pub fn restart(&self, args: &[String]) -> Child {
        let log = std::fs::File::create(self.dir.path().join("logs/restarted.log")).unwrap();
        Command::new(&args[0]).args(&args[1..]).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap()
    }

    pub fn etcdctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(args)
            .output()
            .unwrap();
        let mut s = String::from_utf8_lossy(&out.stdout).to_string();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = Command::new(bin("tessera")).args(["status", "--json", "--placement", &self.placement()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.dev.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.dev.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.dev.kill();
        // restarted processes are not dev's children
        let _ = Command::new("pkill").args(["-9", "-f", &self.dir.path().display().to_string()]).status();
        if std::env::var_os("TESSERA_KEEP_FAILED").is_some() && std::thread::panicking() {
            let kept = self.dir.path().to_path_buf();
            std::mem::forget(std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()));
            eprintln!("kept federation data and logs in {}", kept.display());
        }
    }
}

/// A TCP proxy that can hold traffic (both ways) and let it through later,
/// as a network pause: nothing is dropped, it arrives late.
pub struct HoldingProxy {
    pub addr: std::net::SocketAddr,
    hold: tokio::sync::watch::Sender<bool>,
}

impl HoldingProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, held) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, held.clone()));
                tokio::spawn(pump(sr, cw, held.clone()));
            }
        });
        HoldingProxy { addr, hold }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, mut held: tokio::sync::watch::Receiver<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if held.wait_for(|h| !*h).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
