//! One write transaction of the applier: everything one raft entry changes.
//!
//! All changes of a txn share one main revision, assigned at the first change
//! by the revision rule. The index is updated as the txn goes (so later ops
//! of the same txn read earlier ones, as in etcd), the values go into one
//! engine batch, and dropping an unfinished txn undoes its index changes, so
//! a failed apply never leaves a half-written state in memory.

use super::range::{self, entries_at};
use super::{next_revision, Entry, MvccStore, Rev, State};
use crate::engine::WriteBatch;
use crate::error::{Error, Result};
use prost::Message;
use std::collections::HashMap;
use tessera_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use tessera_proto::etcdserverpb::request_op::Request;
use tessera_proto::etcdserverpb::response_op::Response;
use tessera_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, TxnRequest, TxnResponse,
};
use tessera_proto::mvccpb::{event::EventType, Event, KeyValue};

/// A key changed the lease it is attached to (0 = none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseMove {
    pub key: Vec<u8>,
    pub from: i64,
    pub to: i64,
}

pub struct TxnOutcome {
    pub batch: WriteBatch,
    pub events: Vec<Event>,
    pub lease_moves: Vec<LeaseMove>,
    /// The group's revision after the txn.
    pub rev: i64,
}

pub struct WriteTxn<'s> {
    store: &'s MvccStore,
    st: &'s mut State,
    batch: WriteBatch,
    begin_rev: i64,
    hint: i64,
    rev: Option<i64>,
    sub: i64,
    pending: HashMap<Rev, KeyValue>,
    events: Vec<Event>,
    lease_moves: Vec<LeaseMove>,
    /// Keys whose index got an entry, for the undo on drop.
    touched: Vec<Vec<u8>>,
    done: bool,
}

impl<'s> WriteTxn<'s> {
    pub fn begin(store: &'s MvccStore, st: &'s mut State, hint: i64) -> Self {
        let begin_rev = st.rev;
        Self {
            store,
            st,
            batch: WriteBatch::default(),
            begin_rev,
            hint,
            rev: None,
            sub: 0,
            pending: HashMap::new(),
            events: vec![],
            lease_moves: vec![],
            touched: vec![],
            done: false,
        }
    }

    /// A txn that only reads, as of revision `at` (None: the current one).
    pub fn read_at(store: &'s MvccStore, st: &'s mut State, at: Option<i64>) -> Self {
        let mut txn = Self::begin(store, st, 0);
        if let Some(at) = at {
            txn.begin_rev = at.min(txn.begin_rev);
        }
        txn
    }

    /// The group's revision before this txn.
    pub fn begin_revision(&self) -> i64 {
        self.begin_rev
    }

    pub fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    fn write_rev(&mut self) -> i64 {
        let (begin, hint) = (self.begin_rev, self.hint);
        *self.rev.get_or_insert_with(|| next_revision(begin, hint))
    }

    fn read_rev(&self) -> i64 {
        self.rev.unwrap_or(self.begin_rev)
    }

    fn op_header(&self) -> Option<tessera_proto::etcdserverpb::ResponseHeader> {
        Some(tessera_proto::etcdserverpb::ResponseHeader { revision: self.read_rev(), ..Default::default() })
    }

    fn fetch(&self, revs: &[Rev]) -> Result<Vec<KeyValue>> {
        let missing: Vec<Rev> = revs.iter().filter(|r| !self.pending.contains_key(r)).copied().collect();
        let mut loaded = self.store.fetch(&missing)?.into_iter();
        Ok(revs
            .iter()
            .map(|r| match self.pending.get(r) {
                Some(kv) => kv.clone(),
                None => loaded.next().unwrap_or_default(),
            })
            .collect())
    }

