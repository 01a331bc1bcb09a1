//! A write load for fault tests, and the check that nothing acknowledged
//! was lost.

use std::time::{Duration, Instant};

/// A client load for fault tests: writes distinct keys `load/NNNNNNNN`
/// round-robin through `endpoints` until stopped, recording which writes
/// were acknowledged and how many failed.
pub struct LoadWriter {
    acked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadWriter {
    pub fn start(endpoints: Vec<String>) -> Self {
        use std::sync::atomic::Ordering;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, f, s) = (acked.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut clients = vec![];
            for ep in &endpoints {
                clients.push(etcd_client::Client::connect([ep.clone()], None).await.unwrap());
            }
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let key = format!("load/{i:08}");
                let c = &mut clients[i % endpoints.len()];
                match tokio::time::timeout(Duration::from_secs(3), c.put(key.clone(), "v", None)).await {
                    Ok(Ok(_)) => a.lock().unwrap().push(key),
                    Ok(Err(e)) => {
                        eprintln!("write failed: {e}");
                        f.fetch_add(1, Ordering::Relaxed);
                        // A refused connection fails at once: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        eprintln!("write timed out");
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        });
        Self { acked, failures, stop, task }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` writes are acknowledged; returns how long that took.
    pub async fn wait_acked(&self, n: usize, within: Duration) -> Duration {
        let start = Instant::now();
        while self.acked() < n {
            assert!(start.elapsed() < within, "writes stalled at {} acknowledged", self.acked());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }

    /// Stops writing; returns the acknowledged keys and the number of failures.
    pub async fn stop(mut self) -> (Vec<String>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (&mut self.task).await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.failures.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Asserts every key in `acked` is present (read linearizably through `c`).
pub async fn assert_has_all(c: &mut etcd_client::Client, acked: &[String]) {
    let got = c.get("load/", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    let have: std::collections::HashSet<&[u8]> = got.kvs().iter().map(|k| k.key()).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !have.contains(k.as_bytes())).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

impl Drop for LoadWriter {
    /// A test that fails while writing stops its writer too (it would spin on a dead member).
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.abort();
    }
}
