//! etcd's auth asked the same of any server: one etcdctl session (users,
//! roles, prefix and single-key permissions, auth enable/disable, allowed
//! and denied calls, wrong passwords, a revoked permission taking effect,
//! admin calls by a non-admin) whose outputs are compared with real
//! etcd's, and the scenarios etcdctl cannot show (watches, lease revokes,
//! the JSON gateway) as functions answering what a client saw.

use crate::etcd::{etcdctl, etcdctl_stdin};

pub const ROOT: &str = "--user=root:rootpw";
pub const ALICE: &str = "--user=alice:alicepw";

/// (etcdctl args, stdin for txn).
pub const SESSION: &[(&[&str], &str)] = &[
    (&["role", "add", "root"], ""),
    (&["user", "add", "root:rootpw"], ""),
    (&["user", "grant-role", "root", "root"], ""),
    (&["role", "add", "pods"], ""),
    (&["role", "add", "pods"], ""),
    (&["role", "grant-permission", "pods", "readwrite", "/registry/pods/", "--prefix=true"], ""),
    (&["role", "grant-permission", "pods", "read", "/config"], ""),
    (&["role", "grant-permission", "nope", "read", "/config"], ""),
    (&["user", "add", "alice:alicepw"], ""),
    (&["user", "add", "alice:again"], ""),
    (&["user", "grant-role", "alice", "pods"], ""),
    (&["user", "grant-role", "alice", "nope"], ""),
    (&["user", "get", "alice"], ""),
    (&["role", "get", "pods"], ""),
    (&["role", "list"], ""),
    (&["user", "list"], ""),
    (&["put", "/config", "v1"], ""),
    (&["auth", "enable"], ""),
    (&["put", "/x", "1"], ""),
    (&["get", "/config"], ""),
    (&[ALICE, "put", "/registry/pods/a", "1"], ""),
    (&[ALICE, "put", "/registry/services/a", "1"], ""),
    (&[ALICE, "get", "/registry/pods/", "--prefix"], ""),
    (&[ALICE, "get", "/registry/", "--prefix"], ""),
    (&[ALICE, "get", "", "--from-key"], ""),
    (&["--user=alice:wrong", "get", "/config"], ""),
    (&["--user=mallory:pw", "get", "/config"], ""),
    (&[ALICE, "get", "/config"], ""),
    (&[ALICE, "put", "/config", "v2"], ""),
    (&[ALICE, "put", "/registry/pods/a", "2", "--prev-kv"], ""),
    (&[ALICE, "del", "/registry/pods/a", "--prev-kv"], ""),
    (&[ALICE, "txn"], "value(\"/registry/pods/a\") = \"1\"\n\nput /registry/services/x 1\n\nput /registry/pods/b 1\n\n"),
    (&[ALICE, "txn"], "value(\"/config\") = \"v1\"\n\nput /registry/pods/b 1\n\n\n"),
    (&[ALICE, "user", "list"], ""),
    (&[ALICE, "user", "get", "alice"], ""),
    (&[ALICE, "role", "get", "pods"], ""),
    (&[ALICE, "role", "add", "mine"], ""),
    (&[ALICE, "compaction", "1"], ""),
    (&[ROOT, "role", "revoke-permission", "pods", "/config"], ""),
    (&[ROOT, "role", "revoke-permission", "pods", "/config"], ""),
    (&[ALICE, "get", "/config"], ""),
    (&[ROOT, "get", "/config"], ""),
    (&[ROOT, "user", "delete", "nobody"], ""),
    (&[ROOT, "user", "revoke-role", "alice", "root"], ""),
    (&[ROOT, "user", "revoke-role", "root", "root"], ""),
    (&[ROOT, "user", "delete", "root"], ""),
    (&[ROOT, "role", "delete", "root"], ""),
    (&[ROOT, "user", "passwd", "alice", "--interactive=false"], "newpw\n"),
    (&[ALICE, "get", "/registry/pods/b"], ""),
    (&["--user=alice:newpw", "get", "/registry/pods/b"], ""),
    (&[ROOT, "role", "delete", "pods"], ""),
    (&["--user=alice:newpw", "get", "/registry/pods/b"], ""),
    (&[ROOT, "auth", "disable"], ""),
    (&["get", "/registry/pods/b"], ""),
    (&["user", "get", "alice"], ""),
    (&["auth", "enable"], ""),
    (&[ROOT, "auth", "disable"], ""),
];

