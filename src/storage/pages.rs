//! The one way to read a long [`Scan`] a page at a time: a cursor that says
//! which page to read next and learns, from each page read, where the next
//! one begins. It does no I/O itself, so the same cursor pages a storage
//! node, the replicator, or a reader that fetches the next page while it is
//! still busy with the last.
//!
//! Invariants: requests go forward in key order and never overlap (each
//! one's `after` is the last key of the page before it); the records of all
//! pages together are at most the scan's `limit`; a page shorter than asked
//! for, or reaching the limit, ends the scan.

use super::{Record, Scan};

/// Where a paged scan stands.
#[derive(Debug, Clone)]
pub struct Pages {
    /// The next request's filters and cursor.
    next: Scan,
    page_size: usize,
    /// Records still wanted (the scan's `limit`, less those read).
    wanted: usize,
    done: bool,
}

impl Pages {
    /// Pages of at most `page_size` records (at least one) through `scan`,
    /// `scan.limit` records in all (`usize::MAX`: the whole range).
    pub fn new(scan: Scan, page_size: usize) -> Self {
        let wanted = scan.limit;
        Self {
            next: scan,
            page_size: page_size.max(1),
            wanted,
            done: wanted == 0,
        }
    }

    /// The request for the next page; `None` once the scan is complete.
    pub fn request(&self) -> Option<Scan> {
        (!self.done).then(|| Scan {
            limit: self.asked(),
            ..self.next.clone()
        })
    }

    /// Takes note of `page`, read for the last [`Self::request`].
    pub fn advance(&mut self, page: &[Record]) {
        let asked = self.asked();
        self.wanted = self.wanted.saturating_sub(page.len());
        self.done = self.done || page.len() < asked || self.wanted == 0;
        if let Some(last) = page.last() {
            self.next.after = Some(last.key.clone());
        }
    }

    fn asked(&self) -> usize {
        self.page_size.min(self.wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Key;

    fn page(keys: std::ops::Range<i64>) -> Vec<Record> {
        keys.map(|t| Record {
            key: Key {
                sensor: "s".parse().expect("sensor"),
                timestamp_ms: t,
            },
            version: crate::version::Version(1),
            sample: None,
        })
        .collect()
    }

    #[test]
    fn each_request_starts_after_the_last_page_and_a_short_page_ends_it() {
        let mut pages = Pages::new(
            Scan {
                limit: usize::MAX,
                ..Scan::default()
            },
            3,
        );
        let first = pages.request().expect("a first page");
        assert_eq!((first.limit, first.after), (3, None));
        pages.advance(&page(0..3));
        let second = pages.request().expect("a second page");
        assert_eq!(second.after.map(|k| k.timestamp_ms), Some(2));
        pages.advance(&page(3..5));
        assert!(pages.request().is_none(), "a short page is the last");
    }

    #[test]
    fn the_scans_limit_caps_every_page_together() {
        let mut pages = Pages::new(
            Scan {
                limit: 5,
                ..Scan::default()
            },
            3,
        );
        pages.advance(&page(0..3));
        assert_eq!(pages.request().map(|r| r.limit), Some(2));
        pages.advance(&page(3..5));
        assert!(pages.request().is_none(), "five read: done");
        assert!(
            Pages::new(Scan::default(), 3).request().is_none(),
            "limit 0"
        );
    }

    #[test]
    fn an_empty_page_after_a_full_one_ends_it() {
        let mut pages = Pages::new(
            Scan {
                limit: usize::MAX,
                ..Scan::default()
            },
            2,
        );
        pages.advance(&page(0..2));
        pages.advance(&[]);
        assert!(pages.request().is_none());
    }
}
