//! What every Tessera binary does around its work: log to stderr at the
//! configured level (RUST_LOG overrides; raft-rs's chatter capped at warn),
//! arm the failpoints chaos/ asks for, and stop on Ctrl-C or SIGTERM.

pub fn init_logging(level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},raft=warn"))),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[derive(Debug, thiserror::Error)]
#[error("FAILPOINTS: {0}")]
pub struct FailpointsError(String);

/// Configures the failpoints named in `$FAILPOINTS` (`name=action;...`, the
/// `fail` crate's syntax; each name one of `all`) and makes any panic abort
/// the process: a process that hits a `panic` failpoint in one thread or
/// task is down as a whole, as after a crash. `compiled_in`: whether the
/// binary was built with its crate's `failpoints` feature (without it every
/// `fail_point!` is nothing, and this does nothing).
pub fn arm_failpoints(all: &[&str], compiled_in: bool) -> Result<(), FailpointsError> {
    let Some(spec) = std::env::var("FAILPOINTS").ok().filter(|_| compiled_in) else {
        return Ok(());
    };
    for part in spec.split(';').filter(|p| !p.trim().is_empty()) {
        let (name, actions) = part.split_once('=').ok_or_else(|| FailpointsError(format!("{part:?} is not name=action")))?;
        if !all.contains(&name.trim()) {
            return Err(FailpointsError(format!("no failpoint {name:?} (one of {})", all.join(", "))));
        }
        fail::cfg(name.trim(), actions.trim()).map_err(|e| FailpointsError(format!("{name}: {e}")))?;
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
    tracing::warn!(failpoints = %spec, "failpoints armed");
    Ok(())
}

/// Whether every name in `names` is different (a failpoint list's test).
pub fn all_distinct(names: &[&str]) -> bool {
    let set: std::collections::HashSet<&&str> = names.iter().collect();
    set.len() == names.len()
}
