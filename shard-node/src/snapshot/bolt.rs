//! bbolt's file format, as etcd's tools read it: a backup is a bbolt
//! database so that `etcdctl snapshot status` (and `etcdutl snapshot
//! restore`) open it as they open etcd's. Only what a backup needs: write a
//! whole database of top-level buckets at once (no free pages, no inline
//! buckets), and read a value back or every bucket (restore, tests).
//!
//! Layout (bbolt 1.3, little-endian as on every platform etcd ships for):
//!
//! ```text
//! page 0, 1   meta: magic, version 2, page size, root bucket page, freelist page, page count, txid, fnv-1a 64
//! page 2      the freelist: empty
//! page 3...   per bucket a B+tree of leaf pages (elements: flags, pos, key size, value size; then the
//!             keys and values) under branch pages (pos, key size, child page; then the keys); a node
//!             larger than a page spans following "overflow" pages
//! last        the root bucket: a tree whose values are the buckets' headers (root page, sequence)
//! ```
//!
//! The reader checks every offset against the file and bounds the tree
//! depth: a backup file is the operator's, anything may be in it.

use std::collections::BTreeMap;

pub const PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
/// A leaf element that is a bucket (its value: the bucket's header).
const BUCKET_LEAF: u32 = 0x01;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
/// bbolt keeps a node's element count in 16 bits.
const MAX_ELEMENTS: usize = 0xFFFF;
/// Deeper than any tree of this writer (or of bbolt's, in practice).
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid bbolt file: {0}")]
pub struct BoltError(String);

fn bad<T>(why: impl Into<String>) -> Result<T, BoltError> {
    Err(BoltError(why.into()))
}

/// A bucket's (key, value) items, sorted by key, keys unique.
pub type Items = Vec<(Vec<u8>, Vec<u8>)>;

/// One top-level bucket: its name and its items, sorted by key, keys unique.
pub struct Bucket {
    pub name: Vec<u8>,
    pub items: Items,
}

// ---------------------------------------------------------------- writing

struct Writer {
    file: Vec<u8>,
}

impl Writer {
    fn next_page(&self) -> u64 {
        (self.file.len() / PAGE_SIZE) as u64
    }

    /// Appends a node (header, elements, data) at the next free page.
    fn node(&mut self, flags: u16, count: usize, body: &[u8]) -> u64 {
        let id = self.next_page();
        let pages = (HEADER + body.len()).div_ceil(PAGE_SIZE).max(1);
        let start = self.file.len();
        self.file.resize(start + pages * PAGE_SIZE, 0);
        let p = &mut self.file[start..];
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&flags.to_le_bytes());
        p[10..12].copy_from_slice(&(count as u16).to_le_bytes());
        p[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        p[HEADER..HEADER + body.len()].copy_from_slice(body);
        id
    }

    /// A leaf node of `items` (flags, key, value).
    fn leaf(&mut self, items: &[(u32, &[u8], &[u8])]) -> u64 {
        let mut elems = Vec::with_capacity(items.len() * ELEMENT);
        let mut data = vec![];
        let elems_len = items.len() * ELEMENT;
        for (i, (flags, k, v)) in items.iter().enumerate() {
            // pos: from the element to its key.
            let pos = elems_len - i * ELEMENT + data.len();
            elems.extend_from_slice(&flags.to_le_bytes());
            elems.extend_from_slice(&(pos as u32).to_le_bytes());
            elems.extend_from_slice(&(k.len() as u32).to_le_bytes());
            elems.extend_from_slice(&(v.len() as u32).to_le_bytes());
            data.extend_from_slice(k);
            data.extend_from_slice(v);
        }
        elems.extend_from_slice(&data);
        self.node(LEAF, items.len(), &elems)
    }

    /// A branch node over `children` (first key, page).
    fn branch(&mut self, children: &[(Vec<u8>, u64)]) -> u64 {
        let mut elems = Vec::with_capacity(children.len() * ELEMENT);
        let mut data = vec![];
        let elems_len = children.len() * ELEMENT;
        for (i, (k, page)) in children.iter().enumerate() {
            let pos = elems_len - i * ELEMENT + data.len();
            elems.extend_from_slice(&(pos as u32).to_le_bytes());
            elems.extend_from_slice(&(k.len() as u32).to_le_bytes());
            elems.extend_from_slice(&page.to_le_bytes());
            data.extend_from_slice(k);
        }
        elems.extend_from_slice(&data);
        self.node(BRANCH, children.len(), &elems)
    }

