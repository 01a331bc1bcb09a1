use super::*;

fn buckets() -> Vec<Bucket> {
    let many: Vec<(Vec<u8>, Vec<u8>)> =
        (0..20_000u32).map(|i| (format!("key-{i:08}").into_bytes(), format!("value-{i}").repeat(3).into_bytes())).collect();
    vec![
        Bucket { name: b"key".to_vec(), items: many },
        Bucket { name: b"alarm".to_vec(), items: vec![] },
        // One value of many pages (overflow), between small ones.
        Bucket {
            name: b"tessera".to_vec(),
            items: vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"state".to_vec(), vec![7u8; 3 * PAGE_SIZE + 5]),
                (b"z".to_vec(), vec![]),
            ],
        },
    ]
}

#[test]
fn what_is_written_reads_back() {
    let file = write(&buckets());
    assert_eq!(file.len() % PAGE_SIZE, 0);
    let all = read_all(&file).unwrap();
    assert_eq!(all.keys().map(|k| k.as_slice()).collect::<Vec<_>>(), [&b"alarm"[..], b"key", b"tessera"], "sorted by name");
    for b in buckets() {
        assert_eq!(all[&b.name], b.items, "bucket {:?}", String::from_utf8_lossy(&b.name));
    }
    assert_eq!(get(&file, b"tessera", b"state").unwrap().unwrap(), vec![7u8; 3 * PAGE_SIZE + 5]);
    assert_eq!(get(&file, b"key", b"key-00012345").unwrap().unwrap(), b"value-12345".repeat(3));
    assert_eq!(get(&file, b"key", b"nope").unwrap(), None);
    assert_eq!(get(&file, b"nope", b"a").unwrap(), None);
}

#[test]
fn the_meta_pages_are_checked() {
    let file = write(&buckets());
    let mut one_bad = file.clone();
    one_bad[HEADER + 20] ^= 1; // meta 0's root page: its checksum no longer matches
    assert!(read_all(&one_bad).is_ok(), "meta 1 still valid");
    let mut both_bad = one_bad;
    both_bad[PAGE_SIZE + HEADER + 20] ^= 1;
    assert!(read_all(&both_bad).is_err());
    assert!(read_all(&file[..PAGE_SIZE]).is_err(), "truncated");
    assert!(read_all(&[]).is_err());
}

#[test]
fn a_corrupt_file_is_an_error_never_a_panic() {
    let file = write(&buckets()[2..]);
    // Every byte of the data pages flipped in turn, and every page cut.
    for at in 2 * PAGE_SIZE..file.len() {
        let mut f = file.clone();
        f[at] ^= 0xff;
        let _ = read_all(&f);
        let _ = get(&f, b"tessera", b"state");
    }
    for cut in (0..file.len()).step_by(PAGE_SIZE / 2) {
        let _ = read_all(&file[..cut]);
    }
}
