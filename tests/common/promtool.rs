//! Debian's `promtool` (package `prometheus`; `.ci/run` installs it). A
//! test that needs it fails, saying so, when it is missing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `promtool args…` in `dir`, with `stdin` on its standard input.
pub fn promtool(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus (apt-get install prometheus)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    child.wait_with_output().expect("promtool output")
}

/// Asserts that `promtool args…` succeeds; answers what it printed.
pub fn promtool_passes(dir: &Path, args: &[&str], stdin: &str) -> String {
    let output = promtool(dir, args, stdin);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{printed}",
        output.status
    );
    printed
}