    fn record(&mut self, key: &[u8], mut entry: Entry, kv: KeyValue) {
        let value = kv.encode_to_vec();
        entry.size = value.len() as u32;
        self.st.bytes += value.len() as u64;
        self.batch.put(self.store.keys.revision(entry.rev.main, entry.rev.sub), value);
        self.st.index.entry(key.to_vec()).or_default().push(entry);
        self.touched.push(key.to_vec());
        self.pending.insert(entry.rev, kv);
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let rev = if req.revision > 0 { req.revision } else { self.read_rev() };
        range::range(self.st, req, rev, &|revs| self.fetch(revs))
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        let prev = self.st.index.get(&req.key).and_then(|k| k.at(self.read_rev())).copied();
        let prev_kv = match prev {
            Some(e) if req.prev_kv || req.ignore_value => self.fetch(&[e.rev])?.pop(),
            _ => None,
        };
        let value = match (&prev_kv, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            (None, true) => return Err(Error::KeyNotFound),
            (_, false) => req.value.clone(),
        };
        let lease = match (prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            (None, true) => return Err(Error::KeyNotFound),
            (_, false) => req.lease,
        };
        let rev = self.write_rev();
        let (create, version) = prev.map_or((rev, 1), |p| (p.create, p.version + 1));
        let entry = Entry { rev: Rev::new(rev, self.sub), create, version, lease, size: 0 };
        self.sub += 1;
        let kv = KeyValue { key: req.key.clone(), create_revision: create, mod_revision: rev, version, value, lease };
        self.events.push(Event { r#type: EventType::Put as i32, kv: Some(kv.clone()), prev_kv: None });
        let old_lease = prev.map_or(0, |p| p.lease);
        if old_lease != lease {
            self.lease_moves.push(LeaseMove { key: req.key.clone(), from: old_lease, to: lease });
        }
        self.record(&req.key, entry, kv);
        Ok(PutResponse { header: None, prev_kv: prev_kv.filter(|_| req.prev_kv) })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let found: Vec<(Vec<u8>, Entry)> =
            entries_at(self.st, &req.key, &req.range_end, self.read_rev()).into_iter().map(|(k, e)| (k.to_vec(), e)).collect();
        let prev_kvs = if req.prev_kv { self.fetch(&found.iter().map(|(_, e)| e.rev).collect::<Vec<_>>())? } else { vec![] };
        for (key, e) in &found {
            self.delete_one(key, e.lease);
        }
        Ok(DeleteRangeResponse { header: None, deleted: found.len() as i64, prev_kvs })
    }

    fn delete_one(&mut self, key: &[u8], lease: i64) {
        let rev = self.write_rev();
        let entry = Entry { rev: Rev::new(rev, self.sub), create: 0, version: 0, lease: 0, size: 0 };
        self.sub += 1;
        let kv = KeyValue { key: key.to_vec(), mod_revision: rev, ..Default::default() };
        self.events.push(Event { r#type: EventType::Delete as i32, kv: Some(kv.clone()), prev_kv: None });
        if lease != 0 {
            self.lease_moves.push(LeaseMove { key: key.to_vec(), from: lease, to: 0 });
        }
        self.record(key, entry, kv);
    }

    /// Deletes the given keys where they are alive (lease revoke).
    pub fn delete_keys(&mut self, keys: &[Vec<u8>]) {
        let rev = self.read_rev();
        for key in keys {
            if let Some(e) = self.st.index.get(key).and_then(|k| k.at(rev)).copied() {
                self.delete_one(key, e.lease);
            }
        }
    }

    pub fn txn(&mut self, req: &TxnRequest, lease_exists: &dyn Fn(i64) -> bool) -> Result<TxnResponse> {
        // As etcd: every compare of every nested txn is evaluated against the
        // state before the txn, then the chosen ops are checked, then run.
        let mut path = vec![];
        self.choose_path(req, &mut path)?;
        self.check_requests(req, &path, &mut 0, lease_exists)?;
        self.exec(req, &path, &mut 0)
    }

    /// Whether the branches this txn's compares choose (nested txns
    /// included) only read, against the state this txn reads.
    pub fn chosen_branches_only_read(&self, req: &TxnRequest) -> Result<bool> {
        let mut path = vec![];
        self.choose_path(req, &mut path)?;
        Ok(only_reads(req, &path, &mut 0))
    }

    fn choose_path(&self, req: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
        let mut ok = true;
        for c in &req.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in branch(req, ok) {
            if let Some(Request::RequestTxn(t)) = &op.request {
                self.choose_path(t, path)?;
            }
        }
        Ok(())
    }

    fn check_requests(&self, req: &TxnRequest, path: &[bool], at: &mut usize, lease_exists: &dyn Fn(i64) -> bool) -> Result<()> {
        let ok = path[*at];
        *at += 1;
        for op in branch(req, ok) {
            match &op.request {
                Some(Request::RequestTxn(t)) => self.check_requests(t, path, at, lease_exists)?,
                _ => self.check_op(op, lease_exists)?,
            }
        }
        Ok(())
    }

    /// What etcd checks of one op before it runs any of a txn's: range
    /// revisions, leases, and keys an ignore_value/ignore_lease put needs.
    pub fn check_op(&self, op: &RequestOp, lease_exists: &dyn Fn(i64) -> bool) -> Result<()> {
        match &op.request {
            Some(Request::RequestRange(r)) => {
                if r.revision > self.begin_rev {
                    return Err(Error::FutureRev);
                }
                if r.revision > 0 && r.revision < self.st.compact_rev {
                    return Err(Error::Compacted);
                }
            }
            Some(Request::RequestPut(p)) => {
                if p.lease != 0 && !lease_exists(p.lease) {
                    return Err(Error::LeaseNotFound);
                }
                if (p.ignore_value || p.ignore_lease) && self.st.index.get(&p.key).and_then(|k| k.at(self.begin_rev)).is_none() {
                    return Err(Error::KeyNotFound);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// One compare of a cross-group txn, on this group's part of its range:
    /// whether the group holds a key there, and whether the compare holds
    /// for each (for none: as etcd compares a missing key).
    pub fn compare_part(&self, c: &Compare) -> Result<(bool, bool)> {
        let found = !entries_at(self.st, &c.key, &c.range_end, self.read_rev()).is_empty();
        Ok((found, self.compare(c)?))
    }

    fn exec(&mut self, req: &TxnRequest, path: &[bool], at: &mut usize) -> Result<TxnResponse> {
        let ok = path[*at];
        *at += 1;
        let mut responses = vec![];
        for op in branch(req, ok) {
            // As etcd: each op's header holds the txn's revision as that op
            // saw it (begin, or the new revision once something was written);
            // a nested txn's header is empty.
            let response = match &op.request {
                Some(Request::RequestRange(r)) => {
                    let resp = self.range(r)?;
                    Response::ResponseRange(RangeResponse { header: self.op_header(), ..resp })
                }
                Some(Request::RequestPut(p)) => {
                    let resp = self.put(p)?;
                    Response::ResponsePut(PutResponse { header: self.op_header(), ..resp })
                }
                Some(Request::RequestDeleteRange(d)) => {
                    let resp = self.delete_range(d)?;
                    Response::ResponseDeleteRange(DeleteRangeResponse { header: self.op_header(), ..resp })
                }
                Some(Request::RequestTxn(t)) => {
                    let resp = self.exec(t, path, at)?;
                    Response::ResponseTxn(TxnResponse { header: Some(Default::default()), ..resp })
                }
                None => continue,
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        Ok(TxnResponse { header: None, succeeded: ok, responses })
    }

    fn compare(&self, c: &Compare) -> Result<bool> {
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let found = entries_at(self.st, &c.key, &c.range_end, self.read_rev());
        if found.is_empty() {
            // etcd: a value compare on a missing key always fails; other
            // targets compare against zero.
            return Ok(target != CompareTarget::Value && compare_one(c, target, &Entry::zero(), &[]));
        }
        let values = if target == CompareTarget::Value {
            self.fetch(&found.iter().map(|(_, e)| e.rev).collect::<Vec<_>>())?
        } else {
            vec![]
        };
        Ok(found.iter().enumerate().all(|(i, (_, e))| {
            let v = values.get(i).map_or(&[][..], |kv| kv.value.as_slice());
            compare_one(c, target, e, v)
        }))
    }

    /// Completes the txn: the group's revision moves to the txn's revision
    /// (or the hint, for a bump) and the meta joins the batch.
    pub fn finish(mut self) -> TxnOutcome {
        // A command that wrote nothing (a bump, a delete that matched
        // nothing, a txn whose branch only read) still raises the group to
        // its hint: its answer names that revision, and a group must never
        // be below a revision it answered (0 standalone: no change).
        self.st.rev = match self.rev {
            Some(rev) => rev,
            None => self.st.rev.max(self.hint),
        };
        let mut batch = std::mem::take(&mut self.batch);
        self.store.write_meta(&mut batch, self.st);
        self.done = true;
        TxnOutcome {
            batch,
            events: std::mem::take(&mut self.events),
            lease_moves: std::mem::take(&mut self.lease_moves),
            rev: self.st.rev,
        }
    }
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for key in self.touched.drain(..).rev() {
            if let Some(ki) = self.st.index.get_mut(&key) {
                self.st.bytes = self.st.bytes.saturating_sub(ki.last_size());
                if ki.pop_last() {
                    self.st.index.remove(&key);
                }
            }
        }
    }
}

impl Entry {
    fn zero() -> Self {
        Entry { rev: Rev::default(), create: 0, version: 0, lease: 0, size: 0 }
    }
}

/// Whether the ops `path` takes through `req` only read.
fn only_reads(req: &TxnRequest, path: &[bool], at: &mut usize) -> bool {
    let ok = path[*at];
    *at += 1;
    branch(req, ok).iter().all(|op| match &op.request {
        Some(Request::RequestRange(_)) | None => true,
        Some(Request::RequestTxn(t)) => only_reads(t, path, at),
        Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
    })
}

fn branch(req: &TxnRequest, ok: bool) -> &[RequestOp] {
    if ok {
        &req.success
    } else {
        &req.failure
    }
}

fn compare_one(c: &Compare, target: CompareTarget, e: &Entry, value: &[u8]) -> bool {
    use std::cmp::Ordering;
    let int = |u: &Option<TargetUnion>| match u {
        Some(TargetUnion::Version(v))
        | Some(TargetUnion::CreateRevision(v))
        | Some(TargetUnion::ModRevision(v))
        | Some(TargetUnion::Lease(v)) => *v,
        _ => 0,
    };
    let ord: Ordering = match target {
        CompareTarget::Value => {
            let want = match &c.target_union {
                Some(TargetUnion::Value(v)) => v.as_slice(),
                _ => &[],
            };
            value.cmp(want)
        }
        CompareTarget::Version => e.version.cmp(&int(&c.target_union)),
        CompareTarget::Create => e.create.cmp(&int(&c.target_union)),
        CompareTarget::Mod => e.rev.main.cmp(&int(&c.target_union)),
        CompareTarget::Lease => e.lease.cmp(&int(&c.target_union)),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}
