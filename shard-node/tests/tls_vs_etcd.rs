//! TLS side by side: real etcd 3.4 and shard-node started with the same
//! flags (client TLS, client certificate auth, a CRL, auto TLS, cipher
//! suites, peer TLS and peer auto TLS), the same etcdctl and curl calls
//! against each; both must accept and refuse the same callers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tessera_rpc::tls::{CertFiles, DevCa};
use tessera_testkit::net::fresh_host;

/// One member's processes of a cluster started with the same flags by etcd or shard-node.
struct Cluster {
    server: Server,
    children: Vec<Child>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Etcd,
    ShardNode,
}

impl Server {
    fn binary(self) -> PathBuf {
        match self {
            Server::Etcd => PathBuf::from("etcd"),
            Server::ShardNode => tessera_testkit::bins::path("shard-node"),
        }
    }
}

/// `n` members on `host`, client and peer URLs with the schemes given,
/// `flags` for every member.
fn start(server: Server, host: &str, n: usize, client: &str, peer: &str, flags: &[String]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let url = |scheme: &str, port: u16| format!("{scheme}://{host}:{port}");
    let cluster: Vec<String> = (1..=n).map(|i| format!("m{i}={}", url(peer, 2380 + 10 * i as u16))).collect();
    let mut children = vec![];
    let mut endpoints = vec![];
    for i in 1..=n {
        let (c, p) = (url(client, 2379 + 10 * i as u16), url(peer, 2380 + 10 * i as u16));
        let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
        let child = tessera_testkit::bins::command(server.binary())
            .args(["--name", &format!("m{i}"), "--data-dir", dir.path().join(format!("m{i}")).to_str().unwrap()])
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (scripts/prereqs.sh)");
        children.push(child);
        endpoints.push(c);
    }
    Cluster { server, children, endpoints, _dir: dir }
}

fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=3s")
        .args(tls)
        .args(args)
        .output()
        .expect("etcdctl is installed (scripts/prereqs.sh)")
}