pub fn run(endpoint: &str, args: &[&str], stdin: &str) -> String {
    let out = if stdin.is_empty() { etcdctl(endpoint, args) } else { etcdctl_stdin(endpoint, args, stdin) };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    // etcdctl's retry warnings (JSON log lines with timestamps) differ run to run; its "Error:" line does not.
    for l in String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.starts_with('{')) {
        text.push_str(l);
        text.push('\n');
    }
    format!("{}\n{text}", if out.status.success() { "ok" } else { "failed" })
}

/// Runs `SESSION` against `etcd` and `tessera` step by step; the steps whose outputs differ.
pub fn session_mismatches(etcd: &str, tessera: &str, label: &str) -> Vec<String> {
    let mut mismatches = vec![];
    for (args, stdin) in SESSION {
        let (want, got) = (run(etcd, args, stdin), run(tessera, args, stdin));
        if want != got {
            mismatches.push(format!("etcdctl {}:\n--- etcd 3.4\n{want}--- {label}\n{got}", args.join(" ")));
        }
    }
    mismatches
}

/// SESSION's set-up: users root and alice, role pods (readwrite on
/// /registry/pods/, read on /config), auth enabled.
pub fn set_up_users(endpoint: &str) {
    for (args, stdin) in &SESSION[..18] {
        run(endpoint, args, stdin);
    }
}

/// With auth on (after `set_up_users`): a watch of keys alice may not read
/// is cancelled with etcd's reason, a permitted one sees its events;
/// revoking a lease that holds a key alice may not write is refused, and so
/// is attaching a key to it.
pub async fn watches_and_lease_revokes(endpoint: &str) {
    use etcd_client::{Client, ConnectOptions, PutOptions};
    let root = ConnectOptions::new().with_user("root", "rootpw");
    let mut root = Client::connect([endpoint.to_string()], Some(root)).await.unwrap();
    let alice_opts = ConnectOptions::new().with_user("alice", "alicepw");
    let mut alice = Client::connect([endpoint.to_string()], Some(alice_opts)).await.unwrap();

    let mut denied = alice.watch("/registry/services/", Some(etcd_client::WatchOptions::new().with_prefix())).await.unwrap();
    let first = denied.message().await.unwrap().expect("a create answer");
    assert!(first.created() && first.canceled(), "{endpoint}: {first:?}");
    assert_eq!(first.cancel_reason(), "rpc error: code = PermissionDenied desc = etcdserver: permission denied", "{endpoint}");

    let mut allowed = alice.watch("/registry/pods/", Some(etcd_client::WatchOptions::new().with_prefix())).await.unwrap();
    let created = allowed.message().await.unwrap().unwrap();
    assert!(created.created() && !created.canceled(), "{endpoint}: {created:?}");
    root.put("/registry/pods/w", "1", None).await.unwrap();
    let ev = allowed.message().await.unwrap().unwrap();
    assert_eq!(ev.events()[0].kv().unwrap().key(), b"/registry/pods/w", "{endpoint}");

    let lease = root.lease_grant(60, None).await.unwrap().id();
    root.put("/registry/services/s", "1", Some(PutOptions::new().with_lease(lease))).await.unwrap();
    let refused = alice.lease_revoke(lease).await.unwrap_err().to_string();
    assert!(refused.contains("etcdserver: permission denied"), "{endpoint}: {refused}");
    // etcd's checkLeasePuts: nor may she attach a key of hers to that lease
    // (its revoke would delete it with the others), though to her own, yes.
    let attach = alice.put("/registry/pods/l", "1", Some(PutOptions::new().with_lease(lease))).await.unwrap_err().to_string();
    assert!(attach.contains("etcdserver: permission denied"), "{endpoint}: {attach}");
    let hers = alice.lease_grant(60, None).await.unwrap().id();
    alice.put("/registry/pods/l", "1", Some(PutOptions::new().with_lease(hers))).await.unwrap();
    alice.lease_revoke(hers).await.unwrap();
    root.lease_revoke(lease).await.unwrap();
}

