//! Per-process clocks through libfaketime (Debian's `faketime` package):
//! each process of the system starts with libfaketime preloaded and reads
//! its clock's specification ("+offset xrate", in seconds since the process
//! started) from a file of its own, which libfaketime re-reads about every
//! second. Both clocks are faked, monotonic too: Tessera's leases and raft
//! ticks run on the monotonic clock (the revision timeline no longer
//! depends on clocks).
//!
//! A real monotonic clock never goes back, so neither do these: a rate
//! change is made continuous at a planned switch point, placed so that
//! libfaketime's late pick-up of the file (up to ~2 s) can only move the
//! clock forward; jumps are forward only.
//!
//! libfaketime fakes CLOCK_MONOTONIC as (faked) realtime, and Rust's std
//! waits on futexes until an absolute CLOCK_MONOTONIC deadline, which the
//! kernel reads on the true clock: a faked clock far from the true one
//! makes those waits end at once or never (a raft group then never
//! elects). So the specification carries `base` = monotonic − realtime,
//! making the faked monotonic clock the true one (and the faked realtime
//! 1970 plus the uptime: logs show 1970), and every skew ends with the
//! clock back on true time (`gap` 0): a clock ahead of the true one by g
//! stretches such waits by g while it lasts.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// The one process of a run whose clock may be skewed, and libfaketime.
///
/// Only one: libfaketime re-reads its specification file from whichever
/// thread finds its cache expired, without a lock, and a busy
/// multi-threaded process has been seen to lose the offset for good (its
/// log jumps from 1970 to today, its absolute waits then hang). Preloading
/// it into one process keeps that rare accident to one process, and
/// `lost_offset` tells when it happened.
#[derive(Clone, Debug)]
pub struct Skewable {
    pub lib: PathBuf,
    pub name: String,
}

/// Whether libfaketime lost the offset of the process that wrote `log`:
/// its faked realtime is 1970 plus the uptime, so a later line stamped
/// with another year means the offset is gone. Returns that line's stamp.
pub fn lost_offset(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut faked = false;
    for line in text.lines() {
        // tracing's lines start with the timestamp, maybe after colour codes (which hold digits too).
        let b = line.as_bytes();
        let is_stamp =
            |i: usize| b.len() >= i + 19 && b[i..i + 4].iter().all(u8::is_ascii_digit) && b[i + 4] == b'-' && b[i + 10] == b'T';
        let Some(at) = (0..b.len().min(24)).find(|&i| is_stamp(i)) else { continue };
        let stamp = &line[at..at + 19];
        if stamp.starts_with("1970-") {
            faked = true;
        } else if faked {
            return Some(stamp.to_string());
        }
    }
    None
}

/// How late libfaketime may apply a new specification: its cache of the
/// file lasts 1 s, compared in whole seconds, so up to 2 s; half a second
/// more covers the time between planning a change and writing it.
const PICKUP_S: f64 = 2.5;
/// The latest libfaketime picks a written specification up.
#[cfg(test)]
const LIBFAKETIME_LAG_S: f64 = 2.0;

/// libfaketime's preload library, if installed.
pub fn libfaketime() -> Option<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ];
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// One process's fake clock: fake(e) = offset + rate·e, e the real seconds
/// since the process started.
#[derive(Clone, Debug)]
pub struct ProcClock {
    file: PathBuf,
    started: Instant,
    offset: f64,
    rate: f64,
    base: f64,
}

/// CLOCK_MONOTONIC − CLOCK_REALTIME, in seconds.
fn base() -> f64 {
    let read = |clock| {
        // SAFETY: clock_gettime into a local timespec.
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    };
    read(libc::CLOCK_MONOTONIC) - read(libc::CLOCK_REALTIME)
}

impl ProcClock {
    pub fn new(file: PathBuf) -> std::io::Result<ProcClock> {
        let c = ProcClock { file, started: Instant::now(), offset: 0.0, rate: 1.0, base: base() };
        c.write()?;
        Ok(c)
    }

