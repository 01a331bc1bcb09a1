use super::*;
use tessera_proto::etcdserverpb::*;

fn change(c: Change) -> AuthChange {
    AuthChange { change: Some(c) }
}

fn perm(t: PermType, key: &str, end: &str) -> Permission {
    Permission { perm_type: t as i32, key: key.into(), range_end: end.into() }
}

/// root (root role) and alice with role `pods`: read-write on /registry/pods/ and read on /config.
fn store() -> AuthStore {
    let mut a = AuthStore::default();
    let user = |n: &str| {
        change(Change::UserAdd(AuthUserAddRequest { name: n.into(), hashed_password: "h".into(), ..Default::default() }))
    };
    a.apply(&user("root")).unwrap();
    a.apply(&user("alice")).unwrap();
    a.apply(&change(Change::RoleAdd(AuthRoleAddRequest { name: "pods".into() }))).unwrap();
    for p in [perm(PermType::Readwrite, "/registry/pods/", "/registry/pods0"), perm(PermType::Read, "/config", "")] {
        a.apply(&change(Change::RoleGrantPermission(AuthRoleGrantPermissionRequest { name: "pods".into(), perm: Some(p) })))
            .unwrap();
    }
    let grant = |u: &str, r: &str| change(Change::UserGrantRole(AuthUserGrantRoleRequest { user: u.into(), role: r.into() }));
    a.apply(&grant("alice", "pods")).unwrap();
    a.apply(&grant("root", ROOT)).unwrap();
    a
}

#[test]
fn enabling_needs_root_with_the_root_role() {
    let mut a = AuthStore::default();
    assert_eq!(a.apply(&change(Change::Enable(Default::default()))), Err(Error::RootUserNotExist));
    a.apply(&change(Change::UserAdd(AuthUserAddRequest { name: ROOT.into(), ..Default::default() }))).unwrap();
    assert_eq!(a.apply(&change(Change::Enable(Default::default()))), Err(Error::RootRoleNotExist));
    let mut a = store();
    let before = a.revision();
    a.apply(&change(Change::Enable(Default::default()))).unwrap();
    assert!(a.enabled());
    assert_eq!(a.revision(), before + 1);
    // Root cannot lose root while auth is on.
    let revoke = change(Change::UserRevokeRole(AuthUserRevokeRoleRequest { name: ROOT.into(), role: ROOT.into() }));
    assert_eq!(a.apply(&revoke), Err(Error::InvalidAuthMgmt));
    assert_eq!(a.apply(&change(Change::UserDelete(AuthUserDeleteRequest { name: ROOT.into() }))), Err(Error::InvalidAuthMgmt));
}

#[test]
fn ranges_are_allowed_only_when_permissions_cover_them() {
    let mut a = store();
    // Off: anything goes, even for nobody.
    assert_eq!(a.permitted("", b"/x", b"", Access::Write), Ok(()));
    a.apply(&change(Change::Enable(Default::default()))).unwrap();
    assert_eq!(a.permitted("", b"/x", b"", Access::Read), Err(Error::UserEmpty));
    assert_eq!(a.permitted("bob", b"/x", b"", Access::Read), Err(Error::PermissionDenied));
    assert_eq!(a.permitted("root", b"", b"\0", Access::Write), Ok(()));
    assert_eq!(a.permitted("alice", b"/registry/pods/a", b"", Access::Write), Ok(()));
    assert_eq!(a.permitted("alice", b"/registry/pods/", b"/registry/pods0", Access::Read), Ok(()));
    assert_eq!(a.permitted("alice", b"/registry/pods/a", b"/registry/pods/b", Access::Read), Ok(()));
    // Beyond the prefix, from-key, or the whole keyspace: denied.
    assert_eq!(a.permitted("alice", b"/registry/", b"/registry0", Access::Read), Err(Error::PermissionDenied));
    assert_eq!(a.permitted("alice", b"/registry/pods/", b"\0", Access::Read), Err(Error::PermissionDenied));
    assert_eq!(a.permitted("alice", b"/registry/services/a", b"", Access::Read), Err(Error::PermissionDenied));
    // A read-only key.
    assert_eq!(a.permitted("alice", b"/config", b"", Access::Read), Ok(()));
    assert_eq!(a.permitted("alice", b"/config", b"", Access::Write), Err(Error::PermissionDenied));
    // Two adjacent grants cover the range spanning both.
    let p = perm(PermType::Read, "/registry/pods0", "/registry/q");
    a.apply(&change(Change::RoleGrantPermission(AuthRoleGrantPermissionRequest { name: "pods".into(), perm: Some(p) }))).unwrap();
    assert_eq!(a.permitted("alice", b"/registry/pods/", b"/registry/q", Access::Read), Ok(()));
    assert_eq!(a.permitted("alice", b"/registry/pods/", b"/registry/r", Access::Read), Err(Error::PermissionDenied));
}