fn curl(endpoint: &str, path: &str, token: Option<&str>, body: &str) -> (String, serde_json::Value) {
    let mut c = std::process::Command::new("curl");
    c.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "-X", "POST", "-d", body]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = c.arg(format!("http://{endpoint}{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').unwrap_or_default();
    (code.to_string(), serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
}

/// The JSON gateway under auth (after `set_up_users`): Authenticate for a
/// token, calls with it in `Authorization`, and without it; status codes
/// and error bodies, one line per call.
pub fn gateway_auth(endpoint: &str) -> Vec<String> {
    use crate::json_http::b64;
    let mut out = vec![];
    let (code, bad) = curl(endpoint, "/v3/auth/authenticate", None, r#"{"name":"alice","password":"nope"}"#);
    out.push(format!("{code} {}", bad["error"]));
    let (code, auth) = curl(endpoint, "/v3/auth/authenticate", None, r#"{"name":"alice","password":"alicepw"}"#);
    out.push(code);
    let token = auth["token"].as_str().unwrap_or_default().to_string();
    assert!(!token.is_empty(), "{endpoint}: {auth}");
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("/registry/pods/g"), b64("1"));
    let (code, _) = curl(endpoint, "/v3/kv/put", Some(&token), &put);
    out.push(code);
    let range = format!(r#"{{"key":"{}"}}"#, b64("/registry/pods/g"));
    let (code, got) = curl(endpoint, "/v3/kv/range", Some(&token), &range);
    out.push(format!("{code} {}", got["kvs"][0]["value"]));
    let (code, denied) = curl(endpoint, "/v3/kv/range", Some(&token), &format!(r#"{{"key":"{}"}}"#, b64("/x")));
    out.push(format!("{code} {} {}", denied["error"], denied["code"]));
    let (code, nobody) = curl(endpoint, "/v3/kv/range", None, &range);
    out.push(format!("{code} {} {}", nobody["error"], nobody["code"]));
    let (code, invalid) = curl(endpoint, "/v3/kv/range", Some("not-a-token"), &range);
    out.push(format!("{code} {} {}", invalid["error"], invalid["code"]));
    out
}

/// An RS256 key pair for `--auth-token jwt,...` in `dir`; the flag.
pub fn jwt_flag(dir: &std::path::Path) -> String {
    let (private, public) = (dir.join("jwt.pem"), dir.join("jwt.pub"));
    let openssl = |args: &[&str]| assert!(std::process::Command::new("openssl").args(args).output().unwrap().status.success());
    openssl(&["genrsa", "-traditional", "-out", private.to_str().unwrap(), "2048"]);
    openssl(&["rsa", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    format!("--auth-token=jwt,pub-key={},priv-key={},sign-method=RS256,ttl=5m", public.display(), private.display())
}

/// After SESSION's set-up with JWT tokens: a token signed before an auth
/// change, used through the gateway; the error etcd answers.
pub fn jwt_token_from_before_a_change(endpoint: &str) -> serde_json::Value {
    for args in [
        &["auth", "enable"][..],
        &[ROOT, "role", "add", "jwt-test"],
        &[ROOT, "role", "grant-permission", "jwt-test", "read", "/j"],
    ] {
        run(endpoint, args, "");
    }
    let token = crate::json_http::post(endpoint, "/v3/auth/authenticate", r#"{"name":"root","password":"rootpw"}"#).1["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "{endpoint}: a JWT, {token}");
    run(endpoint, &[ROOT, "role", "add", "later"], "");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-X", "POST", "-H", &format!("Authorization: {token}"), "-d", r#"{"key":"L2o="}"#])
        .arg(format!("http://{endpoint}/v3/kv/range"))
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    run(endpoint, &[ROOT, "auth", "disable"], "");
    body["error"].clone()
}