    /// The environment that puts a process on this clock.
    pub fn env(&self, lib: &Path) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), lib.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE".into(), self.file.display().to_string()),
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ]
    }

    /// The process (re)started now, with a true clock.
    pub fn restarted(&mut self) -> std::io::Result<()> {
        (self.started, self.offset, self.rate, self.base) = (Instant::now(), 0.0, 1.0, base());
        self.write()
    }

    /// From now on the clock runs at `rate` times real time, continuously.
    pub fn set_rate(&mut self, rate: f64) -> std::io::Result<()> {
        let e = self.started.elapsed().as_secs_f64();
        // Faster: switch now (a late pick-up jumps forward); slower: switch
        // at the latest pick-up (an early one jumps forward, not back).
        let switch_at = if rate > self.rate { e } else { e + PICKUP_S };
        self.offset += (self.rate - rate) * switch_at;
        self.rate = rate;
        self.write()
    }

    /// The clock jumps forward by `secs`.
    pub fn jump(&mut self, secs: f64) -> std::io::Result<()> {
        self.offset += secs.max(0.0);
        self.write()
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How far ahead of the true clock this one is (seconds), now.
    pub fn gap(&self) -> f64 {
        self.offset + (self.rate - 1.0) * self.started.elapsed().as_secs_f64()
    }

    /// Starts bringing the clock back to true time: it runs at half speed
    /// until the gap is gone; returns how long that takes (then `settle`).
    pub fn recover(&mut self) -> std::io::Result<std::time::Duration> {
        if self.gap() <= 0.01 {
            self.set_rate(1.0)?;
            return Ok(std::time::Duration::ZERO);
        }
        self.set_rate(0.5)?;
        // gap(e) = offset − 0.5·e reaches 0 at e = 2·offset; a little early, so it stays ≥ 0.
        let e = self.started.elapsed().as_secs_f64();
        Ok(std::time::Duration::from_secs_f64((2.0 * self.offset - e - 0.05).max(0.0)))
    }

    /// Back at true speed (after `recover`'s time, the gap is about 0).
    pub fn settle(&mut self) -> std::io::Result<()> {
        self.set_rate(1.0)
    }

    fn write(&self) -> std::io::Result<()> {
        // Whole-file replace, so libfaketime never reads half a specification.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{:+.3} x{:.4}\n", self.base + self.offset, self.rate))?;
        std::fs::rename(tmp, &self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(c: &ProcClock, e: f64) -> f64 {
        c.offset + c.rate * e
    }

    /// Whenever libfaketime picks a change up (from its writing until
    /// LIBFAKETIME_LAG_S later), the clock only moves forward.
    #[test]
    fn rate_changes_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ProcClock::new(dir.path().join("clock")).unwrap();
        for rate in [2.0, 0.5, 1.0, 0.7, 1.9, 1.0] {
            let before = c.clone();
            c.set_rate(rate).unwrap();
            // Read after the write: libfaketime cannot see it earlier. (A busy
            // machine may delay this read; PICKUP_S's margin covers that.)
            let written = c.started.elapsed().as_secs_f64();
            for i in 0..=10 {
                let pick = written + LIBFAKETIME_LAG_S * i as f64 / 10.0;
                assert!(fake(&c, pick) >= fake(&before, pick) - 1e-3, "rate {rate}: back at pick-up {pick}");
            }
        }
        assert!(std::fs::read_to_string(dir.path().join("clock")).unwrap().ends_with("x1.0000\n"));
    }

    #[test]
    fn a_lost_offset_shows_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("n1.log");
        let ok = "\x1b[2m1970-01-01T02:19:04.571910Z\x1b[0m INFO a\nnot a stamp\n1970-01-01T02:19:06.4Z INFO b\n";
        std::fs::write(&log, ok).unwrap();
        assert_eq!(lost_offset(&log), None);
        std::fs::write(&log, format!("{ok}\x1b[2m2026-12-01T16:05:54.666316Z\x1b[0m INFO c\n")).unwrap();
        assert_eq!(lost_offset(&log).as_deref(), Some("2026-12-01T16:05:54"));
    }

    /// A skew ends on true time: after recover's wait, settle leaves (almost) no gap.
    #[test]
    fn recovery_closes_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ProcClock::new(dir.path().join("clock")).unwrap();
        c.jump(3.0).unwrap();
        assert!((c.gap() - 3.0).abs() < 0.01);
        let wait = c.recover().unwrap();
        // The model, not the wall clock: pretend the wait passed.
        c.started -= wait;
        c.settle().unwrap();
        assert!(c.gap().abs() < 0.1, "gap {} after recovery", c.gap());
        assert_eq!(c.rate(), 1.0);
    }
}
