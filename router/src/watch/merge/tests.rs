use super::*;
use tessera_proto::mvccpb::KeyValue;

fn ev(key: &str, rev: i64) -> Event {
    Event { kv: Some(KeyValue { key: key.into(), mod_revision: rev, ..Default::default() }), ..Default::default() }
}

/// Events of `n` revisions from `from` on, one each.
fn evs(prefix: &str, from: i64, n: usize) -> Vec<Event> {
    (0..n).map(|i| ev(&format!("{prefix}{i}"), from + i as i64)).collect()
}

fn key(e: &Event) -> String {
    String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned()
}

/// The keys of each event response (creation left out).
fn keys<W>(r: &Released<W>) -> Vec<Vec<String>> {
    r.responses.iter().filter(|r| !r.created).map(|r| r.events.iter().map(key).collect()).collect()
}

fn all_keys<W>(r: &Released<W>) -> Vec<String> {
    keys(r).concat()
}

fn header_revs<W>(r: &Released<W>) -> Vec<i64> {
    r.responses.iter().map(|r| r.header.as_ref().unwrap().revision).collect()
}

/// A merge of `groups` from `start` whose creation was already released.
fn merge(groups: &[u64], start: i64) -> Merge<&'static str> {
    let mut m = Merge::new(7, groups, start);
    let first = m.release();
    assert!(first.responses.len() == 1 && first.responses[0].created, "the creation comes first");
    assert_eq!(header_revs(&first), [start - 1]);
    m
}

#[test]
fn events_wait_for_every_group_and_come_out_in_revision_order() {
    let mut m = merge(&[1, 2], 10);
    m.events(1, vec![ev("a", 10), ev("b", 12)]);
    assert!(m.release().responses.is_empty(), "group 2 has confirmed nothing past 9");
    m.events(2, vec![ev("c", 11)]);
    let r = m.release();
    assert_eq!(keys(&r), [["a", "c"]]);
    assert_eq!(header_revs(&r), [11], "the header says what every group confirmed");
    assert!(r.responses.iter().all(|r| r.watch_id == 7));
    m.progress(2, 13);
    let r = m.release();
    assert_eq!(keys(&r), [["b"]]);
    assert_eq!(header_revs(&r), [12]);
    assert!(!m.holds_events());
}

#[test]
fn one_revision_of_several_groups_goes_out_in_one_response_in_order() {
    let mut m = merge(&[1, 2], 5);
    m.events(2, vec![ev("z", 5)]);
    m.events(1, vec![ev("x", 5), ev("y", 5), ev("w", 6)]);
    m.progress(2, 6);
    let r = m.release();
    // Revision 5 whole (group 1's txn in its own order, then group 2's), then 6.
    assert_eq!(keys(&r), [vec!["x", "y", "z", "w"]]);
}

#[test]
fn a_group_with_an_unknown_watermark_holds_everything_back() {
    let mut m: Merge<&str> = Merge::new(7, &[1, 2], 0);
    assert!(m.release().responses.is_empty(), "no group said where it starts");
    m.created(1, 7);
    m.events(1, vec![ev("x", 8)]);
    assert!(m.release().responses.is_empty(), "not even the creation: group 2's start is unknown");
    m.created(2, 5);
    m.created(2, 3); // only the first creation counts
    let r = m.release();
    assert!(r.responses[0].created);
    assert_eq!(header_revs(&r), [5]);
    assert!(keys(&r).is_empty(), "8 is past group 2's watermark");
    m.progress(2, 8);
    assert_eq!(all_keys(&m.release()), ["x"]);
    assert!(m.release().responses.is_empty(), "the creation is sent once");
}

#[test]
fn progress_is_answered_once_everything_up_to_its_target_is_released() {
    let mut m = merge(&[1, 2], 10);
    let asks = m.request_progress("client", Some(20));
    assert_eq!(asks, [Ask { group: 1, bump_to: Some(20) }, Ask { group: 2, bump_to: Some(20) }]);
    m.progress(1, 20);
    assert!(m.release().answers.is_empty(), "group 2 has not confirmed");
    m.progress(2, 15);
    assert!(m.release().answers.is_empty(), "never below the target: writes up to 20 were acknowledged");
    m.progress(2, 21);
    let r = m.release();
    assert_eq!(r.answers, [("client", 20)]);
    assert!(m.release().answers.is_empty(), "answered once");
}

