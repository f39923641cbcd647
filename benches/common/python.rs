//! Running a Python script with DuckDB, as the benches measure it beside auditwatch.

use std::path::Path;
use std::process::Command;

/// Runs `script` with `args` under the project's venv Python (`.ci/venv`, where .ci/run
/// installs DuckDB) or `python3`; its stdout, or why it did not run.
pub fn run_duckdb_script(
    root: &Path,
    script: &str,
    args: &[&std::ffi::OsStr],
) -> Result<String, String> {
    let venv = root.join(".ci/venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        std::path::PathBuf::from("python3")
    };
    let out = Command::new(&python)
        .args(["-c", script])
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "not run ({}; `pip install duckdb` into .ci/venv, as .ci/run does)",
            err.lines().last().unwrap_or("failed")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
