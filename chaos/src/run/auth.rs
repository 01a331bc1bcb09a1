//! `chaos run --auth`: the federation as a Kubernetes cluster runs it with
//! etcd's security on — the routers serve TLS and take the caller from its
//! client certificate (`--client-cert-auth`), auth is enabled, and the
//! workloads run as a user whose role allows only their own keys. Every
//! call of the load is then checked by a router and carries its caller to
//! the groups (cross-group txns, lease revokes, merged watches included),
//! under the same faults and checkers as without auth.
//!
//! The probes (`probe`) check that auth is really on: before and after the
//! load, the workloads' user must be refused a key outside its role, a
//! range across every group and an admin call, with etcd's errors, and
//! root must be let through. A refusal that does not come, or a root call
//! refused, is a violation in the report.

use anyhow::Context;
use std::path::Path;
use tessera_proto::authpb::permission::Type as PermType;
use tessera_proto::authpb::{Permission, UserAddOptions};
use tessera_proto::etcdserverpb::auth_client::AuthClient;
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    PutRequest, RangeRequest,
};
use tessera_rpc::tls::{CertFiles, ClientFiles, DevCa, Dialer};
use tonic::transport::{Channel, Endpoint};

/// The user the workloads run as (its certificate's common name).
pub const USER: &str = "chaos";
/// Its role: read and write on the workloads' keys, nothing else.
const ROLE: &str = "workloads";

/// The certificates of a run with auth: the routers' server certificate,
/// and one client certificate per user.
pub struct Certs {
    pub ca_file: std::path::PathBuf,
    pub server: CertFiles,
    user: CertFiles,
    root: CertFiles,
}

impl Certs {
    /// A CA in `dir` and its certificates; the server's names `hosts`.
    pub fn create(dir: &Path, hosts: &[String]) -> anyhow::Result<Certs> {
        let ca = DevCa::create(dir)?;
        let mut names = hosts.to_vec();
        names.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
        Ok(Certs {
            server: ca.issue("router", &names)?,
            user: ca.issue(USER, &[])?,
            root: ca.issue("root", &[])?,
            ca_file: ca.ca_file,
        })
    }

    /// The router's flags for TLS with the caller taken from its certificate.
    pub fn router_flags(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.server.cert_file.display()),
            format!("--key-file={}", self.server.key_file.display()),
            format!("--trusted-ca-file={}", self.ca_file.display()),
            "--client-cert-auth".into(),
        ]
    }

    fn dialer(&self, who: &CertFiles) -> anyhow::Result<Dialer> {
        let files = ClientFiles {
            ca_file: Some(self.ca_file.clone()),
            cert_file: Some(who.cert_file.clone()),
            key_file: Some(who.key_file.clone()),
            insecure_skip_verify: false,
        };
        Ok(Dialer::new(&files, &[])?)
    }

    /// How the workloads connect (as `USER`).
    pub fn user(&self) -> anyhow::Result<Dialer> {
        self.dialer(&self.user)
    }

    /// How the run's own calls connect (setup, probes, the final read).
    pub fn root(&self) -> anyhow::Result<Dialer> {
        self.dialer(&self.root)
    }
}

/// A channel through `dialer` to `https://endpoint`.
pub fn channel(dialer: &Dialer, endpoint: &str) -> anyhow::Result<Channel> {
    let ep = Endpoint::from_shared(format!("https://{endpoint}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true);
    Ok(dialer.lazy(ep))
}

/// Users, roles and `auth enable`, through a router as root: root (no
/// password: its certificate names it), and `USER` with read and write on
/// the workloads' prefixes and the key kube-apiserver's compactor uses.
pub async fn enable(root: Channel, prefixes: &[&str], keys: &[&str]) -> anyhow::Result<()> {
    let mut auth = AuthClient::new(root);
    let no_password = Some(UserAddOptions { no_password: true });
    for user in ["root", USER] {
        let req = AuthUserAddRequest { name: user.into(), options: no_password, ..Default::default() };
        auth.user_add(req).await.with_context(|| format!("adding user {user}"))?;
    }
    for role in ["root", ROLE] {
        auth.role_add(AuthRoleAddRequest { name: role.into() }).await.with_context(|| format!("adding role {role}"))?;
    }
    let grants = prefixes
        .iter()
        .map(|p| (p.as_bytes().to_vec(), shardmap::prefix_end(p.as_bytes())))
        .chain(keys.iter().map(|k| (k.as_bytes().to_vec(), vec![])));
    for (key, range_end) in grants {
        let perm = Permission { perm_type: PermType::Readwrite as i32, key, range_end };
        auth.role_grant_permission(AuthRoleGrantPermissionRequest { name: ROLE.into(), perm: Some(perm) })
            .await
            .context("granting the workloads' permissions")?;
    }
    for (user, role) in [("root", "root"), (USER, ROLE)] {
        auth.user_grant_role(AuthUserGrantRoleRequest { user: user.into(), role: role.into() })
            .await
            .with_context(|| format!("granting {role} to {user}"))?;
    }
    auth.auth_enable(AuthEnableRequest {}).await.context("auth enable")?;
    Ok(())
}

/// What auth must still do: refuse `USER` outside its role and admin
/// calls, with etcd's errors, and let root through. Answers what did not hold.
pub async fn probe(user: Channel, root: Channel) -> Vec<String> {
    let mut wrong = vec![];
    let denied = |what: &str, r: Result<(), tonic::Status>, wrong: &mut Vec<String>| match r {
        Err(s) if s.code() == tonic::Code::PermissionDenied && s.message() == "etcdserver: permission denied" => {}
        Err(s) if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::DeadlineExceeded => {
            // A router between restarts says nothing about auth.
        }
        other => wrong.push(format!("auth: {USER} {what}: expected etcd's permission denied, got {other:?}")),
    };
    let mut kv = KvClient::new(user.clone());
    let put = PutRequest { key: b"/outside/of/its/role".to_vec(), value: b"x".to_vec(), ..Default::default() };
    denied("put outside its role", kv.put(put).await.map(drop), &mut wrong);
    // Every key: a range over every group.
    let all = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() };
    denied("range over every key", kv.range(all.clone()).await.map(drop), &mut wrong);
    let mut auth = AuthClient::new(user);
    let add = AuthRoleAddRequest { name: "mine".into() };
    denied("role add (an admin call)", auth.role_add(add).await.map(drop), &mut wrong);
    match KvClient::new(root).range(all).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::DeadlineExceeded => {}
        Err(s) => wrong.push(format!("auth: root's range over every key was refused: {s:?}")),
    }
    wrong
}