#[test]
fn progress_is_never_answered_below_what_was_released() {
    let mut m = merge(&[1, 2], 10);
    m.progress(1, 20);
    m.progress(2, 20);
    m.release();
    m.request_progress("client", Some(20));
    // Late answers from older requests: a watermark never goes back.
    m.progress(1, 18);
    m.progress(2, 17);
    assert_eq!(m.release().answers, [("client", 20)]);
}

#[test]
fn events_pending_hold_a_progress_answer_at_the_released_point() {
    let mut m = merge(&[1, 2], 10);
    m.events(1, vec![ev("a", 12)]);
    m.request_progress("client", None);
    m.progress(1, 12);
    m.progress(2, 11);
    let r = m.release();
    assert!(keys(&r).is_empty());
    assert_eq!(r.answers, [("client", 11)], "the answer promises nothing past what was released");
}

#[test]
fn every_group_is_raised_to_the_target_even_alone() {
    // A group's own revision may be below what other groups answered.
    let mut m = merge(&[4], 10);
    assert_eq!(m.request_progress("client", Some(30)), [Ask { group: 4, bump_to: Some(30) }]);
    let mut m = merge(&[4, 5], 10);
    assert_eq!(m.request_progress("notify", None), [Ask { group: 4, bump_to: None }, Ask { group: 5, bump_to: None }]);
}

#[test]
fn a_reroute_replaces_the_fenced_group_from_its_watermark_losing_and_repeating_nothing() {
    let mut m = merge(&[1, 2], 10);
    m.events(1, vec![ev("a", 11), ev("e", 14)]);
    m.progress(1, 14); // group 1's fence is at 14: it sent everything up to it
    m.events(2, vec![ev("b", 12)]);
    m.progress(2, 13);
    let mut seen = all_keys(&m.release());
    assert_eq!(seen, ["a", "b"]);
    m.request_progress("client", None);

    // Placement raised the new owner (3) past the fence; group 2 is unchanged.
    let change = m.rerouted(1, &[2, 3], 999);
    assert_eq!(change, Reroute { stop: vec![1], start: vec![(3, 15)] });
    assert_eq!(m.groups(), [2, 3]);
    m.events(3, vec![ev("c", 16)]);
    m.events(2, vec![ev("d", 15)]);
    seen.extend(all_keys(&m.release()));
    m.progress(2, 16);
    let r = m.release();
    seen.extend(all_keys(&r));
    assert_eq!(seen, ["a", "b", "e", "d", "c"], "every event once, in revision order");
    assert_eq!(r.answers, [("client", 16)], "the fenced group no longer has to confirm");
}

#[test]
fn a_fenced_group_that_still_owns_part_of_the_range_resumes_from_its_own_watermark() {
    let mut m = merge(&[1, 2], 10);
    m.progress(1, 14);
    m.progress(2, 20);
    let change = m.rerouted(1, &[1, 2, 3], 999);
    assert_eq!(change, Reroute { stop: vec![1], start: vec![(1, 15), (3, 15)] });
    assert_eq!(m.groups(), [1, 2, 3]);
}

#[test]
fn a_group_dropped_by_a_reroute_holds_nothing_back_but_its_events_still_arrive() {
    let mut m = merge(&[1, 2], 10);
    m.progress(1, 14);
    m.progress(2, 12);
    let change = m.rerouted(1, &[3], 999);
    assert_eq!(change, Reroute { stop: vec![1, 2], start: vec![(3, 15)] });
    // Group 2's last message was already on its way.
    m.events(2, vec![ev("late", 13)]);
    assert_eq!(m.groups(), [3]);
    m.progress(3, 15);
    assert_eq!(all_keys(&m.release()), ["late"]);
}

#[test]
fn a_fenced_group_with_no_watermark_hands_over_from_the_fallback() {
    let mut m: Merge<&str> = Merge::new(7, &[1], 0);
    let change = m.rerouted(1, &[2], 40);
    assert_eq!(change, Reroute { stop: vec![1], start: vec![(2, 41)] });
    assert_eq!(header_revs(&m.release()), [40]);
}

