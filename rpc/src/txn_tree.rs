//! A txn's compares and ops in one depth-first order, which a router and
//! the groups of a cross-group txn share to name them by index: a txn's
//! own compares, then its success ops, then its failure ops, a nested txn
//! in place (its compares, then its ops). Only leaf ops (range, put,
//! delete) are numbered; a nested txn is a place, not an op.

use tessera_proto::etcdserverpb::request_op::Request;
use tessera_proto::etcdserverpb::{Compare, RequestOp, TxnRequest};

/// Every compare and leaf op of `t`, in the shared order.
#[derive(Default)]
pub struct Flat<'a> {
    pub compares: Vec<&'a Compare>,
    pub ops: Vec<&'a RequestOp>,
}

pub fn flatten(t: &TxnRequest) -> Flat<'_> {
    let mut f = Flat::default();
    walk(t, &mut f);
    f
}

fn walk<'a>(t: &'a TxnRequest, f: &mut Flat<'a>) {
    f.compares.extend(&t.compare);
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Request::RequestTxn(nested)) => walk(nested, f),
            Some(_) => f.ops.push(op),
            None => {}
        }
    }
}

/// The compares' outcomes decide the branch of every txn node; this is the
/// chosen execution, in etcd's order (a nested txn's ops run where it stands).
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub succeeded: bool,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A leaf op, by its index in the shared order.
    Op(usize),
    Txn(Decided),
}

/// Decides `t` from the outcome of each compare (by index), as etcd does:
/// every compare is evaluated against the state before the txn.
pub fn decide(t: &TxnRequest, holds: &[bool]) -> Decided {
    let (mut c, mut o) = (0, 0);
    decide_node(t, holds, &mut c, &mut o)
}

fn decide_node(t: &TxnRequest, holds: &[bool], c: &mut usize, o: &mut usize) -> Decided {
    let n = t.compare.len();
    let succeeded = holds[*c..*c + n].iter().all(|h| *h);
    *c += n;
    let mut chosen = vec![];
    for (branch, ops) in [(true, &t.success), (false, &t.failure)] {
        for op in ops.iter() {
            // Every node and op is walked, chosen or not, so indices stay
            // those of the shared order.
            let step = match &op.request {
                Some(Request::RequestTxn(nested)) => Step::Txn(decide_node(nested, holds, c, o)),
                Some(_) => {
                    *o += 1;
                    Step::Op(*o - 1)
                }
                None => continue,
            };
            if branch == succeeded {
                chosen.push(step);
            }
        }
    }
    Decided { succeeded, steps: chosen }
}

impl Decided {
    /// The leaf ops this execution runs, in order.
    pub fn ops(&self) -> Vec<usize> {
        let mut out = vec![];
        self.collect(&mut out);
        out
    }

    fn collect(&self, out: &mut Vec<usize>) {
        for s in &self.steps {
            match s {
                Step::Op(i) => out.push(*i),
                Step::Txn(d) => d.collect(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::etcdserverpb::{PutRequest, RangeRequest};

    fn put(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn get(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestRange(RangeRequest { key: k.into(), ..Default::default() })) }
    }
    fn cmp(k: &str) -> Compare {
        Compare { key: k.into(), ..Default::default() }
    }
    fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { compare, success, failure }
    }
    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp { request: Some(Request::RequestTxn(t)) }
    }

    #[test]
    fn nested_txns_are_numbered_in_place_and_decided_by_their_own_compares() {
        // if a: [put x, if b: [put y] else [get z]] else [get w]
        let inner = txn(vec![cmp("b")], vec![put("y")], vec![get("z")]);
        let t = txn(vec![cmp("a")], vec![put("x"), nested(inner)], vec![get("w")]);
        let f = flatten(&t);
        assert_eq!(f.compares.iter().map(|c| c.key.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(f.ops.len(), 4); // x, y, z, w
        let d = decide(&t, &[true, false]);
        assert!(d.succeeded);
        assert_eq!(d.ops(), vec![0, 2], "put x, then the inner failure's get z");
        assert!(matches!(&d.steps[1], Step::Txn(inner) if !inner.succeeded));
        let d = decide(&t, &[false, true]);
        assert!(!d.succeeded);
        assert_eq!(d.ops(), vec![3], "get w; the inner txn is not run");
        assert_eq!(d.steps, vec![Step::Op(3)]);
    }

    #[test]
    fn no_compares_means_success() {
        let t = txn(vec![], vec![put("x")], vec![put("y")]);
        assert_eq!(decide(&t, &[]).ops(), vec![0]);
    }
}
