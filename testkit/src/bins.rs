//! Where the binaries under test and the reference tools are.

use std::path::PathBuf;
use std::process::Command;

/// A binary of this workspace (`shard-node`, `router`, `placement`,
/// `tessera`, ...): `$TESSERA_BIN` (scripts/env.sh sets it), else the
/// target directory the running test was built in.
pub fn path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("TESSERA_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            // target/<profile>/deps/<test> → target/<profile>
            let exe = std::env::current_exe().expect("test executable");
            exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf()
        }
    };
    let p = dir.join(name);
    assert!(p.exists(), "{} is not built: run scripts/test.sh (it builds every binary first)", p.display());
    p
}

fn tools_dir() -> PathBuf {
    std::env::var_os("TESSERA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tessera/tools"))
}

/// etcd's own tools (`benchmark`, `etcd-runner`) for etcd `version`
/// ("3.4", "3.6"), as scripts/etcd-tools.sh installs them.
pub fn etcd_tool(version: &str, name: &str) -> PathBuf {
    let p = tools_dir().join(format!("etcd-{version}/bin/{name}"));
    assert!(p.exists(), "{} is missing: scripts/test.sh installs it (scripts/etcd-tools.sh)", p.display());
    p
}

/// npm etcd3's `node_modules`, as scripts/npm-tools.sh installs it.
pub fn npm_etcd3_modules() -> PathBuf {
    let p = tools_dir().join("npm-etcd3/node_modules");
    assert!(p.join("etcd3").exists(), "{} is missing: scripts/test.sh installs it (scripts/npm-tools.sh)", p.display());
    p
}

/// tests/go-recipes (clientv3's concurrency recipes), as scripts/test.sh
/// builds it (scripts/go-tool.sh).
pub fn go_recipes() -> PathBuf {
    let p = tools_dir().join("go-recipes/current/go-recipes");
    assert!(p.exists(), "{} is missing: scripts/test.sh builds it (scripts/go-tool.sh)", p.display());
    p
}

/// A command that dies with the test process however that ends, so no
/// process a test started outlives it.
pub fn command(program: impl Into<PathBuf>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program.into());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}