#[test]
fn changes_answer_etcds_errors_and_count_revisions() {
    let mut a = store();
    let r0 = a.revision();
    let add = |n: &str| change(Change::UserAdd(AuthUserAddRequest { name: n.into(), ..Default::default() }));
    assert_eq!(a.apply(&add("")), Err(Error::UserEmpty));
    assert_eq!(a.apply(&add("alice")), Err(Error::UserAlreadyExist));
    assert_eq!(a.apply(&change(Change::RoleAdd(AuthRoleAddRequest { name: "".into() }))), Err(Error::RoleEmpty));
    assert_eq!(a.apply(&change(Change::RoleAdd(AuthRoleAddRequest { name: "pods".into() }))), Err(Error::RoleAlreadyExist));
    let grant = |u: &str, r: &str| change(Change::UserGrantRole(AuthUserGrantRoleRequest { user: u.into(), role: r.into() }));
    assert_eq!(a.apply(&grant("nobody", "pods")), Err(Error::UserNotFound));
    assert_eq!(a.apply(&grant("alice", "nope")), Err(Error::RoleNotFound));
    let revoke = |u: &str, r: &str| change(Change::UserRevokeRole(AuthUserRevokeRoleRequest { name: u.into(), role: r.into() }));
    assert_eq!(a.apply(&revoke("alice", "other")), Err(Error::RoleNotGranted));
    let unperm = change(Change::RoleRevokePermission(AuthRoleRevokePermissionRequest {
        role: "pods".into(),
        key: b"/nope".to_vec(),
        range_end: vec![],
    }));
    assert_eq!(a.apply(&unperm), Err(Error::PermissionNotGranted));
    assert_eq!(a.revision(), r0, "failed changes take no revision");
    // Deleting a role takes it from its users.
    a.apply(&change(Change::RoleDelete(AuthRoleDeleteRequest { role: "pods".into() }))).unwrap();
    assert!(a.user("alice").unwrap().roles.is_empty());
    assert_eq!(a.revision(), r0 + 1);
    // The store survives its encoding (a restart, a snapshot).
    assert_eq!(AuthStore::from_state(a.to_state()), a);
}

#[test]
fn a_write_checked_before_an_auth_change_is_stale() {
    let mut a = store();
    a.apply(&change(Change::Enable(Default::default()))).unwrap();
    let checked = a.revision();
    assert_eq!(a.stale(checked), None);
    a.apply(&change(Change::RoleAdd(AuthRoleAddRequest { name: "x".into() }))).unwrap();
    assert_eq!(a.stale(checked), Some(Error::AuthOldRevision));
    assert_eq!(a.stale(0), None, "an unchecked write (auth was off when proposed)");
}

#[test]
fn simple_tokens_are_etcds_shape() {
    let tok = simple_token(7);
    assert!(tok.ends_with(".7") && tok.len() == 18, "{tok}");
    assert!(tok[..16].bytes().all(|b| b.is_ascii_lowercase()), "{tok}");
    assert_ne!(simple_token(7), tok, "random letters");
}
