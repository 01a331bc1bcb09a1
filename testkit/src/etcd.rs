//! Real etcd beside Tessera: a reference server for side-by-side
//! comparisons, and etcdctl.

use crate::net::fresh_host;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("etcdctl is installed (scripts/prereqs.sh)")
}

/// etcdctl over TLS to `endpoint` (`https://...`) with the client
/// certificate `cert` and its `key`, trusting `ca`: whether it succeeded,
/// and its stdout and stderr together.
pub fn etcdctl_with_cert(endpoint: &str, ca: &Path, cert: &Path, key: &Path, args: &[&str]) -> (bool, String) {
    let tls = [format!("--cacert={}", ca.display()), format!("--cert={}", cert.display()), format!("--key={}", key.display())];
    let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    let out = etcdctl(endpoint, &all);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A real etcd server, for side-by-side comparisons.
pub struct RealEtcd {
    child: Child,
    pub endpoint: String,
    _tmp: tempfile::TempDir,
}

impl RealEtcd {
    /// Debian's etcd 3.4.
    pub async fn start() -> RealEtcd {
        Self::start_binary("etcd".into(), &[]).await
    }

    /// Debian's etcd 3.4 with extra flags.
    pub async fn start_with(flags: &[String]) -> RealEtcd {
        Self::start_binary("etcd".into(), flags).await
    }

    /// etcd `version` as scripts/etcd-tools.sh installs it ("3.6", "3.7").
    pub async fn start_version(version: &str) -> RealEtcd {
        Self::start_binary(crate::bins::etcd_tool(version, "etcd"), &[]).await
    }

    /// Debian's etcd 3.4 on the data directory `etcdctl snapshot restore`
    /// makes of the snapshot file `backup`.
    pub async fn restored_from(backup: &Path) -> RealEtcd {
        Self::start_from(Some(backup), "etcd".into(), &[]).await
    }

    async fn start_binary(etcd: std::path::PathBuf, flags: &[String]) -> RealEtcd {
        Self::start_from(None, etcd, flags).await
    }

    async fn start_from(backup: Option<&Path>, etcd: std::path::PathBuf, flags: &[String]) -> RealEtcd {
        let tmp = tempfile::tempdir().unwrap();
        let host = fresh_host();
        let (client, peer) = (format!("http://{host}:2379"), format!("http://{host}:2380"));
        if let Some(backup) = backup {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore", backup.to_str().unwrap(), "--name", "ref"])
                .args(["--data-dir", tmp.path().join("d").to_str().unwrap()])
                .args(["--initial-cluster", &format!("ref={peer}"), "--initial-advertise-peer-urls", &peer])
                .output()
                .expect("etcdctl is installed (scripts/prereqs.sh)");
            assert!(out.status.success(), "etcdctl snapshot restore: {}", String::from_utf8_lossy(&out.stderr));
        }
        let child = crate::bins::command(etcd)
            .args(["--name", "ref", "--data-dir", tmp.path().join("d").to_str().unwrap()])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("ref={peer}")])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (scripts/prereqs.sh)");
        let endpoint = format!("{host}:2379");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = etcd_client::Client::connect([endpoint.clone()], None).await {
                if c.status().await.map(|s| s.leader() != 0).unwrap_or(false) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "reference etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        RealEtcd { child, endpoint, _tmp: tmp }
    }
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn etcdctl_stdin(endpoint: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