    /// A B+tree of `items` (sorted): its root page.
    fn tree(&mut self, items: &[(u32, &[u8], &[u8])]) -> u64 {
        if items.is_empty() {
            return self.leaf(&[]);
        }
        let mut level: Vec<(Vec<u8>, u64)> = vec![];
        for group in fill(items, |(_, k, v)| ELEMENT + k.len() + v.len()) {
            level.push((group[0].1.to_vec(), self.leaf(group)));
        }
        while level.len() > 1 {
            let groups: Vec<Vec<(Vec<u8>, u64)>> =
                fill(&level, |(k, _)| ELEMENT + k.len()).into_iter().map(<[_]>::to_vec).collect();
            level = groups.into_iter().map(|g| (g[0].0.clone(), self.branch(&g))).collect();
        }
        level[0].1
    }
}

/// Splits `items` into runs that fit a page each (a run of one item may
/// not: it overflows into following pages).
fn fill<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = vec![];
    let (mut start, mut used) = (0, HEADER);
    for (i, item) in items.iter().enumerate() {
        let s = size(item);
        if i > start && (used + s > PAGE_SIZE || i - start == MAX_ELEMENTS) {
            out.push(&items[start..i]);
            (start, used) = (i, HEADER);
        }
        used += s;
    }
    out.push(&items[start..]);
    out
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The meta page `id` (0 or 1) naming the root bucket, freelist and size.
fn meta(file: &mut [u8], id: u64, root: u64, freelist: u64, pages: u64, txid: u64) {
    let p = &mut file[id as usize * PAGE_SIZE..(id as usize + 1) * PAGE_SIZE];
    p[0..8].copy_from_slice(&id.to_le_bytes());
    p[8..10].copy_from_slice(&META.to_le_bytes());
    let m = &mut p[HEADER..HEADER + 64];
    m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION.to_le_bytes());
    m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    // flags (12..16) 0, root bucket's sequence (24..32) 0
    m[16..24].copy_from_slice(&root.to_le_bytes());
    m[32..40].copy_from_slice(&freelist.to_le_bytes());
    m[40..48].copy_from_slice(&pages.to_le_bytes());
    m[48..56].copy_from_slice(&txid.to_le_bytes());
    let sum = fnv1a64(&m[..56]);
    m[56..64].copy_from_slice(&sum.to_le_bytes());
}

/// A whole bbolt database holding `buckets` (each bucket's items sorted by
/// key). Sorted by name here; names must be unique.
pub fn write(buckets: &[Bucket]) -> Vec<u8> {
    let mut w = Writer { file: vec![0; 3 * PAGE_SIZE] };
    // page 2: the (empty) freelist
    w.file[2 * PAGE_SIZE..2 * PAGE_SIZE + 8].copy_from_slice(&2u64.to_le_bytes());
    w.file[2 * PAGE_SIZE + 8..2 * PAGE_SIZE + 10].copy_from_slice(&FREELIST.to_le_bytes());
    let mut roots: Vec<(&[u8], [u8; 16])> = buckets
        .iter()
        .map(|b| {
            let items: Vec<(u32, &[u8], &[u8])> = b.items.iter().map(|(k, v)| (0, k.as_slice(), v.as_slice())).collect();
            let mut header = [0u8; 16]; // root page, then sequence 0
            header[..8].copy_from_slice(&w.tree(&items).to_le_bytes());
            (b.name.as_slice(), header)
        })
        .collect();
    roots.sort_by(|a, b| a.0.cmp(b.0));
    let items: Vec<(u32, &[u8], &[u8])> = roots.iter().map(|(n, h)| (BUCKET_LEAF, *n, h.as_slice())).collect();
    let root = w.tree(&items);
    let pages = w.next_page();
    meta(&mut w.file, 0, root, 2, pages, 0);
    meta(&mut w.file, 1, root, 2, pages, 1);
    w.file
}

// ---------------------------------------------------------------- reading

struct Reader<'a> {
    file: &'a [u8],
    page_size: usize,
    pages: u64,
}