fn ok(o: &Output) -> bool {
    o.status.success()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Waits until `tls` can write through every member (the cluster has a leader and serves TLS).
async fn wait_serving(c: &Cluster, tls: &[String], what: &str) {
    let what = format!("{:?} {what}", c.server);
    let deadline = Instant::now() + Duration::from_secs(30);
    for e in &c.endpoints {
        loop {
            let o = etcdctl(e, tls, &["put", "ready", "1"]);
            if ok(&o) {
                break;
            }
            assert!(Instant::now() < deadline, "{what}: {e} never served: {}", text(&o));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn client_flags(ca: &Path, cert: &CertFiles) -> Vec<String> {
    vec![
        format!("--cacert={}", ca.display()),
        format!("--cert={}", cert.cert_file.display()),
        format!("--key={}", cert.key_file.display()),
    ]
}

fn server_flags(cert: &CertFiles) -> Vec<String> {
    vec![format!("--cert-file={}", cert.cert_file.display()), format!("--key-file={}", cert.key_file.display())]
}

fn curl(args: &[String]) -> Output {
    Command::new("curl").args(["-sS", "--max-time", "5"]).args(args).output().expect("curl")
}

struct Certs {
    ca: DevCa,
    server: CertFiles,
    alice: CertFiles,
    bob: CertFiles,
    /// Signed by a CA the servers do not trust.
    mallory: CertFiles,
    _dir: tempfile::TempDir,
}

fn certs(host: &str) -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(&dir.path().join("ca")).unwrap();
    let other = DevCa::create(&dir.path().join("other")).unwrap();
    Certs {
        server: ca.issue("server", &[host.to_string(), "localhost".into()]).unwrap(),
        alice: ca.issue("alice", &[]).unwrap(),
        bob: ca.issue("bob", &[]).unwrap(),
        mallory: other.issue("mallory", &[]).unwrap(),
        ca,
        _dir: dir,
    }
}

/// Client TLS, then client certificate auth with a CRL: who gets in, for
/// etcd and for shard-node.
#[tokio::test(flavor = "multi_thread")]
async fn client_tls_and_client_certificate_auth_as_etcd() {
    for server in [Server::Etcd, Server::ShardNode] {
        let host = fresh_host();
        let c = certs(&host);
        let ca = c.ca.ca_file.clone();

        // Server certificate only: anyone who trusts the CA gets in.
        let cluster = start(server, &host, 1, "https", "http", &server_flags(&c.server));
        let trusting = vec![format!("--cacert={}", ca.display())];
        wait_serving(&cluster, &trusting, "client TLS").await;
        let e = &cluster.endpoints[0];
        assert!(ok(&etcdctl(e, &trusting, &["put", "k", "v"])), "{server:?}");
        let got = etcdctl(e, &trusting, &["get", "k"]);
        assert_eq!(String::from_utf8_lossy(&got.stdout), "k\nv\n", "{server:?}");
        assert!(!ok(&etcdctl(e, &[], &["get", "k"])), "{server:?}: a client that does not trust the CA must fail");
        // The JSON gateway over TLS (etcd 3.4 serves /v3beta and /v3).
        let body = curl(&[
            "--cacert".into(),
            ca.display().to_string(),
            format!("{e}/v3/kv/range"),
            "-X".into(),
            "POST".into(),
            "-d".into(),
            r#"{"key":"aw=="}"#.into(),
        ]);
        assert!(String::from_utf8_lossy(&body.stdout).contains(r#""value":"dg==""#), "{server:?}: {}", text(&body));
        drop(cluster);

        // Client certificates required, alice revoked.
        let crl = c.ca.revoke(&[&c.alice]).unwrap();
        let mut flags = server_flags(&c.server);
        flags.extend([
            format!("--trusted-ca-file={}", ca.display()),
            "--client-cert-auth".into(),
            format!("--client-crl-file={}", crl.display()),
        ]);
        let cluster = start(server, &host, 1, "https", "http", &flags);
        let bob = client_flags(&ca, &c.bob);
        wait_serving(&cluster, &bob, "client cert auth").await;
        let e = &cluster.endpoints[0];
        assert!(ok(&etcdctl(e, &bob, &["get", "k"])), "{server:?}: bob has a valid certificate");
        assert!(!ok(&etcdctl(e, &trusting, &["get", "k"])), "{server:?}: no client certificate must fail");
        assert!(!ok(&etcdctl(e, &client_flags(&ca, &c.mallory), &["get", "k"])), "{server:?}: a foreign CA's certificate");
        assert!(!ok(&etcdctl(e, &client_flags(&ca, &c.alice), &["get", "k"])), "{server:?}: alice's certificate is revoked");
    }
}

/// --auto-tls and --cipher-suites.
#[tokio::test(flavor = "multi_thread")]
async fn auto_tls_and_cipher_suites_as_etcd() {
    for server in [Server::Etcd, Server::ShardNode] {
        let host = fresh_host();
        let c = certs(&host);
        let cluster = start(server, &host, 1, "https", "http", &["--auto-tls".to_string()]);
        // etcdctl 3.4 skips verification only with TLS asked for explicitly.
        let insecure = vec!["--insecure-transport=false".to_string(), "--insecure-skip-tls-verify".to_string()];
        wait_serving(&cluster, &insecure, "auto TLS").await;
        let e = &cluster.endpoints[0];
        assert!(ok(&etcdctl(e, &insecure, &["get", "k"])), "{server:?}");
        let verifying = vec![format!("--cacert={}", c.ca.ca_file.display())];
        assert!(!ok(&etcdctl(e, &verifying, &["get", "k"])), "{server:?}: a self-signed certificate does not verify");
        drop(cluster);

        // One TLS 1.2 suite allowed: a TLS 1.2 client offering only another one is refused.
        let mut flags = server_flags(&c.server);
        flags.push("--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into());
        let cluster = start(server, &host, 1, "https", "http", &flags);
        let trusting = vec![format!("--cacert={}", c.ca.ca_file.display())];
        wait_serving(&cluster, &trusting, "cipher suites").await;
        let e = &cluster.endpoints[0];
        let tls12 = |cipher: &str| {
            curl(&[
                "--cacert".into(),
                c.ca.ca_file.display().to_string(),
                "--tlsv1.2".into(),
                "--tls-max".into(),
                "1.2".into(),
                "--ciphers".into(),
                cipher.into(),
                format!("{e}/version"),
            ])
        };
        let allowed = tls12("ECDHE-ECDSA-AES128-GCM-SHA256");
        assert!(
            ok(&allowed) && String::from_utf8_lossy(&allowed.stdout).contains("etcdserver"),
            "{server:?}: {}",
            text(&allowed)
        );
        assert!(!ok(&tls12("ECDHE-ECDSA-AES256-GCM-SHA384")), "{server:?}: a suite not in --cipher-suites");
    }
}

/// Three members over peer TLS with peer certificate auth, then with peer
/// auto TLS: the group forms and replicates.
#[tokio::test(flavor = "multi_thread")]
async fn peer_tls_and_peer_auto_tls_as_etcd() {
    for server in [Server::Etcd, Server::ShardNode] {
        let host = fresh_host();
        let c = certs(&host);
        let ca = c.ca.ca_file.display().to_string();
        let flags = vec![
            format!("--peer-cert-file={}", c.server.cert_file.display()),
            format!("--peer-key-file={}", c.server.key_file.display()),
            format!("--peer-trusted-ca-file={ca}"),
            "--peer-client-cert-auth".into(),
        ];
        let cluster = start(server, &host, 3, "http", "https", &flags);
        wait_serving(&cluster, &[], "peer TLS").await;
        assert!(ok(&etcdctl(&cluster.endpoints[0], &[], &["put", "peer", "tls"])));
        let got = etcdctl(&cluster.endpoints[2], &[], &["get", "peer"]);
        assert_eq!(String::from_utf8_lossy(&got.stdout), "peer\ntls\n", "{server:?}");
        drop(cluster);

        let host = fresh_host();
        let cluster = start(server, &host, 3, "http", "https", &["--peer-auto-tls".to_string()]);
        wait_serving(&cluster, &[], "peer auto TLS").await;
        assert!(ok(&etcdctl(&cluster.endpoints[1], &[], &["put", "peer", "auto"])));
        let got = etcdctl(&cluster.endpoints[0], &[], &["get", "peer"]);
        assert_eq!(String::from_utf8_lossy(&got.stdout), "peer\nauto\n", "{server:?}");
    }
}

/// With `--client-cert-auth` and auth on, a caller without a token is the
/// common name of its certificate: alice (CN "alice") may read what her
/// role allows and nothing else; a token still wins over the certificate.
#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_common_name_is_the_user_as_etcd() {
    let mut outputs = vec![];
    for server in [Server::Etcd, Server::ShardNode] {
        let host = fresh_host();
        let c = certs(&host);
        let ca = c.ca.ca_file.clone();
        let mut flags = server_flags(&c.server);
        flags.extend([format!("--trusted-ca-file={}", ca.display()), "--client-cert-auth".into(), "--bcrypt-cost=4".into()]);
        if server == Server::Etcd {
            flags.pop(); // etcd 3.4 has no --bcrypt-cost
        }
        let cluster = start(server, &host, 1, "https", "http", &flags);
        let bob = client_flags(&ca, &c.bob);
        let alice = client_flags(&ca, &c.alice);
        wait_serving(&cluster, &bob, "cert CN").await;
        let e = &cluster.endpoints[0];
        let steps: &[(&Vec<String>, &[&str])] = &[
            (&bob, &["role", "add", "root"]),
            (&bob, &["user", "add", "root:rootpw"]),
            (&bob, &["user", "grant-role", "root", "root"]),
            (&bob, &["role", "add", "pods"]),
            (&bob, &["role", "grant-permission", "pods", "readwrite", "/registry/pods/", "--prefix=true"]),
            (&bob, &["user", "add", "alice:alicepw"]),
            (&bob, &["user", "grant-role", "alice", "pods"]),
            (&bob, &["put", "/registry/services/s", "1"]),
            (&bob, &["auth", "enable"]),
            (&alice, &["put", "/registry/pods/a", "1"]),
            (&alice, &["get", "/registry/pods/", "--prefix"]),
            (&alice, &["get", "/registry/services/s"]),
            (&bob, &["get", "/registry/pods/a"]),
            (&alice, &["--user=root:rootpw", "get", "/registry/services/s"]),
        ];
        let mut out = vec![];
        for (who, args) in steps {
            let o = etcdctl(e, who, args);
            let stderr: String = String::from_utf8_lossy(&o.stderr).lines().filter(|l| !l.starts_with('{')).collect();
            out.push(format!("{} {} {}{stderr}", args.join(" "), ok(&o), String::from_utf8_lossy(&o.stdout)));
        }
        outputs.push(out);
    }
    assert_eq!(outputs[0], outputs[1], "etcd 3.4 (left) and shard-node (right) differ");
    // And the test means something: alice got her pods and was refused the service.
    assert!(outputs[1][10].contains("/registry/pods/a"), "{:?}", outputs[1][10]);
    assert!(outputs[1][11].contains("permission denied"), "{:?}", outputs[1][11]);
    assert!(outputs[1][13].contains("/registry/services/s"), "{:?}", outputs[1][13]);
}