#[test]
fn laggards_are_the_groups_below_the_newest_pending_event_and_not_being_bumped() {
    let t0 = Instant::now();
    let mut m = merge(&[1, 2, 3], 10);
    assert!(m.laggards(t0).is_empty(), "nothing pending, nothing to bump");
    m.events(1, vec![ev("a", 15)]);
    m.progress(3, 16);
    assert_eq!(m.laggards(t0), [(2, 15)]);
    assert!(m.laggards(t0 + BUMP_GAP * 10).is_empty(), "its bump is in flight");
    m.bumped(2);
    assert!(m.laggards(t0).is_empty(), "bumped less than a gap ago");
    assert_eq!(m.laggards(t0 + BUMP_GAP), [(2, 15)]);
    m.events(3, vec![ev("b", 20)]);
    m.bumped(2);
    assert_eq!(m.laggards(t0 + BUMP_GAP * 2), [(1, 20), (2, 20)], "raised to the newest pending revision");
}

#[test]
fn a_backlog_goes_out_in_responses_of_at_most_1000_events_of_whole_revisions() {
    let mut m = merge(&[1], 1);
    m.events(1, evs("k", 1, 2500));
    let sizes: Vec<usize> = m.release().responses.iter().map(|r| r.events.len()).collect();
    assert_eq!(sizes, [1000, 1000, 500]);

    // 999 single-event revisions, then a revision of 3: never split.
    let mut m = merge(&[1], 1);
    let mut events = evs("k", 1, 999);
    events.extend((0..3).map(|i| ev(&format!("t{i}"), 1000)));
    m.events(1, events);
    let sizes: Vec<usize> = m.release().responses.iter().map(|r| r.events.len()).collect();
    assert_eq!(sizes, [999, 3]);

    // One revision bigger than a response goes alone, whole.
    let mut m = merge(&[1], 1);
    let mut events = vec![ev("before", 1)];
    events.extend((0..1500).map(|i| ev(&format!("t{i}"), 2)));
    events.push(ev("after", 3));
    m.events(1, events);
    let sizes: Vec<usize> = m.release().responses.iter().map(|r| r.events.len()).collect();
    assert_eq!(sizes, [1, 1500, 1]);
}

#[test]
fn a_stall_is_reported_after_a_while_and_again_only_after_another() {
    let t0 = Instant::now();
    let after = Duration::from_secs(5);
    let mut m = merge(&[1, 2], 10);
    m.events(1, vec![ev("a", 12)]);
    m.request_progress("client", Some(12));
    assert!(m.stalled(t0, after).is_none());
    let stall = m.stalled(t0 + after * 2, after).expect("held for 10 s");
    assert_eq!((stall.pending, stall.oldest, stall.released), (1, Some(12), 9));
    assert_eq!(stall.watermarks, BTreeMap::from([(1, Some(12)), (2, Some(9))]));
    assert_eq!(stall.progress, [(Some(12), BTreeSet::from([1, 2]))]);
    assert!(m.stalled(t0 + after * 2, after).is_none(), "reported once per period");
    m.progress(2, 12);
    m.release();
    assert!(m.stalled(t0 + after * 4, after).is_none(), "moving again: the clock restarts");
}

#[test]
fn a_cap_holds_everything_above_it_until_lifted() {
    let mut m = merge(&[1], 10);
    m.set_cap(Some(12));
    m.events(1, vec![ev("a", 12), ev("b", 13)]);
    m.progress(1, 15);
    let r = m.release();
    assert_eq!(all_keys(&r), ["a"], "13 waits: the stream's progress answer at 12 goes first");
    assert_eq!(m.released(), 12);
    m.set_cap(None);
    assert_eq!(all_keys(&m.release()), ["b"]);
    assert_eq!(m.released(), 15);
}

#[test]
fn a_creation_answers_its_own_revision_but_not_before_a_progress_answer_below_it() {
    let mut m: Merge<&str> = Merge::new(7, &[1, 2], 21);
    m.answer_creation_at(20);
    m.set_cap(Some(18));
    assert!(m.release().responses.is_empty(), "a progress answer at 18 is on its way: 20 would precede it");
    m.set_cap(None);
    let r = m.release();
    assert!(r.responses[0].created);
    assert_eq!(header_revs(&r), [20]);
}

#[test]
fn a_revision_two_groups_both_send_goes_out_once() {
    // Group 2 took a prefix from group 1 and, routed again from its own
    // watermark, replays the moved history group 1 had sent.
    let mut m = merge(&[1, 2], 10);
    m.events(1, vec![ev("/p/a", 10), ev("/p/b", 11)]);
    m.progress(1, 12);
    m.events(2, vec![ev("/p/a", 10), ev("/q/c", 11), ev("/p/b", 11)]);
    let r = m.release();
    assert_eq!(all_keys(&r), ["/p/a", "/p/b", "/q/c"], "each event once, revision order, group order within one");
}