/// A page's header and the bytes it spans (with its overflow pages).
struct Page<'a> {
    flags: u16,
    count: usize,
    bytes: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BoltError> {
    b.get(at..at + 2).map_or_else(|| bad("truncated"), |s| Ok(u16::from_le_bytes(s.try_into().expect("2 bytes"))))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, BoltError> {
    b.get(at..at + 4).map_or_else(|| bad("truncated"), |s| Ok(u32::from_le_bytes(s.try_into().expect("4 bytes"))))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, BoltError> {
    b.get(at..at + 8).map_or_else(|| bad("truncated"), |s| Ok(u64::from_le_bytes(s.try_into().expect("8 bytes"))))
}

/// An element's key and value (`pos` counts from the element itself).
fn slice_at(bytes: &[u8], elem: usize, pos: u32, len: usize) -> Result<&[u8], BoltError> {
    let start = elem.checked_add(pos as usize).ok_or(BoltError("element position".into()))?;
    bytes.get(start..start.saturating_add(len)).map_or_else(|| bad("element past its page"), Ok)
}

impl<'a> Reader<'a> {
    fn open(file: &'a [u8]) -> Result<(Reader<'a>, u64), BoltError> {
        // Of the two meta pages, the valid one with the higher txid.
        let mut best: Option<(u64, u64, u64, usize)> = None; // (txid, root, pages, page size)
        let mut page_size = PAGE_SIZE;
        for id in 0..2usize {
            let at = id * page_size;
            let Some(m) = file.get(at + HEADER..at + HEADER + 64) else { continue };
            if u32_at(m, 0)? != MAGIC || u32_at(m, 4)? != VERSION || fnv1a64(&m[..56]) != u64_at(m, 56)? {
                continue;
            }
            let size = u32_at(m, 8)? as usize;
            if !(1024..=1 << 16).contains(&size) {
                continue;
            }
            page_size = size;
            let (root, pages, txid) = (u64_at(m, 16)?, u64_at(m, 40)?, u64_at(m, 48)?);
            if best.is_none_or(|b| txid > b.0) {
                best = Some((txid, root, pages, size));
            }
        }
        let Some((_, root, pages, page_size)) = best else { return bad("no valid meta page") };
        Ok((Reader { file, page_size, pages }, root))
    }

    fn page(&self, id: u64) -> Result<Page<'a>, BoltError> {
        if id < 2 || id >= self.pages {
            return bad(format!("page {id} out of bounds"));
        }
        let start = (id as usize).checked_mul(self.page_size).ok_or(BoltError("page offset".into()))?;
        let head = self.file.get(start..start + HEADER).map_or_else(|| bad(format!("page {id} past the file")), Ok)?;
        let overflow = u32_at(head, 12)? as u64;
        let end_page = id.checked_add(overflow + 1).filter(|e| *e <= self.pages).ok_or(BoltError("overflow".into()))?;
        let end = (end_page as usize).checked_mul(self.page_size).ok_or(BoltError("page offset".into()))?;
        let bytes = self.file.get(start..end).map_or_else(|| bad(format!("page {id} past the file")), Ok)?;
        Ok(Page { flags: u16_at(head, 8)?, count: u16_at(head, 10)? as usize, bytes })
    }

    /// Every (flags, key, value) of the tree at `root`, in order.
    fn walk(&self, root: u64, depth: usize, out: &mut Vec<(u32, &'a [u8], &'a [u8])>) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return bad("tree too deep (a cycle?)");
        }
        let p = self.page(root)?;
        for i in 0..p.count {
            let elem = HEADER + i * ELEMENT;
            match p.flags {
                LEAF => {
                    let (flags, pos) = (u32_at(p.bytes, elem)?, u32_at(p.bytes, elem + 4)?);
                    let (ksize, vsize) = (u32_at(p.bytes, elem + 8)? as usize, u32_at(p.bytes, elem + 12)? as usize);
                    let kv = slice_at(p.bytes, elem, pos, ksize.saturating_add(vsize))?;
                    out.push((flags, &kv[..ksize], &kv[ksize..]));
                }
                BRANCH => self.walk(u64_at(p.bytes, elem + 8)?, depth + 1, out)?,
                f => return bad(format!("page {root}: not a leaf or branch ({f:#x})")),
            }
        }
        Ok(())
    }

    /// The root page of top-level bucket `name`, if there is one.
    fn bucket(&self, root: u64, name: &[u8]) -> Result<Option<u64>, BoltError> {
        let mut all = vec![];
        self.walk(root, 0, &mut all)?;
        match all.into_iter().find(|(_, k, _)| *k == name) {
            Some((flags, _, v)) if flags & BUCKET_LEAF != 0 => {
                let page = u64_at(v, 0)?;
                if page == 0 {
                    return bad("inline buckets are not read here");
                }
                Ok(Some(page))
            }
            Some(_) => bad("a top-level entry is not a bucket"),
            None => Ok(None),
        }
    }
}

/// The value of `key` in top-level bucket `bucket` of the database `file`.
pub fn get<'a>(file: &'a [u8], bucket: &[u8], key: &[u8]) -> Result<Option<&'a [u8]>, BoltError> {
    let (r, root) = Reader::open(file)?;
    let Some(b) = r.bucket(root, bucket)? else { return Ok(None) };
    let mut items = vec![];
    r.walk(b, 0, &mut items)?;
    Ok(items.into_iter().find(|(_, k, _)| *k == key).map(|(_, _, v)| v))
}

/// Every top-level bucket of `file` with its items (for checks and tests).
pub fn read_all(file: &[u8]) -> Result<BTreeMap<Vec<u8>, Items>, BoltError> {
    let (r, root) = Reader::open(file)?;
    let mut top = vec![];
    r.walk(root, 0, &mut top)?;
    let mut out = BTreeMap::new();
    for (_, name, _) in top {
        let page = r.bucket(root, name)?.ok_or(BoltError("bucket vanished".into()))?;
        let mut items = vec![];
        r.walk(page, 0, &mut items)?;
        out.insert(name.to_vec(), items.into_iter().map(|(_, k, v)| (k.to_vec(), v.to_vec())).collect());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
