//! etcd's auth store for one group: users, roles and their key
//! permissions, the enabled flag and the auth revision (+1 per change).
//! Changes go through raft (`AuthChange`) and are applied here
//! deterministically; the whole store is one meta value. Passwords are
//! bcrypt hashes made by the member that took the request (never in the
//! log in the clear). Checks follow etcd's `auth/store.go`: the root role
//! may do anything; other users need a permission of the right type whose
//! ranges, together, cover the requested range.
//!
//! A group keeps one in its state tables (applied from its raft log); the
//! router keeps the federation's, followed from placement's store. Both
//! check calls with the same functions (`permitted`, `check_put`, ...).

pub mod jwt;
pub mod service;

use crate::errors::Error;
use std::collections::BTreeMap;
use tessera_proto::authpb::{permission::Type as PermType, Permission, Role, User, UserAddOptions};
use tessera_proto::etcdserverpb::request_op::Request as TxnOp;
use tessera_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, TxnRequest};
use tessera_proto::tessera::command::{auth_change::Change, AuthChange, AuthState};

type Result<T> = std::result::Result<T, Error>;

/// A fresh simple token, as etcd's: 16 random letters, a dot, and the
/// number of tokens the issuer handed out before (`index`).
pub fn simple_token(index: u64) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let letters: String = (0..16).map(|_| rng.random_range(b'a'..=b'z') as char).collect();
    format!("{letters}.{index}")
}

pub const ROOT: &str = "root";

