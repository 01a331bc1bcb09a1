//! Placement units: the longest `/`-terminated prefix of a key that holds at
//! most `depth` slashes. Siblings share a unit, so a Kubernetes resource
//! type, a lock's contenders or an election's candidates stay in one group.
//!
//! ```text
//! depth 3:  /registry/pods/ns/x -> /registry/pods/
//!           tx/a                -> tx/
//!           foo                 -> ""   (the root unit)
//! ```

pub fn placement_unit(key: &[u8], depth: usize) -> &[u8] {
    let mut end = 0;
    let mut slashes = 0;
    for (i, b) in key.iter().enumerate() {
        if *b == b'/' {
            if slashes == depth {
                break;
            }
            slashes += 1;
            end = i + 1;
        }
    }
    &key[..end]
}

/// Whether every key starting with `prefix` has the same unit (`prefix`
/// already holds `depth` slashes, its unit is fixed).
pub fn prefix_fixes_unit(prefix: &[u8], depth: usize) -> bool {
    prefix.iter().filter(|b| **b == b'/').count() >= depth
}

/// The longest prefix every key in `[key, range_end)` shares.
pub fn common_prefix<'a>(key: &'a [u8], range_end: &[u8]) -> &'a [u8] {
    if range_end.is_empty() {
        return key; // a single key
    }
    if range_end == [0] {
        return &[]; // every key from `key` on
    }
    if crate::prefix_end(key) == range_end {
        return key; // a prefix range
    }
    let n = key.iter().zip(range_end).take_while(|(a, b)| a == b).count();
    &key[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_the_design() {
        assert_eq!(placement_unit(b"/registry/pods/ns/x", 3), b"/registry/pods/");
        assert_eq!(placement_unit(b"/registry/pods/", 3), b"/registry/pods/");
        assert_eq!(placement_unit(b"tx/a", 3), b"tx/");
        assert_eq!(placement_unit(b"app/lock/7f3a", 3), b"app/lock/");
        assert_eq!(placement_unit(b"foo", 3), b"");
        assert_eq!(placement_unit(b"a/b/c/d/e", 2), b"a/b/");
    }

    #[test]
    fn common_prefixes() {
        assert_eq!(common_prefix(b"/registry/pods/", b"/registry/pods0"), b"/registry/pods/");
        assert_eq!(common_prefix(b"k", b""), b"k");
        assert_eq!(common_prefix(b"", b"\0"), b"");
        assert_eq!(common_prefix(b"abc", b"abd"), b"abc");
        assert_eq!(common_prefix(b"abc", b"abz"), b"ab");
        assert!(prefix_fixes_unit(b"/registry/pods/", 3));
        assert!(!prefix_fixes_unit(b"/registry/", 3));
    }
}