/// Whether a request reads or writes the keys it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What applying an auth change answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthApplied {
    Done,
    /// A token registered for a user.
    Token {
        name: String,
        token: String,
    },
    /// A user whose tokens must end (deleted, password changed).
    UserChanged(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

impl AuthStore {
    pub fn from_state(s: AuthState) -> Self {
        let name = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        AuthStore {
            enabled: s.enabled,
            revision: s.revision,
            users: s.users.into_iter().map(|u| (name(&u.name), u)).collect(),
            roles: s.roles.into_iter().map(|r| (name(&r.name), r)).collect(),
        }
    }

    pub fn to_state(&self) -> AuthState {
        AuthState {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A data write checked at `checked` (0: unchecked) applied now: refused
    /// if the store changed since, as etcd's applier does.
    pub fn stale(&self, checked: u64) -> Option<Error> {
        (self.enabled && checked != 0 && checked < self.revision).then_some(Error::AuthOldRevision)
    }

    pub fn user(&self, name: &str) -> Result<&User> {
        self.users.get(name).ok_or(Error::UserNotFound)
    }

    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn role(&self, name: &str) -> Result<&Role> {
        self.roles.get(name).ok_or(Error::RoleNotFound)
    }

    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// The bcrypt hash to check `name`'s password against (None: a user
    /// without a password, who cannot authenticate by one).
    pub fn password_hash(&self, name: &str) -> Result<Option<String>> {
        let u = self.users.get(name).ok_or(Error::AuthFailed)?;
        if u.options.as_ref().is_some_and(|o| o.no_password) {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&u.password).into_owned()))
    }

    fn has_role(&self, user: &str, role: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// etcd's IsAdminPermitted: the root role, when auth is on.
    pub fn admin(&self, user: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(Error::UserEmpty);
        }
        if !self.users.contains_key(user) {
            return Err(Error::UserNotFound);
        }
        if !self.has_role(user, ROOT) {
            return Err(Error::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's isOpPermitted for [key, range_end) (etcd's range_end
    /// conventions: empty for one key, "\0" for every key from `key`).
    pub fn permitted(&self, user: &str, key: &[u8], range_end: &[u8], access: Access) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(Error::UserEmpty);
        }
        let u = self.users.get(user).ok_or(Error::PermissionDenied)?;
        if u.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let wanted = interval(key, range_end);
        let mut granted: Vec<(Vec<u8>, Option<Vec<u8>>)> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| allows(p, access))
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        granted.sort();
        if covers(&granted, &wanted) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// A put: write on its key, and read too when it returns the previous value.
    pub fn check_put(&self, user: &str, r: &PutRequest) -> Result<()> {
        self.permitted(user, &r.key, &[], Access::Write)?;
        if r.prev_kv {
            self.permitted(user, &r.key, &[], Access::Read)?;
        }
        Ok(())
    }

    pub fn check_delete(&self, user: &str, r: &DeleteRangeRequest) -> Result<()> {
        self.permitted(user, &r.key, &r.range_end, Access::Write)?;
        if r.prev_kv {
            self.permitted(user, &r.key, &r.range_end, Access::Read)?;
        }
        Ok(())
    }

    /// etcd's checkTxnReqsPermission: compares read, each branch's ops as themselves.
    pub fn check_txn(&self, user: &str, r: &TxnRequest) -> Result<()> {
        for c in &r.compare {
            self.permitted(user, &c.key, &c.range_end, Access::Read)?;
        }
        for op in r.success.iter().chain(r.failure.iter()).filter_map(|o| o.request.as_ref()) {
            match op {
                TxnOp::RequestRange(x) => self.permitted(user, &x.key, &x.range_end, Access::Read)?,
                TxnOp::RequestPut(x) => self.check_put(user, x)?,
                TxnOp::RequestDeleteRange(x) => self.check_delete(user, x)?,
                TxnOp::RequestTxn(x) => self.check_txn(user, x)?,
            }
        }
        Ok(())
    }

    /// etcd's lock and election recipes work on `<name>/...` as the caller.
    pub fn check_recipe(&self, user: &str, name: &[u8], access: &[Access]) -> Result<()> {
        let (mut key, mut end) = (name.to_vec(), name.to_vec());
        key.push(b'/');
        end.push(b'/' + 1);
        for a in access {
            self.permitted(user, &key, &end, *a)?;
        }
        Ok(())
    }

    /// Applies one change (every member the same way).
    pub fn apply(&mut self, change: &AuthChange) -> Result<AuthApplied> {
        let Some(c) = &change.change else { return Ok(AuthApplied::Done) };
        let applied = match c {
            Change::Enable(_) => {
                if self.enabled {
                    return Ok(AuthApplied::Done);
                }
                let root = self.users.get(ROOT).ok_or(Error::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(Error::RootRoleNotExist);
                }
                self.enabled = true;
                AuthApplied::Done
            }
            Change::Disable(_) => {
                if !self.enabled {
                    return Ok(AuthApplied::Done);
                }
                self.enabled = false;
                AuthApplied::Done
            }
            Change::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(Error::UserAlreadyExist);
                }
                let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
                let user = User {
                    name: r.name.clone().into_bytes(),
                    password: if no_password { vec![] } else { r.hashed_password.clone().into_bytes() },
                    roles: vec![],
                    options: Some(UserAddOptions { no_password }),
                };
                self.users.insert(r.name.clone(), user);
                AuthApplied::Done
            }
            Change::UserDelete(r) => {
                if self.enabled && r.name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                self.users.remove(&r.name).ok_or(Error::UserNotFound)?;
                AuthApplied::UserChanged(r.name.clone())
            }
            Change::UserChangePassword(r) => {
                let u = self.users.get_mut(&r.name).ok_or(Error::UserNotFound)?;
                u.password = r.hashed_password.clone().into_bytes();
                u.options = Some(UserAddOptions { no_password: false });
                AuthApplied::UserChanged(r.name.clone())
            }
            Change::UserGrantRole(r) => {
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    // etcd checks the user first.
                    self.users.get(&r.user).ok_or(Error::UserNotFound)?;
                    return Err(Error::RoleNotFound);
                }
                let u = self.users.get_mut(&r.user).ok_or(Error::UserNotFound)?;
                if !u.roles.contains(&r.role) {
                    u.roles.push(r.role.clone());
                    u.roles.sort();
                }
                AuthApplied::Done
            }
            Change::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(&r.name).ok_or(Error::UserNotFound)?;
                let before = u.roles.len();
                u.roles.retain(|x| *x != r.role);
                if u.roles.len() == before {
                    return Err(Error::RoleNotGranted);
                }
                AuthApplied::Done
            }
            Change::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(Error::RoleAlreadyExist);
                }
                self.roles.insert(r.name.clone(), Role { name: r.name.clone().into_bytes(), key_permission: vec![] });
                AuthApplied::Done
            }
            Change::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                self.roles.remove(&r.role).ok_or(Error::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.retain(|x| *x != r.role);
                }
                AuthApplied::Done
            }
            Change::RoleGrantPermission(r) => {
                let perm = r.perm.clone().ok_or(Error::PermissionNotGiven)?;
                let role = self.roles.get_mut(&r.name).ok_or(Error::RoleNotFound)?;
                match role.key_permission.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => role.key_permission.push(perm),
                }
                role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                AuthApplied::Done
            }
            Change::RoleRevokePermission(r) => {
                let role = self.roles.get_mut(&r.role).ok_or(Error::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission.retain(|p| !(p.key == r.key && p.range_end == r.range_end));
                if role.key_permission.len() == before {
                    return Err(Error::PermissionNotGranted);
                }
                AuthApplied::Done
            }
            Change::Authenticate(t) => {
                // The user may have gone between the password check and now.
                if !self.enabled {
                    return Err(Error::AuthNotEnabled);
                }
                self.users.get(&t.name).ok_or(Error::AuthFailed)?;
                // Handing out a token is not a change of the store.
                return Ok(AuthApplied::Token { name: t.name.clone(), token: t.token.clone() });
            }
        };
        self.revision += 1;
        Ok(applied)
    }
}

fn allows(p: &Permission, access: Access) -> bool {
    match PermType::try_from(p.perm_type) {
        Ok(PermType::Readwrite) => true,
        Ok(PermType::Read) => access == Access::Read,
        Ok(PermType::Write) => access == Access::Write,
        Err(_) => false,
    }
}

/// [start, end) with None for "no end" (etcd's "\0" range end).
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key.to_vec(), Some(end))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// Whether the sorted intervals `granted`, together, cover `wanted`.
fn covers(granted: &[(Vec<u8>, Option<Vec<u8>>)], wanted: &(Vec<u8>, Option<Vec<u8>>)) -> bool {
    let (mut reached, want_end) = (wanted.0.clone(), &wanted.1);
    if want_end.as_ref().is_some_and(|e| *e <= reached) {
        // An empty range (end at or before start): nothing to read, allowed
        // only with a permission at its key.
        return granted.iter().any(|(s, e)| *s <= reached && e.as_ref().is_none_or(|e| *e > reached));
    }
    for (start, end) in granted {
        if *start > reached {
            break;
        }
        match end {
            None => return true,
            Some(e) if *e > reached => {
                reached = e.clone();
                if want_end.as_ref().is_some_and(|w| reached >= *w) {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests;
